"""recstack.models on a small synthetic schema: shapes, tags-not-names, ONNX == PyTorch, save/load, training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recstack.errors import InputError
from recstack.ids import FIRST_CODE
from recstack.models.candidates import CROSS_FEATURES, RANKER_FEATURES
from recstack.models.data import Interactions, TrainingData, last_items
from recstack.models.device import resolve_device
from recstack.models.dlrm import DLRM, DLRMConfig, DenseArch, InteractionArch, OverArch, SparseArch
from recstack.models.dlrm_training import fit_dlrm
from recstack.models.export import load_dlrm, load_two_tower, random_inputs, save_dlrm, save_two_tower
from recstack.models.fusion import DLRM_WEIGHT_GRID, fuse_scores, read_fusion, select_fusion
from recstack.models.layout import FeatureLayout, pad_lists
from recstack.models.predict import dlrm_scores, rerank
from recstack.models.two_tower import TwoTower, TwoTowerConfig, in_batch_softmax_loss
from recstack.models.two_tower_training import fit_two_tower
from recstack.models.validation import CandidateSet, candidate_ndcg, candidate_set, fusion_on_valid, split_view
from recstack.ranking import RankingAccumulator
from recstack.workflows import ColumnSchema, Schema, Tags, history_before_each

N_USERS, N_ITEMS, L = 40, 60, 8


def make_schema(prefix: str = "") -> Schema:
    T = Tags
    return Schema([
        ColumnSchema(f"{prefix}user_id", "int64", {T.USER_ID, T.USER, T.CATEGORICAL}, cardinality=N_USERS),
        ColumnSchema(f"{prefix}gender", "int64", {T.USER, T.CATEGORICAL}, cardinality=4),
        ColumnSchema(f"{prefix}age", "float32", {T.USER, T.CONTINUOUS}),
        ColumnSchema(f"{prefix}item_id", "int64", {T.ITEM_ID, T.ITEM, T.CATEGORICAL}, cardinality=N_ITEMS),
        ColumnSchema(f"{prefix}studio", "int64", {T.ITEM, T.CATEGORICAL}, cardinality=7),
        ColumnSchema(f"{prefix}genres", "int64", {T.ITEM, T.CATEGORICAL, T.LIST}, cardinality=12, is_list=True,
                     max_length=3),
        ColumnSchema(f"{prefix}year", "float32", {T.ITEM, T.CONTINUOUS}),
        ColumnSchema(f"{prefix}rating", "float32", {T.TARGET}),
    ])


@pytest.fixture(scope="module")
def layout() -> FeatureLayout:
    return FeatureLayout.from_schema(make_schema(), history_length=L)


def batch_of(layout, n=5, seed=0):
    names = layout.user_blocks() + ["history_times"] + layout.item_blocks()  # times: the sequence tower's gaps
    return {k: torch.from_numpy(v) for k, v in random_inputs(layout, names, n, seed=seed).items()}


def test_layout_from_tags(layout):
    assert [c.name for c in layout.user.cat] == ["user_id", "gender"]
    assert [c.name for c in layout.item.cat] == ["item_id", "studio"]
    assert [(c.name, c.max_length) for c in layout.item.lists] == [("genres", 3)]
    assert layout.user.cont == ["age"] and layout.item.cont == ["year"]
    assert layout.user_blocks() == ["user_cat", "user_cont", "history"]
    assert layout.item_blocks() == ["item_cat", "item_lists", "item_cont"]
    assert layout.n_items == N_ITEMS
    assert FeatureLayout.from_dict(layout.to_dict()) == layout


def test_layout_uses_tags_not_names():
    renamed = FeatureLayout.from_schema(make_schema(prefix="zz_"), history_length=L)
    assert [c.name for c in renamed.user.cat] == ["zz_user_id", "zz_gender"]
    assert renamed.item.id_column.name == "zz_item_id" and renamed.item.cont == ["zz_year"]
    # a column *named* like an id but tagged otherwise is not the id
    T = Tags
    tricky = Schema([ColumnSchema("item_id", "int64", {T.USER_ID, T.USER, T.CATEGORICAL}, cardinality=5),
                     ColumnSchema("user_id", "int64", {T.ITEM_ID, T.ITEM, T.CATEGORICAL}, cardinality=9)])
    lay = FeatureLayout.from_schema(tricky, 4)
    assert lay.user.id_column.name == "item_id" and lay.n_items == 9
    with pytest.raises(InputError, match="ITEM_ID"):
        FeatureLayout.from_schema(Schema([tricky.columns[0]]), 4)


def test_layout_tensors(layout):
    df = pd.DataFrame({"user_id": [2, 3], "gender": [1, 2], "age": [0.5, np.nan], "item_id": [5, 6],
                       "studio": [2, 3], "genres": [[2, 3, 4, 5], []], "year": [1.0, 2.0]})
    t = layout.tensors(df, history=[[7, 8, 9], []])
    assert t["user_cat"].tolist() == [[2, 1], [3, 2]] and t["user_cat"].dtype == np.int64
    assert t["user_cont"].dtype == np.float32 and t["user_cont"][1, 0] == 0.0  # NaN -> 0
    assert t["item_lists"].tolist() == [[2, 3, 4], [0, 0, 0]]
    assert t["history"].shape == (2, L) and t["history"][0, -3:].tolist() == [7, 8, 9]
    assert set(t) == {"user_cat", "user_cont", "history", "item_cat", "item_lists", "item_cont"}
    only_user = layout.tensors(df[["user_id", "gender", "age"]])
    assert set(only_user) == {"user_cat", "user_cont"}


def test_module_shapes(layout):
    b = batch_of(layout, n=6)
    cfg = TwoTowerConfig(embedding_dim=8, output_dim=16, hidden=[32], user_encoder="sasrec")
    tt = TwoTower(layout, cfg)
    u, v = tt(b)
    assert u.shape == (6, 16) and v.shape == (6, 16)
    assert torch.allclose(u.norm(dim=1), torch.ones(6), atol=1e-5)
    assert tt.user_tower.encoder.item_table is tt.item_tower.id_table  # shared item-id table (sasrec default)
    pooled = TwoTower(layout, TwoTowerConfig(embedding_dim=8, output_dim=16, hidden=[32], user_encoder="pool"))
    assert pooled.user_tower.history.table is pooled.item_tower.id_table and pooled(b)[0].shape == (6, 16)
    d = DLRM(layout, DLRMConfig(embedding_dim=8, dense_hidden=[16], over_hidden=[16]))
    sparse = d.sparse_arch(b["user_cat"], None, b["history"], b["item_cat"], b["item_lists"])
    F = 2 + 2 + 2 + 1  # user cats, history mean + recent, item cats, genres bag
    assert isinstance(d.sparse_arch, SparseArch) and sparse.shape == (6, F, 8)
    dense = d.dense_arch(torch.cat([b["user_cont"], b["item_cont"]], 1), b["item_cat"])
    assert isinstance(d.dense_arch, DenseArch) and dense.shape == (6, 8)
    inter = d.inter_arch(dense, sparse)
    assert isinstance(d.inter_arch, InteractionArch) and inter.shape == (6, 8 + (F + 1) * F // 2)
    assert isinstance(d.over_arch, OverArch) and d(b).shape == (6,)



def test_dlrm_grouped_forward_equals_rows_repeated(layout):
    """Listwise training scores [G, K] candidates per user row: the logits and every gradient equal
    the flat forward over the user rows repeated K times (the user side computed once per group)."""
    G, K = 4, 5
    lay = layout.with_context(("hour", "weekday"))
    users = {k: torch.from_numpy(v) for k, v in random_inputs(lay, lay.user_blocks(), G, seed=3).items()}
    items = {k: torch.from_numpy(v) for k, v in random_inputs(lay, lay.item_blocks(), G * K, seed=4).items()}
    cross = torch.rand(G, K, len(CROSS_FEATURES))
    torch.manual_seed(0)
    model = DLRM(lay, DLRMConfig(embedding_dim=8, dense_hidden=[16], over_hidden=[16], dropout=0.0,
                                 cross_features=list(RANKER_FEATURES)))
    flat = {k: v.repeat_interleave(K, 0) for k, v in users.items()} | items | {"item_cross": cross.reshape(G * K, -1)}
    grouped = users | {k: v.reshape(G, K, -1) for k, v in items.items()} | {"item_cross": cross}
    grads = []
    for batch in (flat, grouped):
        model.zero_grad()
        logits = model(batch).reshape(G, K)
        torch.nn.functional.cross_entropy(logits, torch.zeros(G, dtype=torch.long)).backward()
        grads.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    assert model(grouped).shape == (G, K)
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert grads[0][1].keys() == grads[1][1].keys() and len(grads[0][1]) > 5
    for name, grad in grads[0][1].items():
        torch.testing.assert_close(grad, grads[1][1][name], msg=name)

@pytest.mark.parametrize("encoder", ["pool", "sasrec"])
def test_history_padding_side_does_not_matter(layout, encoder):
    tt = TwoTower(layout, TwoTowerConfig(embedding_dim=8, output_dim=8, hidden=[16], user_encoder=encoder)).eval()
    b = batch_of(layout, n=4, seed=3)
    left = torch.from_numpy(pad_lists([[5, 6, 7], [9], []], L, keep="last", align="left"))
    right = torch.from_numpy(pad_lists([[5, 6, 7], [9], []], L, keep="last", align="right"))
    times = [[100, 700, 90_000], [5], []]  # the sequence tower's time gaps: padded like the items
    t_left = torch.from_numpy(pad_lists(times, L, keep="last", align="left")) if encoder == "sasrec" else None
    t_right = torch.from_numpy(pad_lists(times, L, keep="last", align="right")) if encoder == "sasrec" else None
    uc, cont = b["user_cat"][:3], b["user_cont"][:3]
    with torch.no_grad():
        a = tt.user_tower(uc, None, cont, left, t_left)
        c = tt.user_tower(uc, None, cont, right, t_right)
    assert torch.allclose(a, c, atol=1e-6)


def test_in_batch_loss_masks_duplicates():
    u = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    v = u.clone()
    ids = torch.tensor([3, 3, 4, 5])
    loss = in_batch_softmax_loss(u, v, ids, temperature=0.05)
    assert torch.isfinite(loss)
    # the duplicate column (row 0 vs item of row 1) must not act as a negative
    same_loss = in_batch_softmax_loss(u[[0, 2, 3]], v[[0, 2, 3]], ids[[0, 2, 3]], 0.05)
    row0 = in_batch_softmax_loss(u, v, ids, 0.05)
    assert torch.isfinite(same_loss) and torch.isfinite(row0)


def train_history(users: np.ndarray, items: np.ndarray, length: int) -> np.ndarray:
    """History before each row of rows sorted by (user, time), as recstack.models.data builds it for train."""
    return history_before_each(pd.DataFrame({"user_id": users, "item_id": items,
                                             "timestamp": np.arange(len(users))}), length)


def test_histories():
    users = np.array([1, 1, 1, 2, 2])
    items = np.array([5, 6, 7, 8, 9])
    assert train_history(users, items, 2).tolist() == [[0, 0], [0, 5], [5, 6], [0, 0], [0, 8]]
    assert last_items(users, items, np.array([2, 1, 3]), 2).tolist() == [[8, 9], [6, 7], [0, 0]]


def synthetic_data(layout: FeatureLayout, seed: int = 0) -> TrainingData:
    """Users whose next item is the previous one + 1 (mod catalogue): learnable from the history."""
    rng = np.random.default_rng(seed)
    users_l, items_l = [], []
    for u in range(FIRST_CODE, N_USERS):
        start = int(rng.integers(FIRST_CODE, N_ITEMS))
        seq = [FIRST_CODE + (start - FIRST_CODE + t) % (N_ITEMS - FIRST_CODE) for t in range(12)]
        users_l += [u] * len(seq)
        items_l += seq
    users, items = np.array(users_l), np.array(items_l)
    ratings = np.full(len(users), 5.0, np.float32)
    last = np.r_[users[1:] != users[:-1], True]
    second = np.r_[last[1:], False]
    train = ~(last | second)
    tr = Interactions(users[train], items[train], ratings[train], train_history(users[train], items[train], L))
    hv = last_items(users[train], items[train], users[second], L)
    va = Interactions(users[second], items[second], ratings[second], hv)
    prior = ~last
    te = Interactions(users[last], items[last], ratings[last], last_items(users[prior], items[prior], users[last], L))
    user_f = {"user_cat": np.stack([np.arange(N_USERS), np.arange(N_USERS) % 4], 1).astype(np.int64),
              "user_cont": rng.normal(size=(N_USERS, 1)).astype(np.float32)}
    item_f = {"item_cat": np.stack([np.arange(N_ITEMS), np.arange(N_ITEMS) % 7], 1).astype(np.int64),
              "item_lists": rng.integers(0, 12, (N_ITEMS, 3)).astype(np.int64),
              "item_cont": rng.normal(size=(N_ITEMS, 1)).astype(np.float32)}
    return TrainingData(layout, user_f, item_f, tr, va, te)


def test_training_lowers_loss_and_save_load_onnx(layout, tmp_path):
    torch.set_num_threads(1)
    data = synthetic_data(layout)
    cfg = TwoTowerConfig(embedding_dim=16, output_dim=16, hidden=[32], uniform_negatives=16, dropout=0.0)
    tt, hist = fit_two_tower(data, cfg, epochs=6, batch_size=64, lr=5e-3, patience=10, progress=False)
    losses = [h["loss"] for h in hist["history"]]
    assert losses[-1] < losses[0]
    dl, dhist = fit_dlrm(data, DLRMConfig(embedding_dim=8, dense_hidden=[8], over_hidden=[16]), two_tower=tt,
                         epochs=3, batch_size=128, lr=5e-3, patience=10, progress=False)
    dlosses = [h["loss"] for h in dhist["history"]]
    assert dlosses[-1] < dlosses[0] and "valid_ndcg@10_rerank" in dhist["history"][0]

    tt_dir = save_two_tower(tt, tmp_path / "two_tower", data.item_features, {"valid": {}}, {})
    dl_dir = save_dlrm(dl, tmp_path / "dlrm", {"valid": {}}, {})
    for name in ("config.json", "model.pt", "user_tower.onnx", "item_tower.onnx", "item_embeddings.npy"):
        assert (tt_dir / name).exists()
    assert (dl_dir / "dlrm.onnx").exists()
    emb = np.load(tt_dir / "item_embeddings.npy")
    assert emb.shape == (N_ITEMS, 16) and emb.dtype == np.float32 and not emb[:FIRST_CODE].any()

    tt2, cfg2 = load_two_tower(tt_dir)
    dl2, _ = load_dlrm(dl_dir)
    assert cfg2["onnx"]["user_tower.onnx"]["max_abs_diff"] < 1e-4
    b = batch_of(layout, n=7, seed=9)
    assert [c.name for c in dl.layout.context] == ["hour", "weekday"]  # no device in the training data
    b["context"] = torch.from_numpy(random_inputs(dl.layout, ["context"], 7, seed=3)["context"])
    with torch.no_grad():
        assert torch.allclose(tt2(b)[0], tt.eval()(b)[0], atol=1e-6)
        assert torch.allclose(dl2(b), dl.eval()(b), atol=1e-6)

    import onnxruntime as ort
    feeds = random_inputs(layout, layout.user_blocks(), 11, seed=5, history_length=3)  # other batch + history length
    sess = ort.InferenceSession(str(tt_dir / "user_tower.onnx"))
    assert [i.name for i in sess.get_inputs()] == layout.user_blocks()
    got = sess.run(None, feeds)[0]
    with torch.no_grad():
        want = tt.user_embedding({k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
    assert np.abs(got - want).max() < 1e-4
    # dlrm.onnx is the serving form: user blocks [B, *], K candidates' item blocks [B, K, *] -> [B, K]
    feeds = random_inputs(dl.layout, dl.layout.user_blocks() + dl.layout.item_blocks(), 13, seed=6, candidates=5)
    assert "context" in feeds
    got = ort.InferenceSession(str(dl_dir / "dlrm.onnx")).run(None, feeds)[0]
    flat = {k: torch.from_numpy(v.reshape(65, -1) if k.startswith("item") else np.repeat(v, 5, axis=0))
            for k, v in feeds.items()}
    with torch.no_grad():
        want = dl(flat).numpy().reshape(13, 5)
    assert got.shape == (13, 5) and np.abs(got - want).max() < 1e-4


def test_load_rejects_missing_or_wrong_folder(tmp_path):
    with pytest.raises(InputError, match="missing"):
        load_two_tower(tmp_path / "nope")


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(InputError, match="expected auto, cpu or cuda, got 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="cuda"):
            resolve_device("cuda")


# ------------------------------------------------------------------------------ score fusion

def test_fuse_scores_applies_the_weights():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]], np.float32)
    retrieval = np.array([[0.1, 0.9, 0.5], [0.2, -np.inf, 0.3]], np.float32)
    fused = fuse_scores(logits, retrieval, {"dlrm_weight": 0.5, "retrieval_weight": 10.0})
    assert fused.dtype == np.float32 and fused.shape == (2, 3)
    assert np.allclose(fused[0], 0.5 * logits[0] + 10.0 * retrieval[0])
    assert fused[1, 0] == pytest.approx(2.0) and fused[1, 2] == pytest.approx(4.5)
    assert fused[1, 1] == -np.inf  # padding from the index stays out, whatever the weights
    assert fuse_scores(logits, retrieval.astype(np.float64), {"dlrm_weight": 1, "retrieval_weight": 1}).dtype == np.float64
    # retrieval_weight 0 (a DLRM folder from before fusion) = the DLRM logits, padding still -inf
    legacy = fuse_scores(logits, retrieval, {"dlrm_weight": 1.0, "retrieval_weight": 0.0})
    assert legacy[0].tolist() == logits[0].tolist() and legacy[1, 1] == -np.inf
    for bad in ({"dlrm_weight": 1.0}, {"dlrm_weight": -1.0, "retrieval_weight": 1.0},
                {"dlrm_weight": 0.0, "retrieval_weight": 0.0}, {"dlrm_weight": "x", "retrieval_weight": 1.0}):
        with pytest.raises(InputError, match="fusion"):
            fuse_scores(logits, retrieval, bad)
    with pytest.raises(InputError, match="shape"):
        fuse_scores(logits, retrieval[:, :2], {"dlrm_weight": 1.0, "retrieval_weight": 1.0})


def test_fusion_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, recstack.models.fusion; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_select_fusion_grid_excludes_zero():
    assert min(DLRM_WEIGHT_GRID) > 0
    seen = []
    fusion, trials = select_fusion(lambda f: seen.append(f) or -abs(f["dlrm_weight"] - 0.5), temperature=0.05)
    assert all(f["dlrm_weight"] > 0 and f["retrieval_weight"] == pytest.approx(20.0) for f in seen)
    assert fusion["dlrm_weight"] == 0.5 and fusion["selected_on"] == "valid" and len(trials) == len(DLRM_WEIGHT_GRID)
    # even when the ranker only hurts, the smallest positive weight is chosen, never 0
    fusion, _ = select_fusion(lambda f: -f["dlrm_weight"], temperature=0.1)
    assert fusion["dlrm_weight"] == min(DLRM_WEIGHT_GRID) > 0
    with pytest.raises(InputError, match="fusion grid: needs at least one dlrm_weight, all > 0"):
        select_fusion(lambda f: 0.0, temperature=0.1, grid=(0.0, 1.0))


def test_fusion_is_selected_on_valid_saved_and_read_back(layout, tmp_path):
    """train_dlrm's fusion step: weights chosen on valid candidates, stored in config.json, read back, applied."""
    torch.set_num_threads(1)
    data = synthetic_data(layout)
    tt, _ = fit_two_tower(data, TwoTowerConfig(embedding_dim=16, output_dim=16, hidden=[32], uniform_negatives=16,
                                               dropout=0.0), epochs=3, batch_size=64, lr=5e-3, progress=False)
    dl, hist = fit_dlrm(data, DLRMConfig(embedding_dim=8, dense_hidden=[8], over_hidden=[16]), two_tower=tt,
                        epochs=2, batch_size=128, lr=5e-3, progress=False, loss="softmax", negatives=4,
                        positive_min_rating=None)
    assert "valid_ndcg@10_fused" in hist["history"][0] and hist["selection_metric"] == "valid_ndcg@10_fused"
    fusion, trials = fusion_on_valid(dl, tt, data, candidates=20)
    assert fusion["selected_on"] == "valid" and fusion["dlrm_weight"] > 0
    assert fusion["retrieval_weight"] == pytest.approx(1 / tt.cfg.temperature)
    assert fusion["valid_ndcg@10"] == pytest.approx(max(t["valid_ndcg@10"] for t in trials))
    assert all(t["dlrm_weight"] > 0 for t in trials)

    save_dlrm(dl, tmp_path / "dlrm", {"valid": {}}, {}, onnx=False, fusion=fusion)
    stored = read_fusion(tmp_path / "dlrm")
    assert stored == fusion
    _, config = load_dlrm(tmp_path / "dlrm")
    assert config["fusion"]["dlrm_weight"] == fusion["dlrm_weight"]
    # applying the stored weights to the valid candidates reproduces the recorded NDCG@10
    cset = candidate_set(tt, data, split_view(data, "valid"), 20)
    logits = dlrm_scores(dl, data, cset.users, cset.history, cset.cands, cset.context)
    ndcg = candidate_ndcg(cset, fuse_scores(logits, cset.retrieval, stored).astype(np.float64))
    assert ndcg == pytest.approx(fusion["valid_ndcg@10"])
    # a folder written before fusion existed falls back to the DLRM score alone
    save_dlrm(dl, tmp_path / "old", {"valid": {}}, {}, onnx=False)
    assert read_fusion(tmp_path / "old")["retrieval_weight"] == 0.0


def test_candidate_ndcg_matches_full_catalogue_metric(layout):
    rng = np.random.default_rng(0)
    U, n_items, C = 30, 40, 12
    first = rng.normal(size=(U, n_items))
    first[:, :FIRST_CODE] = -np.inf
    targets = rng.integers(FIRST_CODE, n_items, U)
    cands = np.argsort(-first, axis=1)[:, :C]
    second = rng.normal(size=(U, C))
    second[0] = 0.0  # all tied: the target (if a candidate) ranks below the other C - 1
    cset = CandidateSet(np.arange(U), np.zeros((U, 1), np.int64), targets, cands,
                        np.take_along_axis(first, cands, axis=1))
    acc = RankingAccumulator(n_items, 10)
    acc.add(rerank(first, cands, second), targets)
    assert candidate_ndcg(cset, second) == pytest.approx(acc.result()["ndcg@10"])


def test_train_cli_passes_no_progress(tmp_path, monkeypatch, capsys):
    """`recstack train --no-progress` reaches train_all (whose tqdm bars it disables)."""
    import argparse
    import json

    from recstack.models import cli, recipe

    calls = []
    monkeypatch.setattr(recipe, "train_all", lambda paths, **kw: calls.append(kw) or {"dataset": paths.root.name})
    monkeypatch.setenv("RECSTACK_HOME", str(tmp_path))
    (tmp_path / "runs" / "tiny" / "data").mkdir(parents=True)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    for extra, want in (([], True), (["--no-progress"], False)):
        args = parser.parse_args(["train", "--dataset", "tiny", "--device", "cpu", "--json", *extra])
        assert args.handler(args) == 0
        assert calls[-1]["progress"] is want and calls[-1]["device"] == "cpu"
        assert json.loads(capsys.readouterr().out) == {"dataset": "tiny"}
    assert calls[-1]["embedding_dim"] is None and calls[-1]["max_train_rows"] is None
    args = parser.parse_args(["train", "--dataset", "tiny", "--json", "--embedding-dim", "128", "--max-train-rows",
                              "1000", "--valid-users", "50", "--hard-negatives", "0"])
    assert args.handler(args) == 0
    assert {k: calls[-1][k] for k in ("embedding_dim", "max_train_rows", "valid_users", "hard_negatives")} == \
        {"embedding_dim": 128, "max_train_rows": 1000, "valid_users": 50, "hard_negatives": 0}


def test_sample_rows_keeps_train_and_catalogue_whole(layout):
    """`--max-train-rows` / `--valid-users`: a sample to fit on (train itself untouched, so validation still
    excludes every train item) and a smaller validation split; the item tables are the same objects."""
    from recstack.models.recipe import sample_rows

    data = synthetic_data(layout)
    same, rows = sample_rows(data, None, None)
    assert same is data and rows is None
    sampled, rows = sample_rows(data, 30, 10, seed=1)
    assert len(rows) == 30 and len(sampled.valid) == 10 and sampled.train is data.train
    assert sampled.item_features is data.item_features and sampled.seen(("train",))[1].size == len(data.train)
    pairs = set(zip(data.train.users.tolist(), data.train.items.tolist()))
    assert set(zip(rows.users.tolist(), rows.items.tolist())) <= pairs
    assert np.all(np.diff(rows.users) >= 0)  # original (user, time) order kept
    assert set(sampled.valid.users.tolist()) <= set(data.valid.users.tolist())
    again, rows2 = sample_rows(data, 30, 10, seed=1)
    assert np.array_equal(rows.items, rows2.items) and np.array_equal(again.valid.users, sampled.valid.users)
    bigger, all_rows = sample_rows(data, 10**6, 10**6)
    assert all_rows is None and bigger.valid is data.valid


def test_train_all_embedding_dim_and_sampled_rows(layout, tmp_path, monkeypatch):
    """The large-catalogue options reach the saved models: d of the embeddings (the FAISS vectors),
    the fitted row count and the validation users, no hard negatives; bad values fail before any work."""
    import json

    from recstack.models import recipe
    from recstack.paths import RunPaths

    torch.set_num_threads(1)
    paths = RunPaths.for_dataset("tiny", home=tmp_path)
    monkeypatch.setattr(recipe, "load_training_data", lambda p: synthetic_data(layout))
    summary = recipe.train_all(paths, device="cpu", epochs=1, progress=False, embedding_dim=24, max_train_rows=50,
                               valid_users=12, hard_negatives=0, max_wall_s=None)
    assert summary["fit_rows"] == 50 and summary["valid_rows"] == 12 and summary["train_rows"] > 50
    assert np.load(paths.models / "two_tower" / "item_embeddings.npy").shape == (N_ITEMS, 24)
    tt = json.loads((paths.models / "two_tower" / "config.json").read_text())
    dl = json.loads((paths.models / "dlrm" / "config.json").read_text())
    assert tt["embedding_dim"] == 24 and tt["training"]["fit_rows"] == 50 and tt["training"]["valid_rows"] == 12
    assert dl["training"]["fit_rows"] == 50 and dl["training"]["hard_negatives"] == 0
    assert dl["training"]["valid_rows"] == 12
    for kwargs, match in (({"embedding_dim": 0}, "--embedding-dim"), ({"max_train_rows": -1}, "--max-train-rows"),
                          ({"valid_users": 0}, "--valid-users"), ({"hard_negatives": 17}, "--hard-negatives"),
                          ({"refit": True, "max_train_rows": 10}, "--refit")):
        with pytest.raises(InputError, match=match):
            recipe.train_all(paths, device="cpu", progress=False, **kwargs)


def test_score_batches_stay_under_the_memory_bound():
    """Full-catalogue scoring batches: unchanged for MovieLens-sized catalogues, a few dozen users at 1M items."""
    from recstack.ranking import SCORE_BATCH_BYTES, score_batch_rows

    assert score_batch_rows(1024, 3_706) == 1024
    assert score_batch_rows(1024, 1_000_000) == 33 and 33 * 1_000_000 * 8 <= SCORE_BATCH_BYTES
    assert score_batch_rows(1024, 10**12) == 1


def test_dlrm_reads_device_only_when_training_data_has_one(layout):
    """No device in the training interactions: the DLRM's context is hour + weekday. With devices in
    train, device joins the layout and a request's device code changes the score."""
    from recstack.models.dlrm_training import context_columns
    from recstack.workflows.request_context import context_codes

    data = synthetic_data(layout)
    assert context_columns(data) == ("hour", "weekday") and not data.has_device
    rng = np.random.default_rng(1)
    for split in (data.train, data.valid, data.test):
        split.context = context_codes(rng.integers(0, 2_000_000_000, len(split)),
                                      rng.choice(["ios", "web", None], len(split)))
    assert data.has_device and context_columns(data) == ("hour", "weekday", "device")
    model, _ = fit_dlrm(data, DLRMConfig(embedding_dim=8, dense_hidden=[8], over_hidden=[16]), epochs=1,
                        batch_size=128, patience=10, progress=False)
    assert [c.name for c in model.layout.context] == ["hour", "weekday", "device"]
    rows = np.arange(6)
    ios = context_codes(np.full(6, 1_700_000_000), ["ios"] * 6)
    web = context_codes(np.full(6, 1_700_000_000), ["web"] * 6)
    cands = np.tile(np.arange(FIRST_CODE, FIRST_CODE + 5), (6, 1))
    a = dlrm_scores(model, data, data.test.users[rows], data.test.history[rows], cands, ios)
    b = dlrm_scores(model, data, data.test.users[rows], data.test.history[rows], cands, web)
    assert not np.allclose(a, b)
