#!/usr/bin/env bash
# Install everything the test suite needs, then run the whole suite (slow tests included).
# Usage: bash scripts/test.sh [pytest args]     (run inside a virtual environment)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

# system tools some tests use: real DICOM peers and validators, ARM emulation, image assembly
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  need=()
  for pair in storescu:dcmtk dciodvfy:dicom3tools qemu-aarch64-static:qemu-user-static debootstrap:debootstrap buildah:buildah; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

# torch first, pinned: the CPU build from local disk (an unpinned torch pulls a multi-GB CUDA build)
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e ".[dev,export,tflite,dicom]"
# The DICOM node tests start real services and DCMTK peers; they run in a pytest process of
# their own (in a full single run, earlier tests left the node unreachable by echoscu; cause
# not yet found, see the session notes).
set +e
"$PY" -m pytest "$@" --ignore=tests/test_node.py
first=$?
"$PY" -m pytest "$@" tests/test_node.py
second=$?
[ "$first" -ne 0 ] && exit "$first"
exit "$second"
