# Shared by verify-arm.sh and oci-image.sh (sourced, not run): the cached ARM Debian roots,
# the locked wheels installed for a target, this checkout's wheel, and running python3 in a
# root under qemu-user-static. Callers set NAME (for messages) before sourcing it; it sets
# HERE (docker/), REPO, CACHE, PY and SUITE from the environment.
# shellcheck shell=bash

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
CACHE="${EDGE_INFER_CACHE:-$HOME/.cache/edge-infer}"
PY="${PYTHON:-python3}"
SUITE=bookworm

die() { echo "$NAME: $*" >&2; exit 2; }
log() { echo "$NAME: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# -- tools ---------------------------------------------------------------------------------
need() {  # command, package, why
    command -v "$1" >/dev/null 2>&1 && return 0
    die "$1 is missing ($3); install it with: apt-get update && apt-get install -y $2"
}
check_tools() {  # what every caller needs; settings() checks the target's qemu
    need debootstrap debootstrap "builds the ARM Debian root"
    need dpkg dpkg "unpacks the root's packages"
    need unshare util-linux "gives the guest its own /proc/cpuinfo"
    [ "$(id -u)" = 0 ] || die "run as root (debootstrap and the private mount namespace need it)"
    "$PY" -c 'import numpy, nibabel' 2>/dev/null \
        || die "$PY lacks numpy/nibabel; set PYTHON to the project's Python (e.g. PYTHON=.venv/bin/python)"
    MIRROR="${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' \
        /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n1)}"
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
    mkdir -p "$CACHE"
}

# pip as a Docker build sees it: PyPI, no machine-wide config, mirrors or constraints
pip_clean() { env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT \
    PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip "$@"; }

# -- per-target settings ------------------------------------------------------------------
settings() {
    case "$1" in
        arm64) DEB_ARCH=arm64; QEMU="${QEMU_AARCH64:-qemu-aarch64-static}"; QCPU=cortex-a72; INCLUDE=python3 ;;
        armv7) DEB_ARCH=armhf; QEMU="${QEMU_ARM:-qemu-arm-static}"; QCPU=cortex-a15; INCLUDE=python3,python3-numpy ;;
    esac
    need "$QEMU" qemu-user-static "runs $1 binaries on this machine"
    ROOT="$CACHE/roots/$1-$SUITE"
}

cpuinfo() {  # a Raspberry Pi 4's /proc/cpuinfo, one block per host CPU
    local n i; n="$(nproc)"
    for ((i = 0; i < n; i++)); do
        if [ "$1" = arm64 ]; then
            printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
            printf 'CPU implementer\t: 0x41\nCPU architecture: 8\n'
        else
            printf 'processor\t: %d\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nBogoMIPS\t: 108.00\n' "$i"
            printf 'Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32\n'
            printf 'CPU implementer\t: 0x41\nCPU architecture: 7\n'
        fi
        printf 'CPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
    done
    printf 'Hardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n'
}

alternatives() {  # what update-alternatives would link (dpkg -x runs no maintainer script)
    local f
    for f in "$1"/usr/lib/*/blas/libblas.so.3 "$1"/usr/lib/*/lapack/liblapack.so.3; do
        [ -e "$f" ] || continue
        ln -sfn "$(basename "$(dirname "$f")")/$(basename "$f")" "$(dirname "$(dirname "$f")")/$(basename "$f")"
    done
}

prepare() {  # target: its root and wheels, built once even when several runs start together
    local fd
    exec {fd}>"$CACHE/.prepare-$1.lock"
    flock "$fd"
    build_root "$1"
    install_site "$1"
    exec {fd}>&-
}

new_out() {  # name: a fresh output folder for this run (concurrent runs must not share one)
    mkdir -p "$CACHE/runs"
    find "$CACHE/runs" -mindepth 1 -maxdepth 1 -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
    OUT="$(mktemp -d "$CACHE/runs/$1.XXXXXX")"
}

keep_last() {  # name: keep this run's outputs as $CACHE/NAME-last, drop the previous ones
    local last="$CACHE/$1-last"
    rm -rf "$last.old"; [ -e "$last" ] && mv "$last" "$last.old" 2>/dev/null
    mv "$OUT" "$last" 2>/dev/null && OUT="$last"
    rm -rf "$last.old"
}

build_root() {  # target: Debian root with python3 (and numpy on armv7), unpacked, cached
    if [ -f "$ROOT/.edge-infer-root-ok" ]; then
        log "$1 root: cached at $ROOT"
        alternatives "$ROOT"
        return
    fi
    local t0 tmp; t0="$(now)"; tmp="$ROOT.tmp"
    rm -rf "$tmp"; mkdir -p "$(dirname "$ROOT")"
    log "$1 root: debootstrap --arch=$DEB_ARCH $SUITE from $MIRROR (first stage; about a minute)"
    debootstrap --arch="$DEB_ARCH" --foreign --variant=minbase --include="$INCLUDE" \
        "$SUITE" "$tmp" "$MIRROR" >"$OUT/$1-debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $OUT/$1-debootstrap.log"
    # the second stage would need binfmt_misc: unpack every package instead
    local deb
    for deb in "$tmp"/var/cache/apt/archives/*.deb; do dpkg -x "$deb" "$tmp"; done
    rm -f "$tmp"/var/cache/apt/archives/*.deb
    alternatives "$tmp"
    [ -x "$tmp/usr/bin/python3.11" ] || die "$1 root has no usr/bin/python3.11 after unpacking"
    echo "$SUITE $DEB_ARCH $INCLUDE $(date -u +%FT%TZ)" >"$tmp/.edge-infer-root-ok"
    rm -rf "$ROOT"; mv "$tmp" "$ROOT"
    log "$1 root: built in $(since "$t0") s ($(du -sm "$ROOT" | cut -f1) MB)"
    TIMES+=("$1 root build: $(since "$t0") s")
}

install_site() {  # target: the locked wheels, installed for the target's platform
    local lock="$HERE/constraints/$1.txt" key t0
    key="$(sha256sum "$lock" | cut -c1-16)"
    SITE="$CACHE/site/$1-$key"
    if [ -f "$SITE/.ok" ]; then
        log "$1 wheels: cached at $SITE"
        return
    fi
    t0="$(now)"
    rm -rf "$SITE.tmp"
    # shellcheck disable=SC2046  # pip-args is a list of words
    pip_clean install --quiet --no-deps --require-hashes --no-compile --target "$SITE.tmp" \
        $("$PY" "$HERE/targets.py" pip-args "$1") -r "$lock" >"$OUT/$1-pip.log" 2>&1 \
        || { cat "$OUT/$1-pip.log" >&2; die "installing the $1 wheels failed"; }
    touch "$SITE.tmp/.ok"
    rm -rf "$SITE"; mv "$SITE.tmp" "$SITE"
    log "$1 wheels: installed in $(since "$t0") s ($(du -sm "$SITE" | cut -f1) MB)"
    TIMES+=("$1 wheels download+install: $(since "$t0") s")
}

source_copy() {  # dest: what the Dockerfiles COPY, so no stale build/ in the checkout leaks in
    rm -rf "$1"; mkdir -p "$1"
    cp -a "$REPO/pyproject.toml" "$REPO/setup.py" "$REPO/README.md" "$REPO/edge_infer" "$1/"
    find "$1" -name __pycache__ -prune -exec rm -rf {} +
}

build_project() {  # this checkout as a wheel, installed pure-Python into $PROJ
    local t0; t0="$(now)"
    rm -rf "$OUT/dist" "$OUT/project"
    source_copy "$OUT/src"
    pip_clean wheel --quiet --no-deps -w "$OUT/dist" "$OUT/src" >"$OUT/project-wheel.log" 2>&1 \
        || { cat "$OUT/project-wheel.log" >&2; die "building the edge-infer wheel failed"; }
    pip_clean install --quiet --no-deps --no-compile --target "$OUT/project" "$OUT"/dist/*.whl \
        >>"$OUT/project-wheel.log" 2>&1 || die "installing the edge-infer wheel failed"
    PROJ="$OUT/project"
    log "edge-infer wheel: $(basename "$OUT"/dist/*.whl) built in $(since "$t0") s"
}

guest() {  # target, then the arguments of python3 in the ARM root (private /proc/cpuinfo)
    # GUEST_ROOT and GUEST_PATH override the root and the PYTHONPATH (oci-image.sh)
    local target="$1" root="${GUEST_ROOT:-$ROOT}" path="${GUEST_PATH:-$PROJ:$SITE}"; shift
    cpuinfo "$target" >"$OUT/$target-cpuinfo"
    # shellcheck disable=SC2016  # (in $OUT: the checkout must not shadow the installed wheel)
    (cd "$OUT" && unshare --mount --propagation private sh -c \
        'mount --bind "$1" /proc/cpuinfo && shift && exec "$@"' sh "$OUT/$target-cpuinfo" \
        env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME="$OUT" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 \
        PYTHONPATH="$path" "$QEMU" -cpu "$QCPU" -L "$root" "$root/usr/bin/python3.11" "$@")
}

host() { (cd "$OUT" && env PYTHONPATH="$PROJ" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 "$PY" "$@"); }

