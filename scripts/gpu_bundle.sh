#!/usr/bin/env bash
# Build .gpu/ (git-ignored) for the serving section of scripts/gpu_check.sh on a GPU host that
# has PyTorch + CUDA but neither recstack's serving packages nor a tritonserver: run it HERE (the
# machine with .venv), then carry .gpu/ with the repository. It holds three archives:
#   tritonserver-pyX.Y.tar.xz  the server binary of the venv's nvidia-pytriton wheel, the shared
#                              libraries it and the python backend load (ldd), the python backend
#                              and its stub for Python X.Y (PYTHON_VERSION says which)
#   site-pyX.Y.tar.xz          scripts/gpu_wheels.txt's wheels for CPython X.Y (manylinux x86-64)
#                              installed into one folder (Feast's web UI and tests left out)
#   run-<dataset>.tar.xz       a prepared run: triton_repo/<dataset>/ exported now (artifacts
#                              relative to their model folders), runs/<dataset>/feature_repo/ (SQLite
#                              online store; feature_store.yaml paths are relative) and the test
#                              split whose users the load tool draws
# All of it relocates: gpu_check.sh unpacks it under /tmp on the host, whatever the repo's folder.
#
#   scripts/gpu_bundle.sh [--python 3.12] [--dataset ml-100k] [--out .gpu]
# The run is taken from runs/<dataset>/ (made with `recstack run --dataset <dataset> --serve 0`
# first when missing). Downloads are cached in ~/.cache/recstack/gpu-bundle/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=3.12 DATASET=ml-100k OUT=.gpu
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PYV=$2; shift 2 ;;
    --dataset) DATASET=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [--python X.Y] [--dataset NAME] [--out DIR]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-.venv/bin/python}
TAG=py$PYV
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/recstack/gpu-bundle
STAGE=$(mktemp -d /tmp/recstack-gpu-bundle.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$OUT" "$CACHE"
if [ "$OUT" = .gpu ]; then  # never committed, and git status stays clean
  EXCLUDE=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$EXCLUDE")"
  grep -qxF '/.gpu/' "$EXCLUDE" 2>/dev/null || echo '/.gpu/' >>"$EXCLUDE"
fi
PLATFORMS=()
for p in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 \
         manylinux2014 manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1; do
  PLATFORMS+=(--platform "${p}_x86_64")
done
TARGET=(--only-binary=:all: --python-version "$PYV" --implementation cp "${PLATFORMS[@]}")

echo "== tritonserver bundle (python backend stub for $PYV)"
if [ ! -s "$CACHE/tritonserver-$TAG.tar.xz" ]; then
  PKG=$("$PY" -c 'import importlib.util as u, pathlib; s = u.find_spec("pytriton"); print(pathlib.Path(list(s.submodule_search_locations)[0]))')
  LIBS=$(dirname "$PKG")/nvidia_pytriton.libs
  B="$STAGE/tritonserver"
  mkdir -p "$B/lib" "$B/backends/python"
  cp "$PKG/tritonserver/bin/tritonserver" "$B/"
  cp "$PKG/tritonserver/backends/python/libtriton_python.so" "$PKG/tritonserver/backends/python/triton_python_backend_utils.py" \
     "$PKG/tritonserver/python_backend_stubs/$PYV/triton_python_backend_stub" "$B/backends/python/"
  echo "$PYV" >"$B/PYTHON_VERSION"
  for f in "$B/tritonserver" "$B/backends/python/libtriton_python.so" "$B/backends/python/triton_python_backend_stub"; do
    LD_LIBRARY_PATH="$LIBS" ldd "$f" | awk '$3 ~ /nvidia_pytriton\.libs\// {print $3}'
  done | xargs -n1 basename | sort -u | while read -r lib; do cp "$LIBS/$lib" "$B/lib/"; done
  echo "   $(ls "$B/lib" | wc -l) libraries from $LIBS"
  tar -C "$STAGE" -cf - tritonserver | xz -T0 -6 >"$CACHE/tritonserver-$TAG.tar.xz.tmp"
  mv "$CACHE/tritonserver-$TAG.tar.xz.tmp" "$CACHE/tritonserver-$TAG.tar.xz"
  rm -rf "$B"
fi
cp "$CACHE/tritonserver-$TAG.tar.xz" "$OUT/"

echo "== site packages for CPython $PYV (scripts/gpu_wheels.txt)"
SITE_TAR="$CACHE/site-$TAG-$(sha256sum scripts/gpu_wheels.txt | cut -c1-12).tar.xz"
if [ ! -s "$SITE_TAR" ]; then
  WHEELS="$CACHE/wheels-$TAG"
  mkdir -p "$WHEELS"
  "$PY" -m pip download -q --no-deps "${TARGET[@]}" -d "$WHEELS" -r scripts/gpu_wheels.txt 2>&1 | grep -v "is ignored" || true
  "$PY" -m pip install -q --no-deps --no-compile --no-index --find-links "$WHEELS" "${TARGET[@]}" \
    --target "$STAGE/site" -r scripts/gpu_wheels.txt 2>&1 | grep -v "is ignored" || true
  test -d "$STAGE/site/feast" || { echo "pip install --target failed" >&2; exit 1; }
  # what serving never loads: Feast's web UI, templates and requirement lists, test suites, scripts, byte code
  rm -rf "$STAGE/site/feast/ui" "$STAGE/site/feast/templates" "$STAGE/site/requirements" "$STAGE/site/bin"
  find "$STAGE/site" -depth \( -name __pycache__ -o -name tests \) -type d -exec rm -rf {} +
  tar -C "$STAGE/site" -cf - . | xz -T0 -6 >"$SITE_TAR.tmp" && mv "$SITE_TAR.tmp" "$SITE_TAR"
fi
cp "$SITE_TAR" "$OUT/site-$TAG.tar.xz"

echo "== prepared run: $DATASET"
if [ ! -f "runs/$DATASET/feature_repo/feature_store.yaml" ] || [ ! -f "runs/$DATASET/models/dlrm/model.pt" ]; then
  "${PY%python}recstack" run --dataset "$DATASET" --serve 0 --no-progress
fi
H="$STAGE/home"
mkdir -p "$H/runs/$DATASET/data"
"$PY" - "$DATASET" "$H" <<'PY'
import sys
from pathlib import Path
from recstack.ensembles.graph import export_ensemble, recommendation_graph, run_manifest
from recstack.paths import RunPaths
paths = RunPaths.for_dataset(sys.argv[1], home=Path("."))
export_ensemble(recommendation_graph(paths), Path(sys.argv[2]) / "triton_repo" / sys.argv[1], manifest=run_manifest(paths))
PY
cp -r "runs/$DATASET/feature_repo" "$H/runs/$DATASET/"
cp "runs/$DATASET/data/test.parquet" "$H/runs/$DATASET/data/"
tar -C "$H" -cf - . | xz -T0 -6 >"$OUT/run-$DATASET.tar.xz"

ls -l "$OUT"
TOTAL=$(du -cb "$OUT"/tritonserver-$TAG.tar.xz "$OUT"/site-$TAG.tar.xz "$OUT"/run-$DATASET.tar.xz | tail -1 | cut -f1)
echo "carry size: $((TOTAL / 1048576)) MiB (the device tool carries at most 64 MiB with the repository)"
