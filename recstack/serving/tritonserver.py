"""Start and stop a real ``tritonserver`` (the binary shipped in the ``nvidia-pytriton`` wheel).

The wheel (installed with ``pip install --no-deps nvidia-pytriton==0.7.0``, see
``shared/TRITON.md``) carries:

* the server binary ``pytriton/tritonserver/bin/tritonserver``,
* its shared libraries in ``<site-packages>/nvidia_pytriton.libs`` (put on
  ``LD_LIBRARY_PATH`` for the server process only, never for this process),
* the python backend ``pytriton/tritonserver/backends/python/`` and one stub per
  Python version in ``pytriton/tritonserver/python_backend_stubs/<X.Y>/``; the stub
  links the system ``libpython<X.Y>.so.1.0`` (Debian package ``libpython<X.Y>``).

:class:`TritonServer` picks free loopback ports (port 0), binds 127.0.0.1 only,
waits for ``/v2/health/ready``, and runs the server in its own process group so
that :meth:`TritonServer.stop` (also called on exceptions, Ctrl-C and interpreter
exit) takes the python-backend stub processes down with it.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from recstack.ensembles.python_model import PYTHON_ENV_VAR
from recstack.errors import InputError


class TritonStartError(RuntimeError):
    """tritonserver exited or did not become ready; the message ends with the tail of its log."""


@dataclass(frozen=True)
class TritonInstall:
    """Files of the tritonserver that ships in the nvidia-pytriton wheel."""

    binary: Path
    lib_dir: Path
    python_backend_lib: Path
    python_backend_utils: Path
    python_stub: Path
    python_version: str  # "3.11": the stub built for the interpreter running recstack


TRITON_DIR_ENV = "RECSTACK_TRITONSERVER_DIR"
"""Environment variable naming an unpacked server bundle (``scripts/gpu_bundle.sh``) to use instead of
the installed pytriton package: ``tritonserver``, ``lib/``, ``backends/python/`` (backend, utils and
the stub of the Python version in ``PYTHON_VERSION``)."""


def find_triton(python_version: str | None = None) -> TritonInstall:
    """Locate tritonserver, its libraries and the python backend: the bundle named by
    ``$RECSTACK_TRITONSERVER_DIR`` when set, else inside the installed pytriton package.

    Raises :class:`InputError` with the fix when pytriton (or the bundle) is missing or incomplete,
    when the bundle's stub is for another Python version, or when the system ``libpython<X.Y>.so.1.0``
    that the stub needs is not installed.
    """
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    return _find_triton(version, os.environ.get(TRITON_DIR_ENV) or None)


def _bundle_install(bundle: Path, version: str) -> TritonInstall:
    stamp = bundle / "PYTHON_VERSION"
    built_for = stamp.read_text().strip() if stamp.is_file() else None
    if built_for != version:
        raise InputError(f"{TRITON_DIR_ENV}: the bundle {bundle} has the python backend stub for Python {built_for}, "
                         f"this interpreter is {version} (rebuild it: scripts/gpu_bundle.sh --python {version})")
    python_dir = bundle / "backends" / "python"
    return TritonInstall(binary=bundle / "tritonserver", lib_dir=bundle / "lib",
                         python_backend_lib=python_dir / "libtriton_python.so",
                         python_backend_utils=python_dir / "triton_python_backend_utils.py",
                         python_stub=python_dir / "triton_python_backend_stub", python_version=version)


@functools.lru_cache(maxsize=4)
def _find_triton(version: str, bundle: str | None) -> TritonInstall:
    if bundle:
        install = _bundle_install(Path(bundle), version)
        for field in ("binary", "lib_dir", "python_backend_lib", "python_backend_utils", "python_stub"):
            if not getattr(install, field).exists():
                raise InputError(f"{TRITON_DIR_ENV}: {getattr(install, field)} is missing from the bundle")
        check_libpython(version, install.python_stub, install.lib_dir)
        return install
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "tritonserver: the nvidia-pytriton package is not installed; "
            "run `pip install --no-deps nvidia-pytriton==0.7.0` in this environment"
        )
    pkg = Path(list(spec.submodule_search_locations)[0])
    root = pkg / "tritonserver"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        lib_dir=pkg.parent / "nvidia_pytriton.libs",
        python_backend_lib=root / "backends" / "python" / "libtriton_python.so",
        python_backend_utils=root / "backends" / "python" / "triton_python_backend_utils.py",
        python_stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        python_version=version,
    )
    for field in ("binary", "lib_dir", "python_backend_lib", "python_backend_utils", "python_stub"):
        path = getattr(install, field)
        if not path.exists():
            raise InputError(
                f"tritonserver: {path} is missing from the nvidia-pytriton install "
                f"(python {version} stub, binary and libs are expected); reinstall with "
                "`pip install --no-deps --force-reinstall nvidia-pytriton==0.7.0`"
            )
    check_libpython(version, install.python_stub, install.lib_dir)
    return install


def check_libpython(version: str, stub: Path | None = None, lib_dir: Path | None = None) -> None:
    """Raise InputError naming the Debian package when the stub cannot find ``libpython<version>.so.1.0``.

    Asks the dynamic loader (``ldd`` on the stub, with the server's LD_LIBRARY_PATH); without
    ``ldd`` it looks for the file in the loader's usual folders. The interpreter running recstack
    may carry its own libpython (pyenv, conda): that one does not count, the stub links the
    system's.
    """
    soname = f"libpython{version}.so.1.0"
    if stub is not None and shutil.which("ldd"):
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib_dir or ""), env.get("LD_LIBRARY_PATH", "")) if p)
        try:
            out = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, timeout=30, env=env).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            if soname in line:
                if "not found" not in line:
                    return
                break
    for directory in _library_dirs():
        if (Path(directory) / soname).exists():
            return
    raise InputError(
        f"tritonserver: the python backend stub needs the system library {soname}, which is not installed; "
        f"install the Debian/Ubuntu package `libpython{version}` (apt-get install libpython{version})"
    )


def _library_dirs() -> list[str]:
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
        dirs += sorted({line.rsplit("=>", 1)[1].strip().rsplit("/", 1)[0] for line in out.splitlines() if "=>" in line})
    except (OSError, subprocess.SubprocessError):
        pass
    dirs += ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/local/lib", "/lib"]
    return dirs


def prepare_backend_dir(dest: str | os.PathLike, install: TritonInstall | None = None) -> Path:
    """Build a ``--backend-directory`` at ``dest``: ``dest/python/`` holds the python backend and its stub.

    Returns ``dest``. Files are copied (not linked) so the folder works wherever it is moved.
    """
    install = install or find_triton()
    dest = Path(dest)
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in (install.python_backend_lib, install.python_backend_utils, install.python_stub):
        shutil.copy2(src, python_dir / src.name)
    (python_dir / install.python_stub.name).chmod(0o755)
    return dest


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_LIVE: "weakref.WeakSet[TritonServer]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: die with the parent
    except Exception:
        pass


def die_with_parent_prefix() -> list[str]:
    """Command prefix that makes the started program get SIGTERM when its parent dies.

    ``setpriv --pdeathsig`` (util-linux) sets the signal and execs the program, so the child keeps
    the pid Popen returned. It is preferred over ``preexec_fn``: a ``preexec_fn`` forces a real
    ``fork()`` of this process, which runs gRPC's fork handlers while the gRPC client's threads are
    live, and one CI run saw the child abort ("epoll_wait error: Bad file descriptor"). Without a
    ``preexec_fn`` Python spawns with ``vfork`` and no fork handlers run. Empty when setpriv is
    missing (the caller falls back to ``preexec_fn``).
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


_GPU_NOISE = ("CudaDriverHelper", "CUDA driver", "DCGM", "NVML", "GPU metrics")
_BIND_ERRORS = ("already in use", "failed to start", "couldn't bind", "bind(")


class TritonServer:
    """A tritonserver process serving ``model_repository`` on 127.0.0.1.

    Ports left at 0 are picked free on 127.0.0.1 (and picked again if another
    process grabbed one before the server bound it). Use as a context manager::

        with TritonServer("triton_repo/ml-100k") as server:
            client = TritonClient(server.grpc_url)

    ``python_env`` is the virtual environment whose packages the python models import (default:
    this interpreter's, ``sys.prefix``); ``env`` adds environment variables for the server and
    its python models (``recstack serve`` names the online store this way). ``kill_with_parent`` (default
    on) asks Linux to SIGTERM the server if the thread that started it dies without calling
    stop() (e.g. SIGKILL of this process); start the server from a thread that lives as long as
    the server should.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        log_path: str | os.PathLike | None = None,
        startup_timeout_s: float = 120.0,
        model_control_mode: str = "none",
        backend_dir: str | os.PathLike | None = None,
        log_verbose: int = 0,
        extra_args: tuple[str, ...] | list[str] = (),
        kill_with_parent: bool = True,
        exit_timeout_s: int = 5,
        env: dict[str, str] | None = None,
        python_env: str | os.PathLike | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self._requested_ports = (int(http_port), int(grpc_port), int(metrics_port))
        self._log_path_arg = Path(log_path) if log_path else None
        self.startup_timeout_s = float(startup_timeout_s)
        self.model_control_mode = model_control_mode
        self._backend_dir_arg = Path(backend_dir) if backend_dir else None
        self.log_verbose = int(log_verbose)
        self.extra_args = tuple(extra_args)
        self.kill_with_parent = kill_with_parent
        self.exit_timeout_s = int(exit_timeout_s)
        python_env = Path(python_env or sys.prefix).resolve()
        if not python_env.is_dir():
            raise InputError(f"python_env: {python_env} is not a folder (a virtual environment with recstack)")
        self.env = {PYTHON_ENV_VAR: str(python_env), **(env or {})}

        self.http_port = self.grpc_port = self.metrics_port = 0
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._tmpdir: Path | None = None
        self._log_handle = None
        self._lock = threading.Lock()

    # -- addresses ---------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        """``127.0.0.1:<port>`` (tritonclient's form: no scheme)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "TritonServer":
        """Start the server and block until ``/v2/health/ready`` answers 200 (or raise TritonStartError)."""
        if self.is_running():
            return self
        if not self.model_repository.is_dir():
            raise InputError(f"tritonserver: model repository {self.model_repository} is not a folder")
        install = find_triton()
        self._tmpdir = Path(tempfile.mkdtemp(prefix="recstack-triton-"))
        backend_dir = self._backend_dir_arg or prepare_backend_dir(self._tmpdir / "backends", install)
        self.log_path = self._log_path_arg or (self._tmpdir / "tritonserver.log")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        auto_ports = 0 in self._requested_ports
        attempts = 3 if auto_ports else 1
        try:
            for attempt in range(attempts):
                try:
                    self._start_once(install, Path(backend_dir))
                    return self
                except TritonStartError as exc:
                    text = str(exc).lower()
                    fixed_port_taken = any(f":{port}" in text for port in self._requested_ports if port)
                    if attempt + 1 < attempts and not fixed_port_taken and any(m in text for m in _BIND_ERRORS):
                        continue  # a port we picked was taken meanwhile: pick again
                    raise
        except BaseException:
            self.stop()
            raise
        return self

    def _start_once(self, install: TritonInstall, backend_dir: Path) -> None:
        http, grpc, metrics = (p or free_port() for p in self._requested_ports)
        while len({http, grpc, metrics}) < 3:
            metrics = free_port()
            grpc = grpc if grpc != http else free_port()
        self.http_port, self.grpc_port, self.metrics_port = http, grpc, metrics
        cmd = [
            str(install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            "--http-address=127.0.0.1",
            f"--http-port={http}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={metrics}",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            f"--model-control-mode={self.model_control_mode}",
            f"--log-verbose={self.log_verbose}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            *self.extra_args,
        ]
        env = {**os.environ, **self.env}
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(install.lib_dir), env.get("LD_LIBRARY_PATH", "")) if p
        )
        if self._log_handle:
            self._log_handle.close()
        self._log_handle = open(self.log_path, "ab")
        self._log_offset = self._log_handle.tell()
        t0 = time.perf_counter()
        prefix = die_with_parent_prefix() if self.kill_with_parent else []
        with self._lock:
            self._proc = subprocess.Popen(
                prefix + cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self._tmpdir),
                start_new_session=True,  # own process group: stop() reaches the stub processes too
                preexec_fn=_set_pdeathsig if self.kill_with_parent and not prefix else None,
            )
            _LIVE.add(self)
        url = f"http://127.0.0.1:{http}/v2/health/ready"
        deadline = t0 + self.startup_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                self._kill_group()
                raise self._failure(f"exited with code {code} during startup")
            if _http_ok(url):
                self.startup_seconds = time.perf_counter() - t0
                return
            if time.perf_counter() > deadline:
                self._kill_group()
                raise self._failure(f"was not ready after {self.startup_timeout_s:.0f} s")
            time.sleep(0.05)

    def log_errors(self, limit: int = 10) -> list[str]:
        """Triton's error lines (``E<date> ...``) of this run's log, CUDA/GPU noise left out."""
        if not self.log_path or not self.log_path.exists():
            return []
        found = []
        with open(self.log_path, "rb") as handle:
            handle.seek(getattr(self, "_log_offset", 0))
            for raw in handle:
                line = raw.decode("utf-8", "replace").rstrip()
                if re.match(r"E\d{4} ", line) and not any(noise in line for noise in _GPU_NOISE):
                    found.append(line[:2000])
                    if len(found) >= limit:
                        break
        return found

    def _failure(self, what: str) -> TritonStartError:
        errors = self.log_errors()
        head = ("errors:\n" + "\n".join(errors) + "\n") if errors else ""
        return TritonStartError(
            f"tritonserver {what} (repository {self.model_repository}); {head}last log lines:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of this run's server log."""
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        with open(self.log_path, "rb") as handle:
            handle.seek(getattr(self, "_log_offset", 0))
            tail = deque(handle, maxlen=lines)
        return b"".join(tail).decode("utf-8", "replace").rstrip() or "(empty log)"

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM the server's process group, wait up to ``timeout_s`` (default: the server's
        exit timeout + 10 s), then SIGKILL whatever is left in the group. Idempotent."""
        if timeout_s is None:
            timeout_s = self.exit_timeout_s + 10.0
        with self._lock:
            proc = self._proc
            if proc is not None:
                if proc.poll() is None:
                    _signal_group(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout=timeout_s)
                    except subprocess.TimeoutExpired:
                        pass
                # kill whatever is left in the group (stubs, or the server itself after the timeout)
                _signal_group(proc.pid, signal.SIGKILL)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
                self._proc = None
            _LIVE.discard(self)
            if self._log_handle:
                self._log_handle.close()
                self._log_handle = None
            if self._tmpdir is not None:
                keep_log = self._log_path_arg is None and self.log_path is not None
                # the temp log goes with the temp dir; a caller-given log_path is kept
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None
                if keep_log:
                    self.log_path = None

    def _kill_group(self) -> None:
        if self._proc is not None:
            _signal_group(self._proc.pid, signal.SIGKILL)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __del__(self) -> None:
        try:
            self.stop()
        except Exception:
            pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


def _http_ok(url: str) -> bool:
    try:
        with _NO_PROXY_OPENER.open(url, timeout=1.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False
