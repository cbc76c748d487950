#!/usr/bin/env bash
# ARM parity check without a board or a Docker engine.
#
# For each target (arm64, armv7): build a Debian 12 root of that architecture (cached),
# install the target's locked wheels and this checkout's edge-infer wheel, run the real
# `edge-infer run` on a small crop of the bundled sample under qemu-user-static, run the same
# command on this machine, and compare the two masks (identical labels, or Dice >= 0.999).
# It also runs the images' healthcheck (`edge-infer verify default`) inside the ARM root.
#
# usage: docker/verify-arm.sh [arm64|armv7|all] [--backend tflite|onnx]... [--slices N] [--size N]
#                             [--model FOLDER] [--threads N] [--no-healthcheck]
#   default backends: arm64 tflite + onnx, armv7 tflite; default model: the bundled default;
#   threads: this machine's cores (the same on both sides); the healthcheck runs every artifact
#   of the model once (about 1.5 min per target emulated with the default model)
#
# environment:
#   EDGE_INFER_CACHE  cache for the roots and wheels   [~/.cache/edge-infer]
#   DEBIAN_MIRROR     Debian mirror for debootstrap     [the first URIs of /etc/apt sources]
#   PYTHON            host Python with the runtime's dependencies (numpy, onnxruntime,
#                     ai-edge-litert, nibabel, ...)     [python3]
#   (masks, logs and the summary of the last run: $EDGE_INFER_CACHE/verify-arm-last)
#   QEMU_AARCH64, QEMU_ARM  the qemu-user binaries [qemu-aarch64-static, qemu-arm-static]
#
# Needs root (debootstrap, and a private mount namespace: qemu-user shows the host's x86
# /proc/cpuinfo to the guest, which makes cpuinfo-based ARM libraries - XNNPACK in LiteRT,
# onnxruntime - crash; a Raspberry Pi 4 cpuinfo is bind-mounted over it for the guest only).
set -euo pipefail

KNOWN=(arm64 armv7)
NAME=verify-arm
# shellcheck source=docker/arm-root.sh
. "$(dirname "${BASH_SOURCE[0]}")/arm-root.sh"   # sets HERE, REPO, CACHE, PY, SUITE

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

targets=() backends=() slices=4 size=64 model=() threads="$(nproc)" healthcheck=1
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --backend) [ $# -ge 2 ] || die "--backend needs a value (tflite or onnx)"
                   case "$2" in tflite|onnx) backends+=("$2") ;; *) die "unknown backend '$2'; known backends: tflite onnx" ;; esac
                   shift 2 ;;
        --slices) slices="${2:?--slices needs a number}"; shift 2 ;;
        --size) size="${2:?--size needs a number}"; shift 2 ;;
        --threads) threads="${2:?--threads needs a number}"; shift 2 ;;
        --no-healthcheck) healthcheck=0; shift ;;
        --model) [ -f "${2:-}/model.json" ] || die "--model needs a model folder with a model.json, got '${2:-}'"
                 model=(--model "$(cd "$2" && pwd)"); shift 2 ;;
        all) targets+=("${KNOWN[@]}"); shift ;;
        arm64|armv7) targets+=("$1"); shift ;;
        *) die "unknown target or option '$1'; known targets: ${KNOWN[*]} all (see --help)" ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(arm64)

check_tools
for target in "${targets[@]}"; do settings "$target"; done  # every qemu before any work

runtime_of() {  # the runtime and version a run's JSON report names
    "$PY" -c 'import json, sys
m = json.load(open(sys.argv[1])).get("model", {})
print(m.get("runtime", "?"), m.get("runtime_version", "?"))' "$1" 2>/dev/null || echo "?"
}

# -- main ----------------------------------------------------------------------------------
new_out verify-arm
TIMES=() RESULTS=() status=0
t_all="$(now)"
build_project
"$PY" "$HERE/parity.py" make-sample "$OUT/sample" --slices "$slices" --size "$size"

for target in "${targets[@]}"; do
    settings "$target"
    prepare "$target"
    if [ ${#backends[@]} -gt 0 ]; then tb=("${backends[@]}")
    elif [ "$target" = arm64 ]; then tb=(tflite onnx)
    else tb=(tflite); fi

    info="$(guest "$target" -c 'import platform, sys, numpy; print(platform.machine(), sys.version.split()[0], "numpy", numpy.__version__)')" \
        || die "$target: python3 does not start under $QEMU"
    log "$target guest: $info"

    t0="$(now)"
    if [ $healthcheck = 0 ]; then
        RESULTS+=("$target healthcheck: not run (--no-healthcheck)")
    elif guest "$target" "$HERE/edge-infer" verify default >"$OUT/$target-healthcheck.log" 2>&1; then
        log "$target healthcheck (edge-infer verify default): ok in $(since "$t0") s"
        RESULTS+=("$target healthcheck: ok ($(since "$t0") s emulated)")
    else
        cat "$OUT/$target-healthcheck.log" >&2
        RESULTS+=("$target healthcheck: FAILED")
        status=1
    fi

    for backend in "${tb[@]}"; do
        if [ "$target" = armv7 ] && [ "$backend" = onnx ]; then
            RESULTS+=("$target onnx: skipped (no onnxruntime wheel exists for armv7; the image runs TFLite only)")
            continue
        fi
        args=(run "$OUT/sample" --name parity --backend "$backend" --threads "$threads" --quiet "${model[@]}")
        ref="$OUT/x86_64-$backend"
        if [ ! -f "$ref/parity_mask.nii.gz" ]; then
            t0="$(now)"; rm -rf "$ref"
            host "$HERE/edge-infer" "${args[@]}" -o "$ref" >"$ref.log" 2>&1 \
                || { cat "$ref.log" >&2; die "the x86_64 run ($backend) failed"; }
            TIMES+=("x86_64 $backend run: $(since "$t0") s")
        fi
        dir="$OUT/$target-$backend"; rm -rf "$dir"
        t0="$(now)"
        if ! guest "$target" "$HERE/edge-infer" "${args[@]}" -o "$dir" >"$dir.log" 2>&1; then
            cat "$dir.log" >&2
            RESULTS+=("$target $backend: the emulated run FAILED (log: $dir.log)")
            status=1; continue
        fi
        TIMES+=("$target $backend emulated run: $(since "$t0") s")
        rt="$(runtime_of "$dir/parity_report.json") vs $(runtime_of "$ref/parity_report.json")"
        if line="$("$PY" "$HERE/parity.py" compare "$ref/parity_mask.nii.gz" "$dir/parity_mask.nii.gz" \
                --label "$target/$backend [$rt]" --json "$dir/parity.json")"; then
            RESULTS+=("$line")
        else
            RESULTS+=("$line"); status=1
        fi
    done
done

{
    echo "== verify-arm summary ($(date -u +%FT%TZ), $(nproc) cores, $("$QEMU" --version | head -n1))"
    printf '%s\n' "${TIMES[@]}"
    printf '%s\n' "${RESULTS[@]}"
    echo "total: $(since "$t_all") s"
    if [ $status -eq 0 ]; then echo "verify-arm: PASSED"; else echo "verify-arm: FAILED"; fi
} | tee "$OUT/summary.txt"
keep_last verify-arm
echo "verify-arm: masks, logs and summary in $OUT" >&2
exit $status
