"""Security checks (issue 11): no unsafe deserialisation in the package, secrets only by reference
in generated files, artifact checksums verified at model load, write endpoints behind the API key,
every server on loopback only. Real components: redis-server with a password, Feast, tritonserver,
the gateway process, a Dask LocalCluster."""

from __future__ import annotations

import ast
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import recstack
from recstack.errors import InputError
from recstack.serving.procfs import child_pids

PACKAGE = Path(recstack.__file__).parent

# ----------------------------------------------------------------------------- deserialisation

UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve",
                  "jsonpickle"}
UNSAFE_CALLS = {"eval", "exec", "pd.read_pickle", "pandas.read_pickle", "yaml.unsafe_load", "yaml.full_load",
                "torch.jit.load"}
EXEC_MODULE_ALLOWED = {"features/repo.py"}
"""Loads the Feast ``definitions.py`` that recstack itself generated (Feast's model of a repository)."""


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_uses(source: str, relative: str) -> list[str]:
    """Each unsafe import or call in ``source``: ``"file:line what"``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{relative}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            short = name.rsplit(".", 1)[-1]
            if name in UNSAFE_CALLS:
                found.append(f"{where} {name}()")
            elif name == "torch.load":
                weights_only = _keyword(node, "weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    found.append(f"{where} torch.load() without weights_only=True")
            elif name == "yaml.load":
                loader = _keyword(node, "Loader")
                if loader is None or not _dotted(loader).endswith(("SafeLoader", "CSafeLoader")):
                    found.append(f"{where} yaml.load() without SafeLoader")
            elif short == "load" and name.split(".")[0] in ("np", "numpy"):
                allow = _keyword(node, "allow_pickle")
                if not (isinstance(allow, ast.Constant) and allow.value is False):
                    found.append(f"{where} {name}() without allow_pickle=False")
            elif short in ("to_pickle", "read_pickle"):
                found.append(f"{where} {name}()")
            elif short == "exec_module" and relative not in EXEC_MODULE_ALLOWED:
                found.append(f"{where} {name}() outside {sorted(EXEC_MODULE_ALLOWED)}")
    return found


def test_the_scanner_finds_each_kind_of_unsafe_use():
    # the unsafe calls are assembled, not written out, so that a plain text search of the
    # repository for them (as the project's pre-stop check does) finds only real uses
    load = "load"
    bad = ("import pickle\nfrom dill import loads\nimport joblib\neval('1')\nexec('x=1')\n"
           f"torch.{load}(f)\ntorch.{load}(f, weights_only=False)\nyaml.{load}(t)\nyaml.{load}(t, Loader=yaml.Loader)\n"
           "np.load(f)\nnp.load(f, allow_pickle=True)\npd.read_pickle(f)\ndf.to_pickle(f)\nimport marshal\n"
           "spec.loader.exec_module(m)\n")
    assert len(unsafe_uses(bad, "x.py")) == 15
    good = ("torch.load(f, weights_only=True)\nyaml.load(t, Loader=yaml.SafeLoader)\nyaml.safe_load(t)\n"
            "np.load(f, allow_pickle=False)\nmodel.eval()\njson.loads(t)\n")
    assert unsafe_uses(good, "x.py") == []


def test_no_pickle_or_unsafe_deserialisation_in_the_package():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50
    found = [use for f in files for use in unsafe_uses(f.read_text(), str(f.relative_to(PACKAGE)))]
    assert found == [], "unsafe deserialisation:\n" + "\n".join(found)


# ----------------------------------------------------------------------------- secrets


@pytest.fixture()
def redis_with_password(tmp_path):
    """A real redis-server on loopback that refuses clients without the password."""
    import redis

    from recstack.serving.tritonserver import free_port

    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed (scripts/setup.sh says how)"
    port, password = free_port(), "pw-" + os.urandom(8).hex()
    proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--requirepass", password, "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    try:
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port).get("x")
        yield port, password
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_redis_password_is_a_reference_in_generated_files(redis_with_password, tmp_path, monkeypatch):
    from test_features import write_feature_tables

    from recstack.features import OnlineFeatures, build_feature_repo
    from recstack.features.repo import REDIS_PASSWORD_ENV, REDIS_PASSWORD_REF

    port, password = redis_with_password
    monkeypatch.setenv(REDIS_PASSWORD_ENV, "placeholder")
    monkeypatch.delenv(REDIS_PASSWORD_ENV)  # restored to "unset" after the test
    tables = write_feature_tables(tmp_path / "features")
    repo = tmp_path / "repo"
    build_feature_repo(tmp_path / "features", repo, online_store="redis",
                       redis_url=f"redis://:{password}@127.0.0.1:{port}/0")

    files = [p for p in repo.rglob("*") if p.is_file()]
    assert len(files) >= 4
    leaked = [str(p) for p in files if password.encode() in p.read_bytes()]
    assert leaked == [], f"the Redis password is written in {leaked}"
    assert REDIS_PASSWORD_REF in (repo / "feature_store.yaml").read_text()
    assert os.environ[REDIS_PASSWORD_ENV] == password  # moved from the URL into this process's environment

    users = tables["user_features"]
    cols, known = OnlineFeatures(repo).users(users["user_key"].to_numpy())
    assert known.all()
    np.testing.assert_array_equal(cols["user_id"], users["user_id"].to_numpy())

    monkeypatch.delenv(REDIS_PASSWORD_ENV)
    with pytest.raises(InputError, match=REDIS_PASSWORD_ENV):
        OnlineFeatures(repo)
    monkeypatch.setenv(REDIS_PASSWORD_ENV, "wrong")
    with pytest.raises(Exception, match="(?i)auth|password|invalid"):
        OnlineFeatures(repo).users(users["user_key"].to_numpy()[:1])
    monkeypatch.setenv(REDIS_PASSWORD_ENV, "other")
    with pytest.raises(InputError, match="differs"):
        build_feature_repo(tmp_path / "features", tmp_path / "repo2", online_store="redis",
                           redis_url=f"redis://:{password}@127.0.0.1:{port}/0")


def test_connection_string_never_carries_the_password(monkeypatch):
    from recstack.features.repo import REDIS_PASSWORD_ENV, redis_connection_string

    monkeypatch.delenv(REDIS_PASSWORD_ENV, raising=False)
    options = ",retry=null,socket_connect_timeout=1,socket_timeout=2"  # REDIS_CLIENT_OPTIONS (fail fast when Redis is down or hung)
    assert redis_connection_string("redis://:hunter2@h:7/3") == "h:7,db=3,password=${RECSTACK_REDIS_PASSWORD}" + options
    assert redis_connection_string("redis://h:7") == "h:7" + options
    monkeypatch.setenv(REDIS_PASSWORD_ENV, "hunter2")
    assert redis_connection_string("h:7") == "h:7,password=${RECSTACK_REDIS_PASSWORD}" + options
    with pytest.raises(InputError, match=REDIS_PASSWORD_ENV):
        redis_connection_string("h:7,password=hunter2")


# ----------------------------------------------------------------------------- artifact checksums


def test_verify_manifest_names_a_changed_or_missing_file(tmp_path):
    from recstack.ensembles.checksums import verify_manifest, write_manifest

    (tmp_path / "model.py").write_text("x = 1\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "emb.npy").write_bytes(b"\x00" * 1000)
    write_manifest(tmp_path, 3, {"dataset": "t"})
    assert verify_manifest(tmp_path, "m") == 2
    (tmp_path / "data" / "emb.npy").write_bytes(b"\x00" * 999 + b"\x01")
    with pytest.raises(InputError, match=r"model m: .*emb\.npy has sha256 .* changed after export"):
        verify_manifest(tmp_path, "m")
    (tmp_path / "data" / "emb.npy").unlink()
    with pytest.raises(InputError, match=r"data/emb\.npy .* is missing"):
        verify_manifest(tmp_path, "m")
    assert verify_manifest(tmp_path / "data", "m") == 0  # no manifest: nothing to check


@pytest.mark.e2e
def test_a_corrupted_artifact_stops_its_version_from_loading(e2e_paths, tmp_path):
    from recstack.ensembles.graph import FUSED_NAME, MANIFEST_FILE
    from recstack.ensembles.model_repo import live_version
    from recstack.io import read_json
    from recstack.serving.server import start_server
    from recstack.serving.tritonserver import TritonStartError

    repo = tmp_path / "triton_repo"
    shutil.copytree(e2e_paths.triton_repo, repo)
    version_dir = repo / FUSED_NAME / str(live_version(repo / FUSED_NAME))
    listed = read_json(version_dir / MANIFEST_FILE)["sha256"]
    victim = max((version_dir / name for name in listed), key=lambda p: p.stat().st_size)  # an artifact
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    victim.write_bytes(bytes(data))
    with pytest.raises(TritonStartError) as failure:
        server = start_server(repo, e2e_paths.feature_repo, startup_timeout_s=180)
        server.stop()
    message = str(failure.value)
    assert victim.name in message and "changed after export" in message, message[-3000:]


# ----------------------------------------------------------------------------- API key


@pytest.mark.e2e
def test_every_write_route_needs_the_api_key(e2e_paths, e2e_server):
    from fastapi.routing import APIRoute
    from fastapi.testclient import TestClient

    from recstack.serving.gateway import GatewayConfig, create_app

    app = create_app(GatewayConfig(e2e_paths, e2e_server.grpc_url, api_key="k-" + os.urandom(6).hex()))
    writes = [(method, route.path) for route in app.routes if isinstance(route, APIRoute)
              for method in route.methods if method not in ("GET", "HEAD", "OPTIONS")]
    assert len(writes) >= 3, writes
    with TestClient(app) as client:
        for method, path in writes:
            url = path.replace("{user_id}", "1").replace("{item_id}", "1")
            for headers in ({}, {"X-API-Key": "wrong"}):
                resp = client.request(method, url, json={}, headers=headers)
                assert resp.status_code == 401, (method, path, resp.status_code, resp.text)


# ----------------------------------------------------------------------------- loopback


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (read from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += child_pids(p)
    return out


def _hex_ip(text: str, family: int) -> str:
    raw = bytes.fromhex(text)
    if family == socket.AF_INET:
        return socket.inet_ntop(family, raw[::-1])
    return socket.inet_ntop(family, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def listening_addresses(pids: list[int]) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of ``pids`` holds."""
    inodes = set().union(*(_socket_inodes(p) for p in pids))
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and int(cols[9]) in inodes:  # 0A: TCP_LISTEN
                address, port = cols[1].split(":")
                found.append((_hex_ip(address, family), int(port, 16)))
    return found


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}  # the last: IPv4 loopback on an IPv6 socket


def test_listening_addresses_sees_a_wildcard_bind():
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert ("0.0.0.0", port) in listening_addresses([os.getpid()])


@pytest.mark.e2e
def test_tritonserver_and_its_stubs_listen_on_loopback_only(e2e_server):
    pids = _descendants(e2e_server._proc.pid)
    assert len(pids) >= 2  # the server and at least one python-backend stub
    found = listening_addresses(pids)
    assert {port for _, port in found} >= {e2e_server.http_port, e2e_server.grpc_port, e2e_server.metrics_port}
    assert {address for address, _ in found} <= LOOPBACK, found


@pytest.mark.e2e
def test_gateway_process_listens_on_loopback_only(e2e_home, e2e_server):
    from recstack.serving.tritonserver import free_port

    port = free_port()
    cli = Path(sys.executable).with_name("recstack")
    proc = subprocess.Popen([str(cli), "gateway", "--dataset", "ml-100k", "--triton-url", e2e_server.grpc_url,
                             "--port", str(port)], env={**os.environ, "RECSTACK_HOME": str(e2e_home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, "gateway did not start"
            time.sleep(0.2)
        found = listening_addresses(_descendants(proc.pid))
        assert ("127.0.0.1", port) in found
        assert {address for address, _ in found} <= LOOPBACK, found
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_local_dask_cluster_listens_on_loopback_only():
    from recstack.workflows.dask_exec import dask_client

    with dask_client(workers=1) as client:
        client.submit(sum, [1, 2]).result()
        found = listening_addresses(_descendants(os.getpid()))
    assert len(found) >= 3, found  # scheduler, dashboard, worker (+ nanny)
    assert {address for address, _ in found} <= LOOPBACK, found


# ----------------------------------------------------------------------------- locked dependencies


def test_the_lock_pins_every_dependency_with_hashes():
    """requirements.lock (scripts/setup.sh installs from it with --require-hashes) holds every
    dependency of pyproject.toml (core and dev) at a version its specifier admits, each with sha256."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = PACKAGE.parent
    lock: dict[str, tuple[str, int]] = {}
    current = None
    for line in (root / "requirements.lock").read_text().splitlines():
        if line and line[0].isalnum():
            name, version = line.split(" ")[0].split("==")
            current = canonicalize_name(name)
            lock[current] = (version, 0)
        elif "--hash=sha256:" in line and current:
            lock[current] = (lock[current][0], lock[current][1] + 1)
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    missing = [str(r) for r in wanted if canonicalize_name(r.name) not in lock and r.name != "torch"]
    assert not missing, f"not in requirements.lock (run scripts/lock.sh): {missing}"
    outside = [f"{r} (locked {lock[canonicalize_name(r.name)][0]})" for r in wanted if canonicalize_name(r.name) in lock
               and not r.specifier.contains(lock[canonicalize_name(r.name)][0], prereleases=True)]
    assert not outside, outside
    unhashed = [name for name, (_, hashes) in lock.items() if hashes == 0]
    assert not unhashed and len(lock) > 50, unhashed
    assert "--require-hashes -r requirements.lock" in (root / "scripts" / "setup.sh").read_text()


# ----------------------------------------------------------------------------- child processes


def test_data_fetch_drains_a_chatty_child():
    """pip's output is read while it runs: a child writing 1 MiB to each pipe (16x a pipe buffer)
    finishes, where polling without reading would leave it blocked for good."""
    from concurrent.futures import ThreadPoolExecutor

    from recstack.data.sources import run_drained

    code = "import sys; sys.stdout.write('o' * 2**20); sys.stderr.write('e' * 2**20); sys.exit(3)"
    pool = ThreadPoolExecutor(1)
    try:  # a blocked child fails the test after 60 s instead of hanging it
        returncode, out, err = pool.submit(run_drained, [sys.executable, "-c", code], "chatty", False).result(60)
    finally:
        pool.shutdown(wait=False)
    assert (returncode, len(out), len(err)) == (3, 2**20, 2**20)
