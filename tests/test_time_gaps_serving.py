"""Time gaps end to end on ML-100K, without tritonserver: the workflow's ``recent_times`` through Feast and
the serving steps (QueryUserFeatures -> EmbedUser, the ONNX user tower) give the in-process embedding of the
sequence tower; a pushed event reaches the served ``history_times``."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from recstack.ensembles.steps import EmbedUser, QueryUserFeatures
from recstack.errors import InputError
from recstack.features import OnlineFeatures, push_interaction
from recstack.ids import HISTORY_LENGTH
from recstack.models.data import load_training_data, load_workflow
from recstack.models.export import save_two_tower
from recstack.models.predict import user_embeddings
from recstack.models.two_tower import TwoTowerConfig
from recstack.models.two_tower_training import fit_two_tower
from recstack.paths import RunPaths
from recstack.pipeline import STAGES, run_stages


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """ML-100K data, workflow and Feast stages, and a small sequence two-tower (time gaps) trained one epoch."""
    paths = RunPaths.for_dataset("ml-100k", home=tmp_path_factory.mktemp("tgap_home"))
    args = argparse.Namespace(dataset="ml-100k", history_length=HISTORY_LENGTH, progress=False)
    run_stages(paths, args, stages=STAGES[:3])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = load_training_data(paths)
    cfg = TwoTowerConfig(user_encoder="sasrec", embedding_dim=16, output_dim=16, hidden=[32])
    model, _ = fit_two_tower(data, cfg, epochs=1, progress=False, select=False)
    save_two_tower(model, paths.models / "two_tower", data.item_features, {}, {})
    return paths, data, model.eval()


def _raw_test_users(paths: RunPaths, data, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` raw user ids of the test split and their rows in ``data.test``."""
    import pandas as pd

    raw = np.sort(pd.read_parquet(paths.data / "test.parquet")["user_id"].unique())[:count].astype(np.int64)
    codes = load_workflow(paths).transform(pd.DataFrame({"user_id": raw}))["user_id"].to_numpy(np.int64)
    rows = np.array([np.flatnonzero(data.test.users == c)[0] for c in codes])
    return raw, rows


def test_served_user_embedding_equals_the_in_process_one_with_time_gaps(run):
    paths, data, model = run
    assert model.cfg.reads_history_times
    raw, rows = _raw_test_users(paths, data, 25)
    query = QueryUserFeatures(str(paths.feature_repo), str(paths.workflow), str(paths.models / "two_tower"))
    assert "history_times" in query.outputs()
    features = query.execute({"user_id": raw[:, None]})
    # the served times are the test rows' history times (train + valid, the store's recent_times)
    n = (features["history"] > 0).sum(1)
    for b, r in enumerate(rows):
        want_items, want_times = data.test.history[r], data.test.history_times[r]
        assert features["history"][b, :n[b]].tolist() == want_items[want_items > 0].tolist()
        assert features["history_times"][b, :n[b]].tolist() == want_times[want_items > 0].tolist()
    assert (np.diff(features["history_times"][0, :n[0]]) >= 0).all() and features["history_times"][0, 0] > 8e8
    embed = EmbedUser(str(paths.models / "two_tower"))
    assert "history_times" in embed.input_names
    served = embed.execute(features)["user_embedding"]
    offline = user_embeddings(model, data, data.test.users[rows], data.test.history[rows],
                              data.test.history_times[rows])
    assert np.abs(served - offline).max() < 1e-4
    # the times matter: the same histories with every gap unknown embed differently
    blind = user_embeddings(model, data, data.test.users[rows], data.test.history[rows],
                            np.zeros_like(data.test.history_times[rows]))
    assert np.abs(blind - offline).max() > 1e-3


def test_a_pushed_event_reaches_the_served_history_times(run):
    paths, data, _ = run
    raw, _ = _raw_test_users(paths, data, 1)
    user = int(raw[0])
    query = QueryUserFeatures(str(paths.feature_repo), str(paths.workflow), str(paths.models / "two_tower"))
    before = query.execute({"user_id": raw[:, None]})
    n = int((before["history"][0] > 0).sum())
    last_time = int(before["history_times"][0, n - 1])
    item = 5 if before["history"][0, n - 1] != 5 else 6
    push_interaction(OnlineFeatures(paths.feature_repo), user, item, last_time + 3_600, HISTORY_LENGTH)
    after = query.execute({"user_id": raw[:, None]})
    m = int((after["history"][0] > 0).sum())
    assert after["history"][0, m - 1] == item and after["history_times"][0, m - 1] == last_time + 3_600
    embed = EmbedUser(str(paths.models / "two_tower"))
    assert not np.allclose(embed.execute(before)["user_embedding"], embed.execute(after)["user_embedding"])


def test_a_time_gap_model_refuses_a_store_without_recent_times(run, tmp_path):
    """A feature repository built before recent_times cannot feed a time-gap tower: a clear error at load."""
    import pyarrow.parquet as pq

    from recstack.features import build_feature_repo

    paths, _, _ = run
    features = tmp_path / "features"
    features.mkdir()
    for name in ("user_features", "item_features", "user_history"):
        table = pq.read_table(paths.features / f"{name}.parquet")
        if name == "user_history":
            table = table.drop(["recent_times"])
        pq.write_table(table, features / f"{name}.parquet")
    build_feature_repo(features, tmp_path / "repo")
    with pytest.raises(InputError, match="recent_times"):
        QueryUserFeatures(str(tmp_path / "repo"), str(paths.workflow), str(paths.models / "two_tower"))
