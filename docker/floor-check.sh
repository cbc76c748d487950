#!/usr/bin/env bash
# The oldest supported stack: Python 3.10 with numpy 1.24 (Debian 12's numpy generation), from
# docker/constraints/floor-py310.txt. Builds a cached virtual environment with exactly those
# wheels, installs this checkout into it, runs the real `edge-infer run` on a crop of the
# bundled sample with each backend, and compares the masks with the same command run by the
# project's own Python (normally 3.11 + numpy 2.x): identical labels, or Dice >= 0.999.
#
# usage: docker/floor-check.sh [--backend onnx|tflite]... [--model FOLDER] [--pytest [PYTEST ARGS...]]
#   --pytest   also run the test suite (pytest ARGS, default: tests -m "not slow") in the
#              floor environment, with pytest, hypothesis and onnx added to it
#
# environment: PYTHON (the project's Python) [python3], FLOOR_PYTHON (a Python 3.10)
#              [python3.10 on PATH, else ~/.pyenv/versions/3.10.*], EDGE_INFER_CACHE
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
CACHE="${EDGE_INFER_CACHE:-$HOME/.cache/edge-infer}"
PY="${PYTHON:-python3}"
LOCK="$HERE/constraints/floor-py310.txt"

die() { echo "floor-check: $*" >&2; exit 2; }
log() { echo "floor-check: $*" >&2; }

backends=() pytest=0 pytest_args=() model=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        --backend) case "${2:-}" in onnx|tflite) backends+=("$2") ;;
                       *) die "unknown backend '${2:-}'; known backends: onnx tflite" ;; esac; shift 2 ;;
        --model) [ -f "${2:-}/model.json" ] || die "--model needs a model folder with a model.json, got '${2:-}'"
                 model=(--model "$(cd "$2" && pwd)"); shift 2 ;;
        --pytest) pytest=1; shift; pytest_args=("$@"); break ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ ${#backends[@]} -gt 0 ] || backends=(onnx tflite)

floor_py=""
for cand in "${FLOOR_PYTHON:-}" "$HOME"/.pyenv/versions/3.10.*/bin/python3.10 "$(command -v python3.10 || true)"; do
    # (a pyenv shim on PATH may exist and still refuse to run)
    if [ -n "$cand" ] && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
        floor_py="$cand"; break
    fi
done
[ -n "$floor_py" ] || die "no Python 3.10 found; set FLOOR_PYTHON=/path/to/python3.10 (e.g. from pyenv install 3.10)"

pip_clean() { env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT \
    PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"; }

key="$(sha256sum "$LOCK" | cut -c1-16)"
venv="$CACHE/venv-floor-py310-$key"
mkdir -p "$CACHE/runs"
OUT="$(mktemp -d "$CACHE/runs/floor-check.XXXXXX")"  # per run: concurrent runs must not share it
start=$(date +%s)
exec 9>"$CACHE/.floor-venv.lock"
flock 9  # held to the end: runs share the venv and reinstall edge-infer into it
if [ ! -f "$venv/.ok" ]; then
    rm -rf "$venv"
    "$floor_py" -m venv "$venv"
    pip_clean "$venv/bin/python" -m pip install -q --no-deps --require-hashes --only-binary=:all: -r "$LOCK" \
        || die "installing $LOCK into $venv failed"
    touch "$venv/.ok"
    log "built $venv in $(( $(date +%s) - start )) s"
fi
# what the Dockerfiles COPY, so no stale build/ in the checkout leaks into the install
rm -rf "$OUT/src"; mkdir -p "$OUT/src"
cp -a "$REPO/pyproject.toml" "$REPO/setup.py" "$REPO/README.md" "$REPO/edge_infer" "$OUT/src/"
find "$OUT/src" -name __pycache__ -prune -exec rm -rf {} +
pip_clean "$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$OUT/src" >"$OUT/install.log" 2>&1 \
    || { cat "$OUT/install.log" >&2; die "installing edge-infer into $venv failed"; }
"$venv/bin/python" -c 'import sys, numpy, onnxruntime, ai_edge_litert; print("floor:", sys.version.split()[0], "numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__)'
"$PY" -c 'import sys, numpy; print("reference:", sys.version.split()[0], "numpy", numpy.__version__)'

"$PY" "$HERE/parity.py" make-sample "$OUT/sample" >/dev/null
status=0
for backend in "${backends[@]}"; do
    args=(run "$OUT/sample" --name parity --backend "$backend" --threads 1 --quiet "${model[@]}")
    rm -rf "$OUT/ref-$backend" "$OUT/floor-$backend"
    (cd "$OUT" && env PYTHONPATH="$REPO" "$PY" "$HERE/edge-infer" "${args[@]}" -o "$OUT/ref-$backend") \
        || die "the reference run ($backend) failed"
    (cd "$OUT" && "$venv/bin/edge-infer" "${args[@]}" -o "$OUT/floor-$backend") \
        || { status=1; echo "floor-check: the Python 3.10 / numpy 1.24 run ($backend) FAILED"; continue; }
    "$PY" "$HERE/parity.py" compare "$OUT/ref-$backend/parity_mask.nii.gz" "$OUT/floor-$backend/parity_mask.nii.gz" \
        --label "py3.10+numpy1.24/$backend vs reference/$backend" || status=1
done

if [ $pytest = 1 ]; then
    # the dev extra's test tools, with numpy held at the floor
    pip_clean "$venv/bin/python" -m pip install -q pytest hypothesis onnx "$("$venv/bin/python" -m pip freeze | grep -i '^numpy==')" \
        >"$OUT/pytest-install.log" 2>&1 \
        || die "installing pytest into $venv failed"
    [ ${#pytest_args[@]} -gt 0 ] || pytest_args=(tests -m "not slow")
    (cd "$REPO" && "$venv/bin/python" -m pytest -p no:cacheprovider "${pytest_args[@]}") || status=1
fi
rm -rf "$CACHE/floor-check-last"; mv "$OUT" "$CACHE/floor-check-last" 2>/dev/null || true
echo "floor-check: $([ $status = 0 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - start )) s"
exit $status
