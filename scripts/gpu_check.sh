#!/usr/bin/env bash
# Every GPU code path once, as a table, then the ensemble served by tritonserver with its PyTorch
# steps on CUDA: run on a CUDA machine (`bash scripts/gpu_check.sh`).
# Uses .venv when present, else the machine's python (a GPU box may have torch but not the venv).
#
# Serving section (needs .gpu/ from scripts/gpu_bundle.sh, carried with the repository): unpacks
# the tritonserver bundle, the site packages (Feast, pandas 2, tritonclient...) and the prepared
# run under $RECSTACK_GPU_WORK (default /tmp/recstack-gpu), makes a python environment for the
# server's python models (the carried site packages first, then this interpreter's, then this
# repository), and runs scripts/gpu_serve.py with RECSTACK_TORCH_DEVICE=$SERVE_DEVICE (default
# cuda when nvidia-smi sees a GPU, else cpu). SERVE=0 skips it; SERVE_ONLY=1 runs only it;
# GPU_CHECK_LOGS=<dir> keeps the server's log there.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
STATUS=0
if [ "${SERVE_ONLY:-0}" != 1 ]; then
  PYTHONPATH=. "$PY" scripts/gpu_check.py || STATUS=1
fi

serve() {
  local pyv work site dev base
  pyv=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  for f in tritonserver-py$pyv.tar.xz site-py$pyv.tar.xz run-${SERVE_DATASET:-ml-100k}.tar.xz; do
    if [ ! -s ".gpu/$f" ]; then
      echo "serving: skip (.gpu/$f missing: run scripts/gpu_bundle.sh --python $pyv here and carry .gpu)"
      return 0
    fi
  done
  work=${RECSTACK_GPU_WORK:-/tmp/recstack-gpu}
  site="$work/env/lib/python$pyv/site-packages"
  rm -rf "$work" && mkdir -p "$site" "$work/home" || return 1
  local t0=$SECONDS
  tar -C "$work" -xJf ".gpu/tritonserver-py$pyv.tar.xz" && tar -C "$site" -xJf ".gpu/site-py$pyv.tar.xz" \
    && tar -C "$work/home" -xJf ".gpu/run-${SERVE_DATASET:-ml-100k}.tar.xz" || return 1
  # the python models' environment: these site packages, then recstack (this checkout), then the
  # packages of the interpreter running this script (PyTorch with CUDA), in that order and ahead
  # of whatever the system Python's dist-packages hold (the stub runs the system libpython)
  base=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  cat >"$site/recstack_gpu_path.py" <<EOF
"""Written by scripts/gpu_check.sh: sys.path = stdlib, the carried site packages, recstack, the host's packages."""
import site
import sys

SITE, REPO, BASE = "$site", "$PWD", "$base"
_before = list(sys.path)
site.addsitedir(BASE)
_added = [p for p in sys.path if p not in _before]
_rest = [p for p in _before if p not in (SITE, REPO)]
_at = next((i for i, p in enumerate(_rest) if p.endswith(("site-packages", "dist-packages"))), len(_rest))
sys.path[:] = _rest[:_at] + [SITE, REPO] + _added + _rest[_at:]
EOF
  echo "import recstack_gpu_path" >"$site/zz-recstack-gpu.pth"
  echo "serving: unpacked .gpu/ into $work in $((SECONDS - t0))s (python $pyv, base packages $base)"
  if [ -n "${SERVE_DEVICE:-}" ]; then dev=$SERVE_DEVICE
  elif nvidia-smi -L >/dev/null 2>&1; then dev=cuda
  else dev=cpu; fi
  RECSTACK_TRITONSERVER_DIR="$work/tritonserver" PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1 \
    timeout "${SERVE_TIMEOUT_S:-200}" "$PY" scripts/gpu_serve.py --home "$work/home" --dataset "${SERVE_DATASET:-ml-100k}" \
    --python-env "$work/env" --device "$dev" --levels "${SERVE_LEVELS:-1,16,64}" --seconds "${SERVE_SECONDS:-4}"
  local rc=$?
  if [ -n "${GPU_CHECK_LOGS:-}" ]; then  # keep the server's log (and the load tool's reports) there
    cp "$work/home/tritonserver.log" "$GPU_CHECK_LOGS/" 2>/dev/null
  fi
  if [ $rc -ne 0 ]; then
    echo "serving: FAIL (exit $rc); last lines of the server log:"
    tail -n 25 "$work/home/tritonserver.log" 2>/dev/null
    return 1
  fi
  echo "serving: ok"
}

if [ "${SERVE:-1}" != 0 ]; then
  echo
  echo "== serving: tritonserver + the ensemble, PyTorch steps on the device"
  serve || STATUS=1
fi
exit $STATUS
