#!/usr/bin/env bash
# Assemble a board image without a Docker engine or a registry: Debian's buildah (vfs
# storage) packs the cached ARM Debian 12 root (the one verify-arm.sh runs), trimmed like
# debian:bookworm-slim, plus the target's locked wheels and this checkout's edge-infer wheel,
# laid out as docker/Dockerfile.TARGET lays them out (/opt/edge-infer/site,
# /usr/local/bin/edge-infer, user edge 10001, /data, labels, entrypoint, healthcheck). It
# exports an OCI archive, prints its size and manifest architecture, then unpacks the archive
# and runs the image's healthcheck and a real `edge-infer run` as user 10001 under qemu.
#
# usage: docker/oci-image.sh [arm64|armv7] [--out FILE]
#        [default: arm64, $EDGE_INFER_CACHE/edge-infer-VERSION-TARGET.oci.tar]
#
# environment: EDGE_INFER_CACHE, DEBIAN_MIRROR, PYTHON as for verify-arm.sh
set -euo pipefail

NAME=oci-image
# shellcheck source=docker/arm-root.sh
. "$(dirname "${BASH_SOURCE[0]}")/arm-root.sh"   # sets HERE, REPO, CACHE, PY, SUITE

archive="" target=arm64
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        --out) archive="${2:?--out needs a file name}"; shift 2 ;;
        arm64|armv7) target="$1"; shift ;;
        *) die "unknown target or argument '$1'; known targets: arm64 armv7 (usage: docker/oci-image.sh [arm64|armv7] [--out FILE])" ;;
    esac
done
case "$target" in
    arm64) arch=arm64 variant=v8 backends=onnx,tflite
           desc="Raspberry Pi 4/5, 64-bit (ONNX Runtime + LiteRT)" ;;
    armv7) arch=arm variant=v7 backends=tflite
           desc="32-bit Raspberry Pi OS (TFLite)" ;;
esac
check_tools
OUT="$CACHE/oci-image/$target"
mkdir -p "$OUT"
exec 8>"$CACHE/.oci-image.lock"
flock 8  # one assembly at a time: they share $OUT and the buildah storage
need buildah buildah "assembles the image"
# vfs storage in a root of its own (no overlay or fuse needed; the machine's storage untouched)
BUILDAH=(buildah --root "$CACHE/buildah/storage" --runroot "$CACHE/buildah/run" --storage-driver vfs)

TIMES=()
t_all="$(now)"
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -n1)"
archive="${archive:-$CACHE/edge-infer-$version-$target.oci.tar}"
image="localhost/edge-infer:$version-$target"

settings "$target"
prepare "$target"
build_project

# -- the image's file tree -------------------------------------------------------------------
t0="$(now)"
stage="$OUT/rootfs"
rm -rf "$stage"; mkdir -p "$stage"
cp -a "$ROOT/." "$stage/"
rm -f "$stage/.edge-infer-root-ok"
rm -rf "$stage"/debootstrap "$stage"/var/cache/apt/* "$stage"/var/lib/apt/lists/* \
       "$stage"/usr/share/man "$stage"/usr/share/info "$stage"/usr/share/lintian "$stage"/usr/share/linda
find "$stage/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
find "$stage/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
# the accounts base-passwd's maintainer script would have written, plus the runtime's user
cp "$stage/usr/share/base-passwd/passwd.master" "$stage/etc/passwd"
cp "$stage/usr/share/base-passwd/group.master" "$stage/etc/group"
echo "edge:x:10001:10001::/home/edge:/usr/sbin/nologin" >>"$stage/etc/passwd"
echo "edge:x:10001:" >>"$stage/etc/group"
install -d -o 10001 -g 10001 "$stage/home/edge" "$stage/data"
mkdir -p "$stage/opt/edge-infer/site"
cp -a "$SITE/." "$stage/opt/edge-infer/site/"
cp -a "$PROJ/." "$stage/opt/edge-infer/site/"
rm -rf "$stage/opt/edge-infer/site/bin" "$stage/opt/edge-infer/site/.ok"
find "$stage/opt/edge-infer/site" -type d -name tests -prune -exec rm -rf {} +  # as the Dockerfile
install -D -m 0755 "$HERE/edge-infer" "$stage/usr/local/bin/edge-infer"
# bytecode as pip would compile it in the Dockerfile's build stage (the same Python 3.11)
if "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
    "$PY" -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$stage" -p / \
        "$stage/opt/edge-infer/site" >/dev/null || die "compileall failed"
else
    log "no bytecode precompiled ($PY is not Python 3.11)"
fi
"$PY" "$HERE/model_meta.py" "$stage/opt/edge-infer/site/edge_infer/models" --build-args >"$OUT/model-args"
runnable=""
for b in $("$PY" "$HERE/model_meta.py" "$stage/opt/edge-infer/site/edge_infer/models" --backends); do
    case ",$backends," in *",$b,"*) runnable="$runnable $b" ;; esac
done
runnable="${runnable# }"
[ -n "$runnable" ] || die "the bundled default model has no artifact for the $target image's backends ($backends), so that image could not run it"
TIMES+=("file tree: $(since "$t0") s ($(du -sm "$stage" | cut -f1) MB)")

# -- buildah ---------------------------------------------------------------------------------
t0="$(now)"
ctr="$("${BUILDAH[@]}" from --arch "$arch" --os linux --variant "$variant" scratch)"
trap '"${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
"${BUILDAH[@]}" copy --quiet "$ctr" "$stage/" / >/dev/null
labels=(
    --label "org.opencontainers.image.title=edge-infer"
    --label "org.opencontainers.image.description=Brain MRI segmentation runtime for $desc; assembled by docker/oci-image.sh"
    --label "org.opencontainers.image.version=$version"
    --label "org.opencontainers.image.revision=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
    --label "org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    --label "org.opencontainers.image.licenses=Apache-2.0"
    --label "org.opencontainers.image.base.name=debian:bookworm (debootstrap minbase)"
    --label "io.edge-infer.target=$target"
    --label "io.edge-infer.backends=$backends"
    --label "io.edge-infer.healthcheck=edge-infer verify default"
)
while IFS='=' read -r key val; do
    case "$key" in
        MODEL_NAME) labels+=(--label "io.edge-infer.model.name=$val") ;;
        MODEL_VERSION) labels+=(--label "io.edge-infer.model.version=$val") ;;
        MODEL_SHA256) labels+=(--label "io.edge-infer.model.sha256=$val") ;;
        MODEL_ARTIFACTS) labels+=(--label "io.edge-infer.model.artifacts=$val") ;;
    esac
done <"$OUT/model-args"
"${BUILDAH[@]}" config --arch "$arch" --os linux --variant "$variant" \
    --env PYTHONPATH=/opt/edge-infer/site --env PYTHONDONTWRITEBYTECODE=1 --env PYTHONUNBUFFERED=1 \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --user 10001:10001 --workingdir /data \
    --entrypoint '["edge-infer"]' --cmd '--help' \
    --healthcheck 'CMD ["edge-infer", "verify", "default"]' --healthcheck-interval 5m \
    --healthcheck-timeout 60s --healthcheck-start-period 60s --healthcheck-retries 3 \
    "${labels[@]}" "$ctr" 2>/dev/null
"${BUILDAH[@]}" rmi --force "$image" >/dev/null 2>&1 || true  # vfs keeps a full copy per image
"${BUILDAH[@]}" commit --quiet --format docker --rm "$ctr" "$image" >/dev/null
trap - EXIT
rm -rf "$stage"  # the image holds it now
rm -f "$archive"
"${BUILDAH[@]}" push --quiet "$image" "oci-archive:$archive:edge-infer:$version-$target" >/dev/null 2>&1
TIMES+=("buildah (vfs) commit + OCI export: $(since "$t0") s")

# -- what was built --------------------------------------------------------------------------
"$PY" - "$archive" <<'EOF' | tee "$OUT/image.txt"
import json, sys, tarfile
path = sys.argv[1]
with tarfile.open(path) as tar:
    blob = lambda d: tar.extractfile("blobs/" + d.replace(":", "/")).read()
    index = json.loads(tar.extractfile("index.json").read())
    mdesc = index["manifests"][0]
    manifest = json.loads(blob(mdesc["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    layers = manifest["layers"]
    unpacked = 0
    for layer in layers:
        import gzip, io
        data = blob(layer["digest"])
        if layer["mediaType"].endswith("gzip"):
            data = gzip.decompress(data)
        unpacked += sum(m.size for m in tarfile.open(fileobj=io.BytesIO(data)))
import os
cfg = config.get("config", {})
print(f"archive: {path}")
print(f"archive size: {os.path.getsize(path) / 1e6:.1f} MB (compressed layers); image size: {unpacked / 1e6:.1f} MB unpacked")
print(f"manifest: {mdesc['mediaType']}, {len(layers)} layer(s); config architecture={config.get('architecture')} "
      f"variant={config.get('variant')} os={config.get('os')}")
print(f"user={cfg.get('User')} entrypoint={cfg.get('Entrypoint')} cmd={cfg.get('Cmd')} workdir={cfg.get('WorkingDir')}")
for k, v in sorted((cfg.get("Labels") or {}).items()):
    print(f"label {k}={v}")
EOF
"${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$image" | tee -a "$OUT/image.txt"

# -- run the image's healthcheck and a real run from the exported archive, as user 10001 ----
t0="$(now)"
# outside /root (mode 0700), so that user 10001 can reach the unpacked tree
check="$(mktemp -d /tmp/edge-infer-oci.XXXXXX)"
trap 'rm -rf "$check"' EXIT
chmod 0755 "$check"; mkdir -p "$check/layout" "$check/rootfs"
tar -xf "$archive" -C "$check/layout"
"$PY" - "$check/layout" "$check/rootfs" <<'EOF'
import json, sys, tarfile
from pathlib import Path
lay, root = Path(sys.argv[1]), sys.argv[2]
blob = lambda d: lay / "blobs" / d.replace(":", "/")
manifest = json.loads(blob(json.loads((lay / "index.json").read_text())["manifests"][0]["digest"]).read_text())
for layer in manifest["layers"]:
    with tarfile.open(blob(layer["digest"])) as t:
        t.extractall(root, filter="fully_trusted")
EOF
# PYTHONPATH names the unpacked tree by its host path: qemu-arm 7.2 (32-bit guest) resolves
# /opt/... inside the -L prefix for open() but not when Python's import system lists it
GUEST_ROOT="$check/rootfs" GUEST_PATH="$check/rootfs/opt/edge-infer/site"
export GUEST_ROOT GUEST_PATH
"$PY" "$HERE/parity.py" make-sample "$check/sample" --slices 2 >/dev/null
chown -R 10001:10001 "$check/sample"; install -d -o 10001 -g 10001 "$check/out"
if guest "$target" /usr/local/bin/edge-infer verify default >"$OUT/healthcheck.log" 2>&1; then
    line="healthcheck from the archive (edge-infer verify default): ok"
else
    cat "$OUT/healthcheck.log" >&2; die "the image's healthcheck failed inside the exported rootfs"
fi
# non-root: setpriv inside the namespace, after the bind mount
cpuinfo "$target" >"$OUT/$target-cpuinfo"
# shellcheck disable=SC2016
unshare --mount --propagation private sh -c 'mount --bind "$1" /proc/cpuinfo && shift && exec "$@"' \
    sh "$OUT/$target-cpuinfo" setpriv --reuid 10001 --regid 10001 --clear-groups \
    env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME=/home/edge PYTHONPATH="$GUEST_PATH" PYTHONUNBUFFERED=1 \
    "$QEMU" -cpu "$QCPU" -L "$GUEST_ROOT" "$GUEST_ROOT/usr/bin/python3.11" /usr/local/bin/edge-infer \
    run "$check/sample" --name parity --backend "${runnable%% *}" --quiet -o "$check/out" >"$OUT/run.log" 2>&1 \
    || { cat "$OUT/run.log" >&2; die "edge-infer run as user 10001 failed inside the exported rootfs"; }
ls "$check/out"/parity_mask.nii.gz >/dev/null || die "the run wrote no mask"
TIMES+=("$line; a run as uid 10001 wrote $(ls "$check/out" | tr '\n' ' '): $(since "$t0") s emulated")
rm -rf "$check"
printf '%s\n' "${TIMES[@]}" "total: $(since "$t_all") s" | tee -a "$OUT/image.txt"
