#!/usr/bin/env bash
# Create .venv and install recstack with everything it needs; a no-op when already up to date.
# Called by `make run` and `make test` (and so by CI on a fresh clone).
set -euo pipefail
cd "$(dirname "$0")/.."

# tritonserver's python backend stub embeds the system libpython3.11 and then imports the stdlib of
# the venv's base interpreter: both must be the same build, so the venv is made from the system
# Python 3.11 (Debian/Ubuntu /usr/bin/python3.11), not a pyenv/conda one.
PYTHON=${PYTHON:-/usr/bin/python3.11}
VENV=${VENV:-.venv}
# The CPU build of torch; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PYTRITON_SPEC=${PYTRITON_SPEC:-nvidia-pytriton==0.7.0}
STAMP="$VENV/.recstack-setup"

fail() { echo "setup: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || fail "$PYTHON not found: install the system Python 3.11 (Debian: apt-get install python3.11 python3.11-venv libpython3.11)"
"$PYTHON" -c "import sys, venv, ensurepip; raise SystemExit(0 if sys.base_prefix == '/usr' or '${RECSTACK_ANY_PYTHON:-}' else 1)" 2>/dev/null \
  || fail "$PYTHON must be the system Python 3.11 with venv (apt-get install python3.11-venv); tritonserver's stub embeds the system libpython"
"$PYTHON" - <<'PY' || fail "Python 3.11 is required (the tritonserver python backend stub is built for 3.11)"
import sys
raise SystemExit(0 if sys.version_info[:2] == (3, 11) else 1)
PY
# tritonserver's python backend stub links the system libpython3.11.
# (grep without -q reads all of ldconfig's output: with -q it exits at the first match, ldconfig
# gets SIGPIPE, and `set -o pipefail` turns the found library into a failure now and then)
if ! ldconfig -p 2>/dev/null | grep 'libpython3\.11\.so\.1\.0' >/dev/null; then
  fail "system library libpython3.11.so.1.0 is missing (needed by tritonserver's python backend): apt-get install libpython3.11"
fi

# redis-server (Debian package): the Redis online store and the Redis Streams event log; the
# end-to-end tests start their own on a free loopback port.
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing redis-server (Debian package)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } >/dev/null \
      || fail "apt-get install redis-server failed"
  else
    fail "redis-server is missing: install the Debian/Ubuntu package redis-server (apt-get install redis-server)"
  fi
fi

# chromium (Debian package): the browser the web-page test drives through Playwright (Playwright's own
# browser download needs the internet; Debian's build is used instead, at /usr/bin/chromium).
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing chromium (Debian package, for the web-page test)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null \
      || fail "apt-get install chromium failed"
  else
    fail "chromium is missing: install the Debian/Ubuntu package chromium (apt-get install chromium)"
  fi
fi

# NVIDIA perf_analyzer into the venv (scripts/install_perf_analyzer.sh; a no-op once installed). Not
# needed to run recstack: where it cannot be installed, setup goes on and the test replaying
# `recstack bench serve`'s input data with it skips, giving the reason.
install_perf_analyzer() {
  VENV="$VENV" bash scripts/install_perf_analyzer.sh \
    || echo "setup: warning: perf_analyzer not installed (reason above); tests/test_perf_analyzer.py will skip" >&2
}

want=$(cat pyproject.toml requirements.lock scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/recstack" ]; then
  install_perf_analyzer
  exit 0
fi

echo "setup: creating $VENV and installing recstack (first run: a few minutes)"
# A venv made from another interpreter (e.g. pyenv) breaks the stub's stdlib imports: rebuild it.
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c "import sys; raise SystemExit(0 if sys.base_prefix == '$("$PYTHON" -c 'import sys; print(sys.base_prefix)')' else 1)"; then
  echo "setup: $VENV was made from another Python; recreating it from $PYTHON"
  rm -rf "$VENV"
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
# Every other package at the version the tests passed with, each file checked against its sha256
# (scripts/lock.sh regenerates the lock). --no-deps: the lock is complete, and nvidia-pytriton
# (it carries the tritonserver binary) pins numpy<2, which recstack does not use.
"$VENV/bin/python" -m pip install -q --no-deps --require-hashes -r requirements.lock
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -m pip install -q --no-deps "$PYTRITON_SPEC"  # in the lock; kept for a $PYTRITON_SPEC override
"$VENV/bin/python" -c "import numpy, torch, feast, faiss, onnxruntime, tritonclient.grpc; from recstack.serving.tritonserver import find_triton; find_triton(); print('setup: ok: numpy', numpy.__version__, '| torch', torch.__version__, '| feast', feast.__version__, '| faiss', faiss.__version__)"
echo "$want" > "$STAMP"
install_perf_analyzer
