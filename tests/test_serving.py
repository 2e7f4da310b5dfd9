"""Triton plumbing through a real tritonserver (nvidia-pytriton's binary, python backend): no mocks.

One server per module serves the check models; two tests start servers of their own
(process cleanup, startup failure).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recstack.errors import InputError
from recstack.serving.client import TritonClient, TritonRequestError
from recstack.ensembles.examples import (
    AFFINE_INPUTS,
    AFFINE_OUTPUTS,
    AFFINE_STEP_CLASS,
    SUM_INPUTS,
    SUM_OPTIONAL,
    SUM_OUTPUTS,
    SUM_STEP_CLASS,
    AffineCheckStep,
    SumStep,
)
from recstack.ensembles.model_repo import Artifact, TensorSpec, write_ensemble_model, write_python_model
from recstack.serving.procfs import group_pids
from recstack.serving.tritonserver import TritonServer, TritonStartError, check_libpython

MAX_BATCH = 16
I64 = np.iinfo(np.int64)
REJECT = 42


def _build_repo(repo: Path) -> None:
    write_python_model(repo, "affine", AFFINE_STEP_CLASS, {}, AFFINE_INPUTS, AFFINE_OUTPUTS, max_batch_size=MAX_BATCH)
    write_python_model(
        repo, "affine_reject", AFFINE_STEP_CLASS, {"reject_value": REJECT}, AFFINE_INPUTS, AFFINE_OUTPUTS,
        max_batch_size=MAX_BATCH,
    )
    write_python_model(
        repo, "sum", SUM_STEP_CLASS, {"offset": 0.5}, SUM_INPUTS, SUM_OUTPUTS,
        max_batch_size=MAX_BATCH, optional_inputs=SUM_OPTIONAL,
    )
    # declares an int64 output the step returns as float32: a generic (non-InputError) failure
    write_python_model(
        repo, "bad_output", SUM_STEP_CLASS, {}, SUM_INPUTS, [TensorSpec("total", np.int64, (1,))],
        max_batch_size=MAX_BATCH, optional_inputs=SUM_OPTIONAL,
    )
    write_ensemble_model(
        repo,
        "affine_sum",
        inputs=AFFINE_INPUTS,
        outputs=[TensorSpec("total", np.float32, (1,)), TensorSpec("ints_out", np.int64, (-1,))],
        steps=[
            ("affine", {"floats": "floats", "ints": "ints"}, {"floats_out": "scaled", "ints_out": "ints_out"}),
            ("sum", {"values": "scaled"}, {"total": "total"}),
        ],
        max_batch_size=MAX_BATCH,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton") / "repo"
    _build_repo(repo)
    with TritonServer(repo, startup_timeout_s=120) as srv:
        print(f"\n[serving] tritonserver startup: {srv.startup_seconds:.2f} s")
        yield srv
    assert not srv.is_running()


@pytest.fixture(scope="module", params=["grpc", "http"])
def client(request, server):
    url = server.grpc_url if request.param == "grpc" else server.http_url
    with TritonClient(url, protocol=request.param, timeout_s=30) as c:
        yield c


def _case(rng: np.random.Generator, batch: int, length: int) -> dict[str, np.ndarray]:
    floats = (rng.standard_normal((batch, length)) * 10.0 ** rng.integers(-6, 30)).astype(np.float32)
    ints = rng.integers(I64.min, I64.max, size=(batch, length), dtype=np.int64, endpoint=True)
    if ints.size:  # the limits themselves, negative numbers and the wrap-around at +7
        extremes = np.array([I64.max, I64.min, I64.max - 7, I64.max - 6, -1, 0, -(2**53) - 1, 2**53 + 1])
        n = min(ints.size, extremes.size)
        ints.flat[:n] = extremes[:n]
    if floats.size:
        specials = np.array([np.finfo(np.float32).max / 4, -np.finfo(np.float32).tiny, -0.0, 1e-38], np.float32)
        n = min(floats.size, specials.size)
        floats.flat[-n:] = specials[:n]
    return {"floats": floats, "ints": ints}


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype, name
        assert got[name].shape == arr.shape, name
        np.testing.assert_array_equal(got[name], arr, err_msg=name)


# --- no server needed ------------------------------------------------------------------------


def test_modules_import_outside_triton_and_need_the_backend_only_for_io():
    import recstack.ensembles.python_model  # noqa: F401
    import recstack.ensembles.triton_io as tio

    with pytest.raises(ModuleNotFoundError, match="triton_python_backend_utils"):
        tio.pb_utils()


def test_mark_consumed_keeps_numpys_capsule_destructor_quiet(monkeypatch):
    """The stub renames a capsule it took to "used_dlpack"; numpy's destructor then reports an
    error (a traceback in the server log per output tensor) unless the capsule is marked consumed."""
    import ctypes
    import sys

    import recstack.ensembles.triton_io as tio

    def released(mark: bool) -> list:
        reported = []
        monkeypatch.setattr(sys, "unraisablehook", lambda info: reported.append(info.exc_value))
        capsule = np.arange(6, dtype=np.int64).__dlpack__()
        assert tio._capsule_name(capsule) == b"dltensor"
        assert tio.mark_consumed(capsule) is False  # not taken by the stub yet: left alone
        ctypes.pythonapi.PyCapsule_SetName(ctypes.py_object(capsule), ctypes.c_char_p(tio.STUB_CONSUMED_NAME))
        if mark:
            assert tio.mark_consumed(capsule) is True
            assert tio._capsule_name(capsule) == tio.CONSUMED_NAME
        del capsule
        return reported

    unmarked = released(mark=False)
    assert len(unmarked) == 1 and "PyCapsule_GetPointer" in str(unmarked[0])
    assert released(mark=True) == []


def test_missing_libpython_names_debian_package():
    with pytest.raises(InputError, match=r"libpython9\.97"):
        check_libpython("9.97")


def test_ensemble_validation_rejects_unknown_tensor(tmp_path):
    write_python_model(tmp_path, "sum", SUM_STEP_CLASS, {}, SUM_INPUTS, SUM_OUTPUTS, optional_inputs=SUM_OPTIONAL)
    with pytest.raises(InputError, match="'nowhere'.*neither an ensemble input"):
        write_ensemble_model(
            tmp_path, "ens", [TensorSpec("values", np.float32)], [TensorSpec("total", np.float32, (1,))],
            steps=[("sum", {"values": "nowhere"}, {"total": "total"})],
        )
    with pytest.raises(InputError, match="not produced by any step"):
        write_ensemble_model(
            tmp_path, "ens", [TensorSpec("values", np.float32)], [TensorSpec("other", np.float32, (1,))],
            steps=[("sum", {"values": "values"}, {"total": "total"})],
        )
    with pytest.raises(InputError, match="not an input of the model"):
        write_ensemble_model(
            tmp_path, "ens", [TensorSpec("values", np.float32)], [TensorSpec("total", np.float32, (1,))],
            steps=[("sum", {"values": "values", "bogus": "values"}, {"total": "total"})],
        )
    assert not (tmp_path / "ens").exists()


def test_python_model_config(tmp_path):
    model_src = tmp_path / "src" / "model"
    model_src.mkdir(parents=True)
    (model_src / "config.json").write_text("{}")
    (model_src / "big.pt").write_bytes(b"not exported")
    (tmp_path / "src" / "table.parquet").write_bytes(b"table")
    folder = write_python_model(
        tmp_path / "repo", "m", AFFINE_STEP_CLASS, {"scale": 3.0, "note": 'a "quoted" \\ value'}, AFFINE_INPUTS,
        AFFINE_OUTPUTS,
        artifacts={"model_dir": Artifact(model_src, ("config.json",)), "table": Artifact(tmp_path / "src" / "table.parquet")},
        environment={"feature_repo": "RECSTACK_FEATURE_REPO"},
    )
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = (folder / "config.pbtxt").read_text()
    parsed = text_format.Parse(config, model_config_pb2.ModelConfig())
    assert parsed.backend == "python" and parsed.max_batch_size == 64
    # nothing in the repository names a path of this machine: artifacts are copied and named relatively
    assert "EXECUTION_ENV_PATH" not in parsed.parameters and str(tmp_path) not in config
    step = json.loads((folder / "1" / "recstack_step.json").read_text())
    assert step["recstack_artifacts"] == {"model_dir": "model_dir", "table": "table/table.parquet"}
    assert step["recstack_step_class"] == AFFINE_STEP_CLASS
    assert parsed.version_policy.specific.versions == [1]
    assert sorted(p.name for p in (folder / "1" / "model_dir").iterdir()) == ["config.json"]
    assert (folder / "1" / "table" / "table.parquet").read_bytes() == b"table"
    assert json.loads(parsed.parameters["recstack_environment"].string_value) == {
        "feature_repo": "RECSTACK_FEATURE_REPO"}
    assert step["recstack_params"] == {"scale": 3.0, "note": 'a "quoted" \\ value'}
    assert [i.name for i in parsed.input] == ["floats", "ints"] and list(parsed.input[0].dims) == [-1]
    assert (folder / "1" / "model.py").read_text().startswith('"""The generic Triton python-backend model')
    with pytest.raises(InputError, match="step_class"):
        write_python_model(tmp_path, "bad", "no_colon", {}, AFFINE_INPUTS, AFFINE_OUTPUTS)
    with pytest.raises(InputError, match=r"artifact .*missing\.parquet: missing"):
        write_python_model(tmp_path, "bad", AFFINE_STEP_CLASS, {}, AFFINE_INPUTS, AFFINE_OUTPUTS,
                           artifacts={"table": Artifact(tmp_path / "missing.parquet")})
    with pytest.raises(InputError, match=r"parameter\(s\) \['scale'\] given more than once"):
        write_python_model(tmp_path, "bad", AFFINE_STEP_CLASS, {"scale": 1.0}, AFFINE_INPUTS, AFFINE_OUTPUTS,
                           environment={"scale": "SCALE"})
    assert not (tmp_path / "bad").exists()


# --- through the module's server -------------------------------------------------------------


def test_port_zero_picks_free_ports(server):
    ports = {server.http_port, server.grpc_port, server.metrics_port}
    assert len(ports) == 3 and all(p > 0 for p in ports)
    with TritonClient(server.http_url, "http") as h, TritonClient(server.grpc_url, "grpc") as g:
        assert h.is_ready() and g.is_ready() and g.is_ready("affine_sum")


def test_random_roundtrip_equals_in_process(client):
    step = AffineCheckStep()
    rng = np.random.default_rng(1234)
    shapes = [(1, 1), (1, 0), (2, 0), (MAX_BATCH, 1), (3, 5), (MAX_BATCH, 4096)]
    shapes += [(int(rng.integers(1, MAX_BATCH + 1)), int(rng.integers(0, 1000))) for _ in range(20)]
    for batch, length in shapes:
        case = _case(rng, batch, length)
        want = step.execute(case)
        got = client.infer("affine", case, list(want))
        _assert_same(got, want)


def test_outputs_leave_no_capsule_errors_in_the_log(server, client):
    # before triton_io.mark_consumed every output tensor wrote a ValueError traceback to the log
    case = _case(np.random.default_rng(5), 3, 4)
    for _ in range(5):
        _assert_same(client.infer("affine", case, ["floats_out", "ints_out", "count"]), AffineCheckStep().execute(case))
    log = server.log_path.read_text(errors="replace")
    assert "PyCapsule_GetPointer" not in log


def test_wrong_dtype_missing_input_and_big_batch_are_errors(client):
    rng = np.random.default_rng(7)
    good = _case(rng, 2, 3)
    bad_requests = {
        "wrong dtype": {"floats": good["floats"].astype(np.float64), "ints": good["ints"]},
        "int32 for int64": {"floats": good["floats"], "ints": good["ints"].astype(np.int32)},
        "missing input": {"floats": good["floats"]},
        "batch too large": _case(rng, MAX_BATCH + 1, 3),
    }
    for label, inputs in bad_requests.items():
        with pytest.raises(TritonRequestError) as info:
            client.infer("affine", inputs, ["floats_out", "ints_out", "count"])
        assert str(info.value), label
        # the server keeps serving
        _assert_same(client.infer("affine", good, ["floats_out", "ints_out", "count"]), AffineCheckStep().execute(good))


def test_step_input_error_becomes_error_response(client):
    case = {"floats": np.ones((2, 3), np.float32), "ints": np.array([[1, 2, 3], [4, REJECT, 6]], np.int64)}
    with pytest.raises(TritonRequestError, match=f"ints: value {REJECT} is rejected by this check model"):
        client.infer("affine_reject", case, ["floats_out"])
    case["ints"][1, 1] = 5
    got = client.infer("affine_reject", case, ["ints_out"])
    np.testing.assert_array_equal(got["ints_out"], case["ints"] + 7)


def test_step_exception_becomes_one_line_error(client):
    with pytest.raises(TritonRequestError, match=r"^TypeError: output total: step returned float32, the model declares int64$"):
        client.infer("bad_output", {"values": np.ones((2, 3), np.float32)}, ["total"])
    assert client.infer("sum", {"values": np.ones((2, 3), np.float32)}, ["total"])["total"].shape == (2, 1)


def test_optional_input(client):
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    weights = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    step = SumStep(offset=0.5)
    _assert_same(client.infer("sum", {"values": values}, ["total"]), step.execute({"values": values}))
    _assert_same(
        client.infer("sum", {"values": values, "weights": weights}, ["total"]),
        step.execute({"values": values, "weights": weights}),
    )
    with pytest.raises(TritonRequestError, match="weights: shape"):
        client.infer("sum", {"values": values, "weights": weights[:, :2]}, ["total"])


def test_ensemble_of_two_python_models(client):
    rng = np.random.default_rng(99)
    affine, summer = AffineCheckStep(), SumStep(offset=0.5)
    for batch, length in [(1, 1), (4, 17), (MAX_BATCH, 300)]:
        case = _case(rng, batch, length)
        case["floats"] = rng.standard_normal((batch, length)).astype(np.float32)
        mid = affine.execute(case)
        want = {"total": summer.execute({"values": mid["floats_out"]})["total"], "ints_out": mid["ints_out"]}
        got = client.infer("affine_sum", case, ["total", "ints_out"])
        _assert_same(got, want)


# --- servers of their own --------------------------------------------------------------------


def test_stop_leaves_no_process(tmp_path, server):
    write_python_model(tmp_path / "repo", "sum", SUM_STEP_CLASS, {}, SUM_INPUTS, SUM_OUTPUTS, optional_inputs=SUM_OPTIONAL)
    second = TritonServer(tmp_path / "repo").start()  # runs beside the module's server: ports differ
    try:
        assert {second.http_port, second.grpc_port} & {server.http_port, server.grpc_port} == set()
        pid = second.pid
        members = group_pids(pid)
        assert pid in members and len(members) >= 2  # the server and its python-backend stub
        with TritonClient(second.grpc_url) as c:
            assert c.infer("sum", {"values": np.ones((1, 3), np.float32)}, ["total"])["total"][0, 0] == 3.0
    finally:
        second.stop()
    assert not second.is_running()
    assert group_pids(pid) == []
    second.stop()  # idempotent


def test_startup_failure_reports_log_tail(tmp_path):
    write_python_model(
        tmp_path / "repo", "broken", "recstack.ensembles.examples:NoSuchStep", {}, SUM_INPUTS, SUM_OUTPUTS
    )
    srv = TritonServer(tmp_path / "repo", startup_timeout_s=60)
    with pytest.raises(TritonStartError, match="NoSuchStep"):
        srv.start()
    assert not srv.is_running()


_PARENT = """
import sys, time
from recstack.serving.tritonserver import TritonServer
srv = TritonServer(sys.argv[1]).start()
print(srv.pid, flush=True)
time.sleep(120)
"""


def test_server_dies_with_the_process_that_started_it(tmp_path):
    """SIGKILL of the starting process (no stop(), no atexit) still ends tritonserver and its stubs."""
    import signal
    import subprocess
    import sys
    import time

    write_python_model(tmp_path / "repo", "sum", SUM_STEP_CLASS, {}, SUM_INPUTS, SUM_OUTPUTS, optional_inputs=SUM_OPTIONAL)
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path / "repo")], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"tritonserver")  # exec'd, same pid
        assert len(group_pids(pid)) >= 2
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 30
        while group_pids(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_pids(pid) == []
    finally:
        parent.kill()
