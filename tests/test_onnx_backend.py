"""`recstack export --backend onnxruntime`: the user tower and the DLRM as Triton onnxruntime-backend
models (what NGC tritonserver images serve), the other steps python models.

This machine's tritonserver has the python backend only, so the repository is checked rather than
served: every config.pbtxt parses with Triton's protobuf schema, the ONNX models' configs agree
with the ONNX files (read with the `onnx` package, independently of the exporter), the ensemble's
wiring is complete, and the repository run in-process (python models as the python backend builds
them, ONNX models through onnxruntime) gives the same top-N as the python-backend chain. Serving
it here is refused up front with a message naming the backend, and tritonserver itself refuses it
too. Built on the ML-100K pipeline of the e2e fixtures."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest

from recstack.ensembles.graph import (
    ENSEMBLE_OUTPUTS, MAX_QUEUE_DELAY_US, export_ensemble, recommendation_graph, run_in_process,
)
from recstack.ensembles.model_repo import TensorSpec
from recstack.errors import InputError
from recstack.ids import HISTORY_LENGTH

pytestmark = pytest.mark.e2e

ONNX_MODELS = {"user_tower": "two_tower/user_tower.onnx", "dlrm": "dlrm/dlrm.onnx"}


def _parse(model_dir):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _type_name(data_type: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(data_type)


ONNX_TO_TRITON = {1: "TYPE_FP32", 7: "TYPE_INT64", 6: "TYPE_INT32"}  # onnx.TensorProto FLOAT, INT64, INT32


@pytest.fixture(scope="module")
def graph(e2e_paths):
    return recommendation_graph(e2e_paths)


@pytest.fixture(scope="module")
def onnx_repo(e2e_paths, graph, tmp_path_factory):
    """The onnxruntime-backend export of the e2e run, beside (not over) the served python repository."""
    return export_ensemble(graph, tmp_path_factory.mktemp("onnx_export") / "ml-100k", backend="onnxruntime")


def test_onnx_models_are_onnxruntime_configs_that_fit_their_onnx_files(onnx_repo, e2e_paths):
    import onnx

    for name, source in ONNX_MODELS.items():
        config = _parse(onnx_repo / name)
        assert (config.name, config.platform, config.backend) == (name, "onnxruntime_onnx", "onnxruntime")
        assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
        assert config.dynamic_batching.max_queue_delay_microseconds == MAX_QUEUE_DELAY_US
        assert [(g.kind, g.count) for g in config.instance_group] == [(config.instance_group[0].KIND_GPU, 1)]
        copied = onnx_repo / name / "1" / "model.onnx"
        assert hashlib.sha256(copied.read_bytes()).digest() == \
            hashlib.sha256((e2e_paths.models / source).read_bytes()).digest()
        graph = onnx.load(str(copied)).graph
        for kind, declared, actual in (("input", config.input, graph.input), ("output", config.output, graph.output)):
            assert [t.name for t in declared] == [t.name for t in actual], (name, kind)
            for tensor, value in zip(declared, actual):
                dims = value.type.tensor_type.shape.dim
                assert _type_name(tensor.data_type) == ONNX_TO_TRITON[value.type.tensor_type.elem_type], tensor.name
                assert dims[0].dim_param and not dims[0].dim_value, f"{name}.{tensor.name}: batch axis not dynamic"
                assert len(tensor.dims) == len(dims) - 1, tensor.name
                for d, onnx_dim in zip(tensor.dims, dims[1:]):
                    assert d > 0 and (not onnx_dim.dim_value or onnx_dim.dim_value == d), (name, tensor.name)
    # what the ONNX files fix, and what the ensemble gives them
    dlrm = _parse(onnx_repo / "dlrm")
    dims = {t.name: list(t.dims) for t in [*dlrm.input, *dlrm.output]}
    # the ranker scores the multi-source candidates: the two-tower's 100 + item-kNN + popular slots
    from recstack.models.candidates import ARTIFACT, CandidateSources

    width = CandidateSources(e2e_paths.models / ARTIFACT).width if (e2e_paths.models / ARTIFACT).exists() else 100
    assert width == 140
    assert dims["item_cat"][0] == width and dims["history"] == [HISTORY_LENGTH] and dims["score"] == [width]
    assert dims["item_cross"][0] == width


def test_the_ensemble_wiring_is_complete_and_consistent(onnx_repo):
    ensemble = _parse(onnx_repo / "recommend")
    assert ensemble.platform == "ensemble"
    tensors = {t.name: _type_name(t.data_type) for t in ensemble.input}
    backends = []
    for step in ensemble.ensemble_scheduling.step:
        model = _parse(onnx_repo / step.model_name)
        backends.append((step.model_name, model.backend))
        inputs = {t.name: _type_name(t.data_type) for t in model.input}
        outputs = {t.name: _type_name(t.data_type) for t in model.output}
        required = {t.name for t in model.input if not t.optional}
        assert required <= set(step.input_map) <= set(inputs), step.model_name
        # an optional model input is fed only from an optional ensemble input (absent when the request omits it)
        optional_in = {t.name for t in ensemble.input if t.optional}
        assert {step.input_map[k] for k in set(step.input_map) - required} <= optional_in, step.model_name
        for key, tensor in step.input_map.items():
            assert tensor in tensors, f"{step.model_name} reads {tensor}, produced by no earlier step"
            assert tensors[tensor] == inputs[key], (step.model_name, key)
        for key, tensor in step.output_map.items():
            assert key in outputs and tensor not in tensors, (step.model_name, key)
            tensors[tensor] = outputs[key]
        assert model.max_batch_size >= ensemble.max_batch_size
    for out in ensemble.output:
        assert tensors.get(out.name) == _type_name(out.data_type), out.name
    assert backends == [("request_context__query_user_features", "python"), ("user_tower", "onnxruntime"),
                        ("retrieve__query_item_features", "python"), ("dlrm", "onnxruntime"),
                        ("fuse_scores__filter_top_n", "python")]
    dlrm_step = ensemble.ensemble_scheduling.step[3]
    assert dict(dlrm_step.output_map) == {"score": "dlrm_logits"}
    assert "dlrm_logits" in ensemble.ensemble_scheduling.step[4].input_map.values()


def test_the_split_ensemble_ranks_like_the_python_chain(onnx_repo, graph, e2e_paths):
    from recstack.ensembles.repo_runner import RepositoryRunner

    users = pd.read_parquet(e2e_paths.data / "test.parquet", columns=["user_id"])["user_id"].unique()
    picked = np.random.default_rng(3).choice(users, size=64, replace=False).astype(np.int64)
    picked[-2:] = [987_654_321, 987_654_322]  # not in the online store: cold start
    top_n = (np.arange(64) % 20 + 1).astype(np.int32).reshape(-1, 1)
    inputs = {"user_id": picked.reshape(-1, 1), "top_n": top_n,
              "request_time": np.full((64, 1), 1_700_000_000, np.int64)}
    from recstack.serving.server import serving_environment

    # the e2e run's live-item registry: empty, as the python chain compared against reads it
    runner = RepositoryRunner(onnx_repo, environment=serving_environment(e2e_paths.feature_repo))
    try:
        assert runner.backends == {"request_context__query_user_features": "_PythonModel", "user_tower": "_OnnxModel",
                                   "retrieve__query_item_features": "_PythonModel", "dlrm": "_OnnxModel",
                                   "fuse_scores__filter_top_n": "_PythonModel"}
        got = runner.execute(inputs)
    finally:
        runner.close()
    want = run_in_process(graph, inputs)
    np.testing.assert_array_equal(got["item_ids"], want["item_ids"])
    np.testing.assert_array_equal(got["cold_start"], want["cold_start"])
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-6)
    assert got["cold_start"][-2:, 0].tolist() == [1, 1] and (got["item_ids"][:, 0] > 0).all()
    assert (got["model_version"] == 1).all() and set(got) == {s.name for s in ENSEMBLE_OUTPUTS}


def test_cpu_instances_and_unknown_backends(graph, tmp_path):
    repo = export_ensemble(graph, tmp_path / "cpu", backend="onnxruntime", onnx_instance_kind="KIND_CPU")
    for name in ONNX_MODELS:
        group = _parse(repo / name).instance_group[0]
        assert group.kind == group.KIND_CPU
    assert _parse(repo / "request_context__query_user_features").instance_group[0].kind == group.KIND_CPU
    with pytest.raises(InputError, match=r"--backend: 'tensorrt' must be one of"):
        export_ensemble(graph, tmp_path / "bad", backend="tensorrt")


def test_an_onnx_config_that_does_not_fit_the_file_is_refused(e2e_paths, tmp_path):
    from recstack.ensembles.onnx_model import onnx_signature, write_onnx_model

    onnx_path = e2e_paths.models / "two_tower" / "user_tower.onnx"
    inputs, outputs = onnx_signature(onnx_path)
    assert [t.name for t in inputs] == ["user_cat", "user_cont", "history"]  # this run's layout
    good = [TensorSpec(t.name, t.dtype, tuple(d or HISTORY_LENGTH for d in t.shape[1:])) for t in inputs]
    out = [TensorSpec(t.name, t.dtype, t.shape[1:]) for t in outputs]
    write_onnx_model(tmp_path, "ok", onnx_path, good, out)
    width = good[0].dims[0]
    cases = {
        rf"input 'user_cat' dims \[{width + 1}\] do not fit the ONNX shape \[None, {width}\]":
            [TensorSpec("user_cat", np.int64, (width + 1,)), *good[1:]],
        r"input 'user_cont' is float32 in the ONNX file, declared float64":
            [good[0], TensorSpec("user_cont", np.float64, good[1].dims), good[2]],
        r"ONNX input\(s\) \['history'\] are not declared": good[:2],
    }
    for message, specs in cases.items():
        with pytest.raises(InputError, match=message):
            write_onnx_model(tmp_path, "bad", onnx_path, specs, out)
    with pytest.raises(InputError, match=r"output 'embedding' is not in the ONNX file"):
        write_onnx_model(tmp_path, "bad", onnx_path, good, [TensorSpec("embedding", np.float32, out[0].dims)])
    assert not (tmp_path / "bad").exists()


def test_serving_it_here_is_refused_with_the_reason(onnx_repo, e2e_paths, tmp_path):
    """`recstack serve` refuses before starting anything; tritonserver 2.51 itself refuses too."""
    from recstack.serving.server import start_server
    from recstack.serving.tritonserver import TritonServer, TritonStartError

    with pytest.raises(InputError, match=r"\['dlrm', 'user_tower'\] need Triton's onnxruntime backend.*NGC"):
        start_server(onnx_repo, e2e_paths.feature_repo)
    # the server alone, on the user tower only (no python models to load: quick)
    shutil.copytree(onnx_repo / "user_tower", tmp_path / "repo" / "user_tower")
    with pytest.raises(TritonStartError, match=r"unable to find backend library for backend 'onnxruntime'"):
        TritonServer(tmp_path / "repo", startup_timeout_s=60).start()
