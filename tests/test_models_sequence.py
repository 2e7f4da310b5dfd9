"""The sequence user tower (recstack.models.sequence): causality, padding, windows, losses, id dropout, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_models import N_ITEMS, L, make_schema, synthetic_data
from torch.nn import functional as F

from recstack.ids import FIRST_CODE, OOV
from recstack.models.data import Interactions
from recstack.models.export import (
    load_two_tower,
    random_inputs,
    save_two_tower,
    user_tower_inputs,
)
from recstack.models.layout import FeatureLayout
from recstack.models.sequence import (
    TIME_GAP_BUCKETS,
    SequenceEncoder,
    full_softmax_loss,
    right_align,
    sampled_softmax_loss,
    time_gap_buckets,
)
from recstack.models.sequence_training import timed_training_windows, training_windows
from recstack.models.two_tower import (
    SEQUENCE_MIN_ROWS,
    TwoTower,
    TwoTowerConfig,
    drop_ids,
)
from recstack.models.two_tower_training import fit_two_tower

SMALL = {"user_encoder": "sasrec", "embedding_dim": 16, "output_dim": 16, "hidden": [32], "uniform_negatives": 16, "dropout": 0.0}


@pytest.fixture(scope="module")
def layout() -> FeatureLayout:
    return FeatureLayout.from_schema(make_schema(), history_length=L)


def test_right_align_moves_pads_left_and_keeps_order():
    h = torch.tensor([[0, 0, 3, 4], [5, 6, 0, 0], [0, 7, 0, 0], [0, 0, 0, 0], [1, 2, 3, 4]])
    assert right_align(h).tolist() == [[0, 0, 3, 4], [0, 0, 5, 6], [0, 0, 0, 7], [0, 0, 0, 0], [1, 2, 3, 4]]


def test_time_gap_buckets_on_hand_cases():
    """Log-scale buckets of the gap to the previous item: 0 = pad / first item, 1 = under a second,
    2 = [1 s, 10 s), 3 = [10 s, 1 min), 4 = [1 min, 10 min), 5 = [10 min, 1 h), 6 = [1 h, 1 day),
    7 = [1 day, 1 week), 8 = [1 week, 30 days), 9 = [30 days, 1 year), 10 = a year or more."""
    day = 86_400
    gaps = [0, 1, 9, 10, 59, 60, 599, 600, 3_599, 3_600, day - 1, day, 7 * day - 1, 7 * day, 30 * day - 1,
            30 * day, 365 * day - 1, 365 * day, 10 * 365 * day, -5]
    times = torch.tensor([[1_000_000_000] + gaps]).cumsum(1)
    history = torch.full_like(times, 5)
    got = time_gap_buckets(history, times)[0].tolist()
    assert got == [0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 1]
    assert max(got) == TIME_GAP_BUCKETS - 1
    # a pad or a pad's successor has no known gap
    h = torch.tensor([[0, 0, 7, 8, 9]])
    t = torch.tensor([[0, 0, 100, 200, 200]])
    assert time_gap_buckets(h, t).tolist() == [[0, 0, 0, 4, 1]]  # 100 s: [1 min, 10 min)


def test_right_align_moves_the_times_with_the_items():
    h = torch.tensor([[5, 6, 0, 0], [0, 7, 0, 8]])
    t = torch.tensor([[50, 60, 0, 0], [0, 70, 0, 80]])
    items, times = right_align(h, t)
    assert items.tolist() == [[0, 0, 5, 6], [0, 0, 7, 8]] and times.tolist() == [[0, 0, 50, 60], [0, 0, 70, 80]]


def _increasing_times(rows: int, length: int, seed: int) -> torch.Tensor:
    """Unix seconds with log-uniform gaps from a second to years: every bucket occurs."""
    rng = np.random.default_rng(seed)
    gaps = np.exp(rng.uniform(0.0, np.log(3e8), (rows, length))).astype(np.int64)
    return torch.from_numpy(1_000_000_000 + gaps.cumsum(1))


@pytest.mark.parametrize("t", [0, 3, 7])
def test_encoder_with_time_gaps_is_causal(t):
    """With time gaps: changing the time (and so the gap bucket) of position t changes no output before
    t and changes the output at t; the item change of the test below too."""
    torch.manual_seed(0)
    table = torch.nn.Embedding(N_ITEMS, 16)
    enc = SequenceEncoder(table, max_positions=L, blocks=2, heads=2, dropout=0.2, time_gaps=True).eval()
    torch.nn.init.normal_(enc.gap_table.weight)  # a trained table: the zero start reads no gap
    hist = torch.randint(FIRST_CODE, N_ITEMS, (4, L))
    hist[1, :3] = 0
    times = _increasing_times(4, L, seed=t)
    later = times.clone()
    later[:, t:] += 400 * 86_400  # position t's gap grows by more than a year: another bucket
    changed = hist.clone()
    changed[:, t] = FIRST_CODE + (hist[:, t] - FIRST_CODE + 1) % (N_ITEMS - FIRST_CODE)
    with torch.no_grad():
        a, b, c = enc(hist, times), enc(hist, later), enc(changed, times)
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-6) and torch.allclose(a[:, :t], c[:, :t], atol=1e-6)
    # the time of position t enters through the gap to t - 1 (none for a row's first item)
    rows = [r for r in range(4) if hist[r, t] > 0 and t > 0 and hist[r, t - 1] > 0]
    assert all(not torch.allclose(a[r, t], b[r, t], atol=1e-4) for r in rows)
    assert all(not torch.allclose(a[r, t], c[r, t], atol=1e-4) for r in range(4) if hist[r, t] > 0)
    with pytest.raises(ValueError, match="times"):
        enc(hist)


@pytest.mark.parametrize("t", [0, 3, 7])
def test_encoder_is_causal(t):
    """Changing the item at position t changes no output before t, and does change the output at t."""
    torch.manual_seed(0)
    table = torch.nn.Embedding(N_ITEMS, 16)
    enc = SequenceEncoder(table, max_positions=L, blocks=2, heads=2, dropout=0.2).eval()
    hist = torch.randint(FIRST_CODE, N_ITEMS, (4, L))
    hist[1, :3] = 0  # a shorter, left-padded row: t beyond its pads
    changed = hist.clone()
    changed[:, t] = FIRST_CODE + (hist[:, t] - FIRST_CODE + 1) % (N_ITEMS - FIRST_CODE)
    with torch.no_grad():
        a, b = enc(hist), enc(changed)
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-6)
    rows = [r for r in range(4) if hist[r, t] > 0]
    assert all(not torch.allclose(a[r, t], b[r, t], atol=1e-4) for r in rows)


def test_encoder_ignores_padding_side_and_empty_history_is_finite():
    table = torch.nn.Embedding(N_ITEMS, 8)
    enc = SequenceEncoder(table, max_positions=4, blocks=1, heads=1, dropout=0.0).eval()
    left = torch.tensor([[5, 6, 7, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    right = torch.tensor([[0, 0, 0, 5, 6, 7], [0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        assert torch.allclose(enc.last(left), enc.last(right), atol=1e-6)
        out = enc(right)
    assert torch.isfinite(out).all() and not out[1].any() and not out[0, :3].any()  # pads output zeros


def test_training_windows_cover_every_item_but_the_first_once():
    users = np.array([2, 2, 2, 2, 2, 2, 3, 3, 4])
    items = np.array([10, 11, 12, 13, 14, 15, 20, 21, 30])
    rows = Interactions(users, items, np.zeros(9, np.float32), np.zeros((9, 3), np.int64))
    u, x, y = training_windows(rows, 3)
    assert u.tolist() == [2, 2, 3]
    assert x.tolist() == [[12, 13, 14], [0, 10, 11], [0, 0, 20]]
    assert y.tolist() == [[13, 14, 15], [0, 11, 12], [0, 0, 21]]
    # user 4 has one item: no target
    times = np.array([100, 110, 120, 130, 140, 150, 200, 210, 300])
    rows = Interactions(users, items, np.zeros(9, np.float32), np.zeros((9, 3), np.int64), times=times)
    u2, x2, tx, y2 = timed_training_windows(rows, 3)
    assert u2.tolist() == u.tolist() and x2.tolist() == x.tolist() and y2.tolist() == y.tolist()
    assert tx.tolist() == [[120, 130, 140], [0, 100, 110], [0, 0, 200]]  # each input item's own time


def test_sampled_softmax_equals_full_softmax_over_the_whole_catalogue():
    torch.manual_seed(1)
    user = F.normalize(torch.randn(6, 8), dim=1)
    items = F.normalize(torch.randn(N_ITEMS, 8), dim=1)
    targets = torch.randint(FIRST_CODE, N_ITEMS, (6,))
    ids = torch.arange(FIRST_CODE, N_ITEMS)
    full = full_softmax_loss(user, items, targets, 0.1)
    sampled = sampled_softmax_loss(user, targets, items[ids], ids, torch.zeros(len(ids)), 0.1)
    assert torch.allclose(full, sampled, atol=1e-5)
    # logQ: an item sampled more often gets a lower logit
    log_q = torch.zeros(len(ids))
    log_q[targets[0] - FIRST_CODE] = -5.0  # the first target rarely drawn: its logit rises, its loss falls
    assert sampled_softmax_loss(user[:1], targets[:1], items[ids], ids, log_q, 0.1) < \
        sampled_softmax_loss(user[:1], targets[:1], items[ids], ids, torch.zeros(len(ids)), 0.1)


def test_drop_ids_rate_and_pads():
    torch.manual_seed(2)
    cat = torch.stack([torch.randint(FIRST_CODE, 100, (20000,)), torch.randint(0, 5, (20000,))], 1)
    cat[:100, 0] = 0
    out = drop_ids(cat, 0.1)
    dropped = out[:, 0] == OOV
    assert 0.09 < dropped.float().mean() < 0.11 and (out[:100, 0] == 0).all()
    assert torch.equal(out[:, 1], cat[:, 1]) and torch.equal(out[~dropped, 0], cat[~dropped, 0])
    assert torch.equal(drop_ids(cat, 0.0), cat)


def test_config_switches():
    with pytest.raises(ValueError, match="user_encoder"):
        TwoTowerConfig(user_encoder="rnn")
    with pytest.raises(ValueError, match="softmax"):
        TwoTowerConfig(softmax="maybe")
    assert TwoTowerConfig.from_dict({"embedding_dim": 8}).user_encoder == "pool"  # saved before the encoder
    old = TwoTowerConfig.from_dict({"user_encoder": "sasrec"})  # saved before the time-gap input
    assert not old.time_gaps and not old.reads_history_times
    assert TwoTowerConfig(user_encoder="sasrec").reads_history_times  # on by default for the sequence tower
    assert not TwoTowerConfig(user_encoder="pool").reads_history_times
    assert TwoTowerConfig(softmax="auto", full_softmax_max_items=100).use_full_softmax(100)
    assert not TwoTowerConfig(softmax="auto", full_softmax_max_items=100).use_full_softmax(101)
    assert not TwoTowerConfig(softmax="sampled").use_full_softmax(10)
    # "auto": the pool for a small dataset, the sequence encoder for a large one; a model needs it resolved
    assert TwoTowerConfig().resolved(SEQUENCE_MIN_ROWS - 1).user_encoder == "pool"
    assert TwoTowerConfig().resolved(SEQUENCE_MIN_ROWS).user_encoder == "sasrec"
    assert TwoTowerConfig(user_encoder="pool").resolved(10**9).user_encoder == "pool"
    with pytest.raises(ValueError, match="resolve"):
        TwoTower(FeatureLayout.from_schema(make_schema(), history_length=L), TwoTowerConfig())


@pytest.fixture(scope="module")
def trained(layout):
    """A sequence two-tower trained on users whose next item is the previous one + 1."""
    torch.set_num_threads(1)
    data = synthetic_data(layout)
    cfg = TwoTowerConfig(**SMALL, sequence_batch_size=8, sequence_lr=5e-3, id_dropout=0.3,
                         sequence_dropout=0.1)
    model, hist = fit_two_tower(data, cfg, epochs=40, progress=False, patience=40)
    return data, model, hist


def test_sequence_training_learns_the_next_item(trained):
    hist = trained[2]
    losses = [h["loss"] for h in hist["history"]]
    assert hist["softmax"] == "full" and losses[-1] < 0.5 * losses[0]
    assert max(h["valid_hr@10"] for h in hist["history"]) > 0.8  # a pooled history cannot read "last + 1"


def test_oov_user_with_a_history_gets_a_history_dependent_embedding(trained):
    """Id dropout trained the OOV row: a new user is represented by its history (next = last + 1)."""
    data, model, _ = trained
    n_cat = N_ITEMS - FIRST_CODE
    lasts = np.arange(FIRST_CODE + 5, N_ITEMS)
    hist = np.stack([[FIRST_CODE + (x - FIRST_CODE - k) % n_cat for k in range(4, -1, -1)] for x in lasts])
    hist = np.concatenate([np.zeros((len(lasts), L - 5), np.int64), hist], 1)
    users = np.full(len(lasts), OOV)
    blocks = {k: torch.from_numpy(v) for k, v in data.batch(users, hist, history_times=np.zeros_like(hist)).items()}
    with torch.no_grad():
        u = model.user_embedding(blocks)
        items = model.item_embedding({k: torch.from_numpy(v) for k, v in data.item_features.items()})
    assert torch.isfinite(u).all()
    assert torch.cdist(u, u).max() > 0.5  # not one vector for every new user
    scores = u @ items[FIRST_CODE:].T
    top = scores.argmax(1).numpy() + FIRST_CODE
    want = FIRST_CODE + (lasts - FIRST_CODE + 1) % n_cat
    assert (top == want).mean() > 0.6


def test_sampled_softmax_training_lowers_the_loss(layout):
    torch.set_num_threads(1)
    data = synthetic_data(layout)
    cfg = TwoTowerConfig(**SMALL, softmax="sampled", sequence_batch_size=8, sequence_lr=5e-3)
    _, hist = fit_two_tower(data, cfg, epochs=6, progress=False, select=False)
    losses = [h["loss"] for h in hist["history"]]
    assert hist["softmax"] == "sampled" and losses[-1] < losses[0]


@pytest.mark.parametrize("encoder", ["sasrec", "sasrec+mean", "sasrec+notime", "pool"])
def test_user_tower_onnx_equals_torch(layout, tmp_path, encoder):
    """The exported user tower (either encoder; the sequence one with and without the ``history_times``
    input) gives the in-process embedding, any batch / history length / padding side, and the saved model
    reloads to the same scores."""
    torch.manual_seed(3)
    cfg = TwoTowerConfig(**{**SMALL, "user_encoder": encoder.split("+")[0]}, sequence_mean=encoder.endswith("mean"),
                         time_gaps=not encoder.endswith("notime"))
    model = TwoTower(layout, cfg).eval()
    if cfg.reads_history_times:
        torch.nn.init.normal_(model.user_tower.encoder.gap_table.weight)  # as if trained: gaps move the output
    data = synthetic_data(layout)
    out = save_two_tower(model, tmp_path / encoder, data.item_features, {"valid": {}}, {})
    reloaded, config = load_two_tower(out)
    assert config["hyperparameters"]["user_encoder"] == cfg.user_encoder
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "user_tower.onnx"), providers=["CPUExecutionProvider"])
    names = user_tower_inputs(model)
    assert [i.name for i in sess.get_inputs()] == names
    assert ("history_times" in names) == cfg.reads_history_times
    for seed, size, length in ((4, 1, L), (5, 9, 3), (6, 4, 2 * L)):
        feeds = random_inputs(layout, names, size, seed=seed, history_length=length)
        got = sess.run(None, feeds)[0]
        with torch.no_grad():
            blocks = {k: torch.from_numpy(v) for k, v in feeds.items()}
            want = model.user_embedding(blocks).numpy()
            again = reloaded.user_embedding(blocks).numpy()
        assert np.abs(got - want).max() < 1e-4 and np.abs(again - want).max() < 1e-6


@pytest.mark.parametrize("with_mean", [False, True])
@pytest.mark.parametrize("time_gaps", [False, True])
def test_training_positions_match_the_served_embedding(layout, with_mean, time_gaps):
    """Position t of every_position (what training scores) is the user tower's output for history[:t + 1]
    (with time gaps: and the times of those items, left- or right-padded as serving pads them)."""
    torch.manual_seed(4)
    model = TwoTower(layout, TwoTowerConfig(**SMALL, sequence_mean=with_mean, time_gaps=time_gaps)).eval()
    if time_gaps:
        torch.nn.init.normal_(model.user_tower.encoder.gap_table.weight)
    feeds = {k: torch.from_numpy(v) for k, v in random_inputs(layout, layout.user_blocks(), 3, seed=2).items()}
    hist = torch.randint(FIRST_CODE, N_ITEMS, (3, L))
    times = _increasing_times(3, L, seed=5) if time_gaps else None
    with torch.no_grad():
        every = model.user_tower.every_position(feeds["user_cat"], None, feeds["user_cont"], hist, times)
        for t in (0, L // 2, L - 1):
            pad = torch.zeros(3, L - t - 1, dtype=torch.int64)
            prefix = torch.cat([pad, hist[:, :t + 1]], 1)
            prefix_times = torch.cat([pad, times[:, :t + 1]], 1) if time_gaps else None
            served = model.user_tower(feeds["user_cat"], None, feeds["user_cont"], prefix, prefix_times)
            assert torch.allclose(every[:, t], served, atol=1e-5)
            if time_gaps:  # serving pads on the right (pad_lists); the tower right-aligns items and times
                left = torch.cat([hist[:, :t + 1], pad], 1), torch.cat([times[:, :t + 1], pad], 1)
                assert torch.allclose(every[:, t], model.user_tower(feeds["user_cat"], None, feeds["user_cont"],
                                                                    *left), atol=1e-5)


@pytest.mark.parametrize("encoder", ["sasrec", "sasrec+mean"])
def test_served_user_tower_trims_all_padding_columns_without_changing_the_embedding(layout, tmp_path, encoder):
    """EmbedUser drops history columns that are padding in every row (the sequence tower's cost is
    quadratic in them), with their times: the embedding is the one of the untrimmed history, whichever
    side the pads sit (time gaps on: the tower's default)."""
    from recstack.ensembles.steps import EmbedUser, used_history_columns
    from recstack.models.layout import HISTORY_TIMES

    torch.manual_seed(5)
    cfg = TwoTowerConfig(**{**SMALL, "user_encoder": "sasrec"}, sequence_mean=encoder.endswith("mean"))
    data = synthetic_data(layout)
    out = save_two_tower(TwoTower(layout, cfg).eval(), tmp_path / encoder, data.item_features, {"valid": {}}, {})
    step = EmbedUser(str(out))
    assert step.trim_history and HISTORY_TIMES in step.input_names
    feeds = random_inputs(layout, layout.user_blocks(), 6, seed=7, history_length=L)
    rng = np.random.default_rng(8)
    short = np.where(rng.random((6, 3)) < 0.2, 0, rng.integers(FIRST_CODE, N_ITEMS, (6, 3)))
    short[0] = [0, 0, 0]  # one user without history
    short_times = np.where(short > 0, 10**9 + np.cumsum(rng.integers(0, 10**6, (6, 3)), axis=1), 0)
    for left, right in ((5, 0), (0, 4), (2, 7)):
        padded = {"history": np.pad(short, [(0, 0), (left, right)]),
                  HISTORY_TIMES: np.pad(short_times, [(0, 0), (left, right)])}
        cols = used_history_columns(padded["history"])
        assert (cols.start, cols.stop) == (left, left + 3)
        trimmed = step.execute({**feeds, **padded})["user_embedding"]
        (full,) = step.session.run(["user_embedding"], {**feeds, **padded})
        assert np.abs(trimmed - full).max() < 1e-5
    assert used_history_columns(np.zeros((2, 5), np.int64)) == slice(0, 1)
