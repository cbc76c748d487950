#!/usr/bin/env bash
# Install everything the test suite needs, then run the whole suite (slow tests included).
# Usage: bash scripts/test.sh [pytest args]     (run inside a virtual environment)
# This is the README's test command and all that CI (.ci/run) runs: every install step is here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

# system tools some tests use: real DICOM peers and validators, ARM emulation, image assembly
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  need=()
  # dpkg, not PATH: pynetdicom puts Python scripts named storescu/echoscu in the venv's bin
  for pkg in dcmtk dicom3tools qemu-user-static debootstrap buildah orthanc orthanc-dicomweb; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

# pip itself: the lock-file check (tests/test_docker.py, TestWheelResolution) needs pip >= 24.2,
# which checks Requires-Python against --python-version, not the running Python (Python
# 3.11's bundled pip 23.2.1 does not: pypa/pip#12216)
"$PY" -m pip install -q --upgrade "pip>=24.2"
# torch first, pinned: the CPU build from local disk (an unpinned torch pulls a multi-GB CUDA build)
"$PY" -m pip install -q torch==2.13.0
# torch pinned again: nnunetv2 (import extra) pulls timm -> torchvision, which would upgrade it
"$PY" -m pip install -q -e ".[dev,export,tflite,dicom,bench,batch,import]" torch==2.13.0
exec "$PY" -m pytest --durations=15 "$@"
