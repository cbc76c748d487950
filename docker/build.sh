#!/usr/bin/env bash
# Build the edge-infer board images with docker buildx, one target or all.
#
# usage: docker/build.sh TARGET|all [options] [-- extra docker buildx build arguments]
#
# targets:  arm64   Raspberry Pi 4/5, 64-bit Raspberry Pi OS / Debian 12   (linux/arm64)
#           armv7   32-bit Raspberry Pi OS / Debian 12, TFLite only        (linux/arm/v7)
#           jetson  Jetson Orin, JetPack 6 / L4T r36, TensorRT + CUDA      (linux/arm64)
#
# options:  --load              load the image into the local docker (default)
#           --push              push to the registry named by --tag
#           --oci FILE          write an OCI archive instead (needs a docker-container builder)
#           --tag NAME          image name [edge-infer:VERSION-TARGET]
#           --ort-wheel SPEC    jetson: onnxruntime GPU wheel - requirement, URL, or
#                               docker/wheels/FILE.whl [onnxruntime-gpu]
#           --ort-index-url URL jetson: index for --ort-wheel [Jetson AI Lab jp6/cu126]
#           --dry-run           print the buildx commands, build nothing
#
# The version label comes from pyproject.toml, the model labels from the bundled default
# model (docker/model_meta.py, which the build stage re-checks), the revision from git.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
KNOWN=(arm64 armv7 jetson)

die() { echo "build.sh: $*" >&2; exit 2; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

platform_of() {
    case "$1" in
        arm64|jetson) echo linux/arm64 ;;
        armv7) echo linux/arm/v7 ;;
    esac
}
budget_mb_of() {
    case "$1" in
        arm64) echo 400 ;;
        armv7) echo 250 ;;
        *) echo "" ;;
    esac
}

targets=() output=(--load) tag="" dry=0 ort_wheel="" ort_index="" extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --load) output=(--load); shift ;;
        --push) output=(--push); shift ;;
        --oci) [ $# -ge 2 ] || die "--oci needs a file name"; output=(--output "type=oci,dest=$2"); shift 2 ;;
        --tag) [ $# -ge 2 ] || die "--tag needs a name"; tag="$2"; shift 2 ;;
        --ort-wheel) [ $# -ge 2 ] || die "--ort-wheel needs a value"; ort_wheel="$2"; shift 2 ;;
        --ort-index-url) [ $# -ge 2 ] || die "--ort-index-url needs a value"; ort_index="$2"; shift 2 ;;
        --dry-run) dry=1; shift ;;
        --) shift; extra=("$@"); break ;;
        all) targets+=("${KNOWN[@]}"); shift ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *)  ok=0
            for k in "${KNOWN[@]}"; do [ "$1" = "$k" ] && ok=1; done
            [ $ok = 1 ] || die "unknown target '$1'; known targets: ${KNOWN[*]} all"
            targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || die "name a target: ${KNOWN[*]} all (see --help)"
if [ -n "$tag" ] && [ ${#targets[@]} -gt 1 ]; then
    die "--tag names one image; build one target at a time with it"
fi

# -- tools ---------------------------------------------------------------------------------
host_arch() {
    case "$(uname -m)" in
        x86_64) echo amd64 ;; aarch64|arm64) echo arm64 ;; armv7l) echo arm ;; *) uname -m ;;
    esac
}
if [ $dry = 0 ]; then
    command -v docker >/dev/null 2>&1 \
        || die "docker is missing; install Docker Engine: https://docs.docker.com/engine/install/ (Debian: apt-get install docker-ce docker-buildx-plugin from Docker's apt repository)"
    docker buildx version >/dev/null 2>&1 \
        || die "docker buildx is missing; install it with: apt-get install docker-buildx-plugin (Docker's apt repository; Debian 12 has no buildx package) or see https://docs.docker.com/build/install-buildx/"
    for t in "${targets[@]}"; do
        arch="$(platform_of "$t")"; arch="${arch#linux/}"; arch="${arch%%/*}"
        [ "$arch" = "$(host_arch)" ] && continue
        qemu="qemu-aarch64"; [ "$arch" = arm ] && qemu="qemu-arm"
        [ -e "${BINFMT_DIR:-/proc/sys/fs/binfmt_misc}/$qemu" ] || docker buildx ls 2>/dev/null | grep -q "$(platform_of "$t")" \
            || die "building $t on $(uname -m) needs qemu binfmt handlers for $arch; install them with: apt-get install qemu-user-static binfmt-support (or: docker run --privileged --rm tonistiigi/binfmt --install arm64,arm)"
    done
fi

# -- labels --------------------------------------------------------------------------------
PY="${PYTHON:-python3}"
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -n1)"
[ -n "$version" ] || die "no version in $REPO/pyproject.toml"
revision="$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
source_url="$(git -C "$REPO" config --get remote.origin.url 2>/dev/null || echo unknown)"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
model_args=()
while IFS= read -r line; do model_args+=(--build-arg "$line"); done \
    < <("$PY" "$HERE/model_meta.py" "$REPO/edge_infer/models" --build-args)

status=0
for t in "${targets[@]}"; do
    image="${tag:-edge-infer:$version-$t}"
    cmd=(docker buildx build --platform "$(platform_of "$t")" -f "$HERE/Dockerfile.$t" -t "$image"
         --build-arg "VERSION=$version" --build-arg "REVISION=$revision"
         --build-arg "CREATED=$created" --build-arg "SOURCE=$source_url" "${model_args[@]}")
    if [ "$t" = jetson ]; then
        [ -n "$ort_wheel" ] && cmd+=(--build-arg "ORT_WHEEL=$ort_wheel")
        [ -n "$ort_index" ] && cmd+=(--build-arg "ORT_INDEX_URL=$ort_index")
    elif [ -n "$ort_wheel$ort_index" ]; then
        die "--ort-wheel and --ort-index-url apply to the jetson target only"
    fi
    cmd+=("${output[@]}" "${extra[@]}" "$REPO")
    echo "+ ${cmd[*]}"
    [ $dry = 1 ] && continue
    "${cmd[@]}" || { status=1; continue; }
    if [ "${output[0]}" = --load ]; then
        bytes="$(docker image inspect -f '{{.Size}}' "$image")"
        mb=$((bytes / 1000000)); budget="$(budget_mb_of "$t")"
        echo "$image: $mb MB ($(docker image inspect -f '{{.Architecture}}{{if .Variant}}/{{.Variant}}{{end}}' "$image"))"
        if [ -n "$budget" ] && [ "$mb" -ge "$budget" ]; then
            echo "build.sh: $image is $mb MB, over the $t budget of $budget MB" >&2
            status=1
        fi
    fi
done
exit $status
