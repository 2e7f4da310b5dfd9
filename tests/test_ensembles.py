"""Serving steps on batches: every step gives the same rows for a batch as for its requests one
at a time (how the Triton python model runs them under dynamic batching), and the fused chain
equals the step-by-step graph. Built on the ML-100K pipeline of the e2e fixtures; no server.

Integer outputs (ids, flags) must be identical. Float outputs are compared to 1e-5 relative:
onnxruntime's matrix products round differently in the last bit for different batch sizes
(measured: 3e-8 absolute on the user embedding), which is not a difference of behaviour."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recstack.ensembles import recommendation_graph, run_in_process
from recstack.ensembles.chain import ChainStep
from recstack.ensembles.python_model import VERSION_OUTPUT, concat_requests, split_rows
from recstack.errors import InputError

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def graph(e2e_paths):
    return recommendation_graph(e2e_paths)


@pytest.fixture(scope="module")
def user_ids(e2e_paths) -> np.ndarray:
    users = pd.read_parquet(e2e_paths.data / "test.parquet", columns=["user_id"])["user_id"].unique()
    rng = np.random.default_rng(0)
    picked = rng.choice(users, size=12, replace=False).astype(np.int64)
    return np.concatenate([picked, [987_654_321, 987_654_322]])  # two users the store does not know


def _requests(graph, user_ids: np.ndarray) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every step's real inputs for each user, as one-request dicts (top_n differs per user)."""
    per_op: dict[str, list[dict[str, np.ndarray]]] = {op.name: [] for op in graph.ops}
    steps = {op.name: ChainStep([_op_dict(op)], _outputs(op), **_prefixed(op)) for op in graph.ops}
    for i, user in enumerate(user_ids):
        tensors = {"user_id": np.array([[user]], np.int64), "top_n": np.array([[1 + i % 10]], np.int32),
                   "request_time": np.array([[1_700_000_000 + 7_000 * i]], np.int64)}  # hours differ per user
        for op in graph.ops:
            inputs = {s.name: tensors[s.name] for s in op.inputs if s.name in tensors}  # optional ones absent
            per_op[op.name].append(inputs)
            tensors.update(steps[op.name].execute(inputs))
    return per_op


def _outputs(op) -> list[str]:
    """What the step itself returns (the python model adds ``model_version``)."""
    return [s.name for s in op.outputs if s.name != VERSION_OUTPUT]


def _op_dict(op) -> dict:
    return {"name": op.name, "step_class": op.step_class, "params": op.params,
            "inputs": [s.name for s in op.inputs], "outputs": [s.name for s in op.outputs],
            "optional": list(op.optional)}


def _prefixed(op) -> dict:
    return {f"{op.name}.{k}": v for k, v in {**{k: str(a.source) for k, a in op.artifacts.items()},
                                              **op.settings}.items()}


def _assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    if np.issubdtype(want.dtype, np.floating):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=what)
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)


def test_every_step_gives_the_same_rows_batched_and_alone(graph, user_ids):
    requests = _requests(graph, user_ids)
    for op in graph.ops:
        step = ChainStep([_op_dict(op)], _outputs(op), **_prefixed(op))
        alone = [step.execute(r) for r in requests[op.name]]
        merged, sizes = concat_requests(requests[op.name])
        batched = split_rows(step.execute(merged), sizes)
        for i, (one, part) in enumerate(zip(alone, batched)):
            for name, want in one.items():
                got = part[name]
                # ragged outputs (seen_items, item_ids, scores) come back padded to the batch's width
                width = want.shape[1] if want.ndim > 1 else None
                if width is not None and got.shape[1] > width:
                    fill = {np.dtype(np.float32): -np.inf}.get(got.dtype, -1 if name in ("item_ids", "reason_item") else 0)
                    past = got[:, width:]
                    if name == "reason_score":  # no reason past the list: NaN
                        assert np.isnan(past).all(), (op.name, name, i)
                    else:
                        assert (past == fill).all(), (op.name, name, i)
                    got = got[:, :width]
                _assert_same(got, want, f"{op.name}.{name}, request {i}")


def test_fused_chain_equals_the_graph_step_by_step(graph, user_ids):
    inputs = {"user_id": user_ids.reshape(-1, 1), "top_n": np.full((len(user_ids), 1), 10, np.int32),
              "request_time": np.full((len(user_ids), 1), 1_700_000_000, np.int64)}
    fused = run_in_process(graph, inputs)
    tensors = dict(inputs)
    for op in graph.ops:
        step = ChainStep([_op_dict(op)], _outputs(op), **_prefixed(op))
        tensors.update(step.execute({s.name: tensors[s.name] for s in op.inputs if s.name in tensors}))
    for name, got in fused.items():
        _assert_same(got, tensors[name], name)
    assert fused["cold_start"][-2:, 0].tolist() == [1, 1] and not fused["cold_start"][:-2].any()


def test_requests_that_cannot_be_joined_are_not_concatenated():
    a = {"x": np.zeros((1, 3), np.int64)}
    assert concat_requests([a, {"x": np.zeros((1, 3), np.float32)}]) is None
    assert concat_requests([a, {"y": np.zeros((1, 3), np.int64)}]) is None
    merged, sizes = concat_requests([a, {"x": np.ones((2, 5), np.int64)}])
    assert sizes == [1, 2] and merged["x"].shape == (3, 5) and (merged["x"][0, 3:] == 0).all()


def test_chain_rejects_arguments_for_unknown_ops(graph):
    with pytest.raises(InputError, match=r"must be '<op>.<param>'"):
        ChainStep([_op_dict(graph.ops[-1])], ["item_ids"], **{"nope.model_dir": "x"})


def test_an_index_that_does_not_fit_the_user_tower_is_refused_at_load(e2e_paths):
    from recstack.ensembles.steps import QueryIndex

    with pytest.raises(InputError, match=r"index: dimension 64 does not match the user tower's 32"):
        QueryIndex(str(e2e_paths.index), str(e2e_paths.features / "popularity.parquet"), dimension=32)


def test_pytorch_steps_equal_the_onnx_and_faiss_chain(graph, user_ids, monkeypatch):
    """RECSTACK_TORCH_DEVICE (cpu here, cuda on a GPU host): the user tower, the DLRM and exact
    top-K in PyTorch give the same lists as onnxruntime + FAISS (scores to float rounding)."""
    from recstack.ensembles.torch_steps import TORCH_DEVICE_ENV

    inputs = {"user_id": user_ids.reshape(-1, 1), "top_n": np.full((len(user_ids), 1), 10, np.int32),
              "request_time": np.full((len(user_ids), 1), 1_700_000_000, np.int64)}
    want = run_in_process(graph, inputs, {})
    monkeypatch.setenv(TORCH_DEVICE_ENV, "cpu")
    steps: dict = {}
    got = run_in_process(graph, inputs, steps)
    chain = steps["chain"].steps
    assert {"TorchUserTower", "TorchRanker"} <= {type(getattr(s, "torch", None)).__name__ for s in chain}
    assert "ExactItemIndex" in {type(getattr(s, "index", None)).__name__ for s in chain}
    np.testing.assert_array_equal(got["item_ids"], want["item_ids"])
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-4, atol=1e-4)
    monkeypatch.setenv(TORCH_DEVICE_ENV, "gpu")
    with pytest.raises(InputError, match=TORCH_DEVICE_ENV):
        run_in_process(graph, inputs, {})
