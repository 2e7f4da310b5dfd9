#!/usr/bin/env bash
# Install NVIDIA perf_analyzer (Triton's C++ load generator) as $VENV/bin/perf_analyzer; a no-op when
# already installed. Called by scripts/setup.sh; the test that replays `recstack bench serve`'s
# input data with it (tests/test_perf_analyzer.py) needs it.
#
# Where it comes from: the tritonclient 2.41.0 wheel (manylinux1_x86_64) carries the binary at
# tritonclient-2.41.0.data/data/bin/perf_analyzer; later tritonclient wheels no longer ship it, and
# the PyPI package `perf-analyzer` is an empty placeholder. Only the binary is extracted: the venv
# keeps its own tritonclient (requirements.lock). It links libcudart.so.12 (taken from the
# nvidia-cuda-runtime-cu12 wheel; CUDA's minor-version compatibility lets 12.9 stand in for the
# CUDA 12 it was built with; no GPU is needed for gRPC/HTTP runs) and libb64.so.0d (Debian package
# libb64-0d). Both wheels are checked against their sha256.
#
# On failure it exits non-zero and leaves the reason in $DEST/UNAVAILABLE (the test skips with it).
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."

VENV=${VENV:-.venv}
DEST="$VENV/lib/perf_analyzer"
WRAPPER="$VENV/bin/perf_analyzer"
REQUIREMENTS='tritonclient==2.41.0 --hash=sha256:cf4ed5df836fa99937678a9fd852f86ba05c7b83656dd0a540e20afdb9ab4629
nvidia-cuda-runtime-cu12==12.9.79 --hash=sha256:25bba2dfb01d48a9b59ca474a1ac43c6ebf7011f1b0b8cc44f54eb6ac48a96c3'
STAMP="$DEST/.installed"
want=$(sha256sum "$SELF" | cut -c1-16)

unavailable() {
  mkdir -p "$DEST"
  echo "$*" > "$DEST/UNAVAILABLE"
  echo "install_perf_analyzer: $*" >&2
  exit 1
}

if [ -x "$WRAPPER" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && "$WRAPPER" --version >/dev/null 2>&1; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || unavailable "$VENV/bin/python not found: run scripts/setup.sh first"
[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || unavailable \
  "perf_analyzer from the tritonclient 2.41.0 wheel is built for Linux x86_64 only (this is $(uname -s)-$(uname -m))"

# libb64.so.0d: perf_analyzer's base64 library (grep without -q: see setup.sh on SIGPIPE)
if ! ldconfig -p 2>/dev/null | grep 'libb64\.so\.0d' >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "install_perf_analyzer: installing libb64-0d (Debian package)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d; } >/dev/null \
      || unavailable "apt-get install libb64-0d failed (perf_analyzer links libb64.so.0d)"
  else
    unavailable "libb64.so.0d is missing: install the Debian/Ubuntu package libb64-0d (apt-get install libb64-0d)"
  fi
fi

echo "install_perf_analyzer: extracting perf_analyzer 2.41.0 into $DEST"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%s\n' "$REQUIREMENTS" > "$tmp/requirements.txt"
"$VENV/bin/python" -m pip download -q --no-deps --require-hashes --only-binary=:all: --python-version 3.11 \
    --platform manylinux1_x86_64 --platform manylinux2014_x86_64 -d "$tmp/wheels" -r "$tmp/requirements.txt" \
  || unavailable "pip download of tritonclient==2.41.0 / nvidia-cuda-runtime-cu12==12.9.79 failed" \
       "(no PyPI access, or a hash mismatch)"

rm -rf "$DEST"
mkdir -p "$DEST"
"$VENV/bin/python" - "$tmp/wheels" "$DEST" <<'PY' || unavailable "extracting perf_analyzer / libcudart.so.12 failed"
import sys, zipfile
from pathlib import Path

wheels, dest = Path(sys.argv[1]), Path(sys.argv[2])
members = {"tritonclient-2.41.0-*.whl": "tritonclient-2.41.0.data/data/bin/perf_analyzer",
           "nvidia_cuda_runtime_cu12-12.9.79-*.whl": "nvidia/cuda_runtime/lib/libcudart.so.12"}
for pattern, member in members.items():
    (wheel,) = wheels.glob(pattern)
    target = dest / Path(member).name
    with zipfile.ZipFile(wheel) as archive:
        target.write_bytes(archive.read(member))
    target.chmod(0o755)
PY

cat > "$WRAPPER" <<'SH'
#!/bin/sh
# NVIDIA perf_analyzer 2.41.0 (from the tritonclient 2.41.0 wheel; scripts/install_perf_analyzer.sh)
# with the libcudart.so.12 it links, beside it.
here="$(dirname "$(readlink -f "$0")")/../lib/perf_analyzer"
LD_LIBRARY_PATH="$here${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/perf_analyzer" "$@"
SH
chmod 755 "$WRAPPER"
version=$("$WRAPPER" --version 2>&1) || unavailable "perf_analyzer does not start: $version"
echo "$want" > "$STAMP"
echo "install_perf_analyzer: ok: $version"
