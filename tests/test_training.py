"""Training settings and the training loop: the config file (`recstack train --config`), epoch budgets with
a reported wall-clock safety stop, NaN / inf losses, checkpoints that reload to identical scores, seeds,
and DistributedDataParallel under torchrun (2 CPU processes, gloo) against one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_models import L, make_schema, synthetic_data

from recstack.errors import InputError
from recstack.models import two_tower_training
from recstack.models.dlrm import DLRMConfig
from recstack.models.dlrm_training import fit_dlrm
from recstack.models.export import load_dlrm, load_two_tower
from recstack.models.layout import FeatureLayout
from recstack.models.train_config import (
    TrainConfig,
    load_train_config,
    parse_train_config,
)
from recstack.models.two_tower import TwoTowerConfig
from recstack.models.two_tower_training import fit_two_tower

ROOT = Path(__file__).resolve().parents[1]
TT_CFG = TwoTowerConfig(embedding_dim=16, output_dim=16, hidden=[32], uniform_negatives=16, dropout=0.0)
DL_CFG = DLRMConfig(embedding_dim=8, dense_hidden=[8], over_hidden=[16])


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    return synthetic_data(FeatureLayout.from_schema(make_schema(), history_length=L))


# ------------------------------------------------------------------------------ the config file

def test_defaults_and_committed_configs_parse():
    assert parse_train_config({}) == TrainConfig() == parse_train_config(None)
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert files, "configs/ holds the example experiment files README documents"
    for path in files:
        cfg = load_train_config(path)
        assert (cfg.two_tower.epochs is None or cfg.two_tower.epochs >= 1) and cfg.dlrm.epochs >= 1
    cfg = parse_train_config({"seed": 3, "two_tower": {"epochs": 5, "model": {"hidden": [64, 32], "dropout": 0.2}},
                              "dlrm": {"loss": "bce", "positive_min_rating": 4}, "compile": True, "max_wall_s": None})
    assert cfg.seed == 3 and cfg.two_tower.epochs == 5 and cfg.two_tower.model.hidden == [64, 32]
    assert cfg.two_tower.model.output_dim == 64 and cfg.dlrm.loss == "bce" and cfg.dlrm.positive_min_rating == 4.0
    assert cfg.compile is True and cfg.max_wall_s is None and cfg.dlrm.epochs == TrainConfig().dlrm.epochs


@pytest.mark.parametrize("raw, match", [
    ({"epochs": 3}, "^epochs: unknown key"),
    ({"two_tower": {"lr_decay": 0.1}}, "^two_tower.lr_decay: unknown key"),
    ({"two_tower": {"model": {"hiden": [8]}}}, "^two_tower.model.hiden: unknown key"),
    ({"two_tower": {"epochs": 0}}, "^two_tower.epochs: expected an integer >= 1, got 0"),
    ({"two_tower": {"epochs": 2.5}}, "^two_tower.epochs: expected an integer"),
    ({"two_tower": {"lr": -1e-3}}, "^two_tower.lr: expected a number > 0"),
    ({"two_tower": {"lr": "fast"}}, "^two_tower.lr: expected a finite number"),
    ({"two_tower": {"lr": float("nan")}}, "^two_tower.lr: expected a finite number"),
    ({"two_tower": {"model": {"dropout": 1.5}}}, r"^two_tower.model.dropout: expected a number in \[0, 1\)"),
    ({"two_tower": {"model": {"hidden": [0]}}}, "^two_tower.model.hidden: expected a list of integers >= 1"),
    ({"two_tower": {"model": {"temperature": 0}}}, "^two_tower.model.temperature: expected a number > 0"),
    ({"dlrm": {"loss": "hinge"}}, "^dlrm.loss: expected one of bce, softmax"),
    ({"dlrm": {"hard_negatives": 20}}, r"^dlrm.hard_negatives: expected at most dlrm.negatives \(16\)"),
    ({"device": "tpu"}, "^device: expected one of auto, cpu, cuda"),
    ({"compile": 1}, "^compile: expected one of auto, true, false"),
    ({"precision": "fp16"}, "^precision: expected one of auto, fp32, bf16"),
    ({"onnx": "yes"}, "^onnx: expected true or false"),
    ({"max_wall_s": 0}, "^max_wall_s: expected a number > 0"),
    ({"two_tower": [1, 2]}, "^two_tower: expected a mapping"),
    ({"refit": True, "max_train_rows": 10}, "^refit:"),
])
def test_config_rejects_unknown_keys_and_impossible_values(raw, match):
    with pytest.raises(InputError, match=match):
        parse_train_config(raw)


def test_train_cli_rejects_a_bad_config_before_training(tmp_path, monkeypatch, capsys):
    """`recstack train --config FILE`: a bad file is one line naming the key, exit 2, no training;
    a good one (YAML or JSON) reaches train_all, the command-line options overriding its keys."""
    from recstack.cli import main
    from recstack.models import recipe

    calls = []
    monkeypatch.setattr(recipe, "train_all", lambda paths, **kw: calls.append(kw) or {"dataset": paths.root.name})
    monkeypatch.setenv("RECSTACK_HOME", str(tmp_path))
    (tmp_path / "runs" / "tiny" / "data").mkdir(parents=True)
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\ndlrm:\n  negatives: 16\n  hard_negatives: 8\n  hard_pol: 100\n")
    assert main(["train", "--dataset", "tiny", "--config", str(bad), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "dlrm.hard_pol: unknown key" in err and str(bad) in err and not calls
    for text, name in (("{not yaml: [", "broken.yaml"), ('{"seed": ', "broken.json")):
        (tmp_path / name).write_text(text)
        assert main(["train", "--dataset", "tiny", "--config", str(tmp_path / name)]) == 2
        assert "not valid" in capsys.readouterr().err and not calls
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"seed": 4, "two_tower": {"epochs": 7}}))
    assert main(["train", "--dataset", "tiny", "--config", str(good), "--json", "--seed", "9"]) == 0
    assert calls[-1]["config"].two_tower.epochs == 7 and calls[-1]["config"].seed == 4 and calls[-1]["seed"] == 9


# ------------------------------------------------------------------------------ the training loop

def test_same_seed_same_training(data):
    losses = [[h["loss"] for h in fit_two_tower(data, TT_CFG, epochs=2, batch_size=64, seed=s, select=False,
                                                progress=False)[1]["history"]] for s in (5, 5, 6)]
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_epochs_and_safety_stop_are_reported(data):
    """Training runs its epochs (or stops early on valid); the wall-clock limit is a safety stop, reported."""
    _, hist = fit_two_tower(data, TT_CFG, epochs=2, batch_size=64, select=False, progress=False)
    assert hist["stop_reason"] == "max_epochs" and hist["epochs_run"] == 2
    _, hist = fit_two_tower(data, TT_CFG, epochs=3, batch_size=64, max_wall_s=1e-9, progress=False)
    assert hist["stop_reason"] == "wall_clock_limit" and hist["epochs_run"] == 1 and hist["max_wall_s"] == 1e-9
    _, hist = fit_dlrm(data, DL_CFG, epochs=30, batch_size=100, lr=5e-3, patience=1, progress=False)
    assert hist["stop_reason"] == "early_stopping" and hist["epochs_run"] < 30


def test_checkpoint_reloads_to_identical_scores(data, tmp_path):
    """The checkpoint written after the last epoch (state dicts + JSON) loads as a model folder and scores
    exactly as the trained model does; the optimiser state loads with weights_only=True."""
    tt, hist = fit_two_tower(data, TT_CFG, epochs=2, batch_size=64, select=False, progress=False,
                             checkpoint_dir=tmp_path / "two_tower")
    dl, _ = fit_dlrm(data, DL_CFG, two_tower=tt, epochs=2, batch_size=100, select=False, progress=False,
                     checkpoint_dir=tmp_path / "dlrm")
    tt2, cfg = load_two_tower(tmp_path / "two_tower")
    dl2, _ = load_dlrm(tmp_path / "dlrm")
    assert cfg["checkpoint"]["epoch"] == 2 and cfg["checkpoint"]["loss"] == hist["history"][-1]["loss"]
    from recstack.models.export import random_inputs

    names = dl.layout.user_blocks() + dl.layout.item_blocks()
    batch = {k: torch.from_numpy(v) for k, v in random_inputs(dl.layout, names, 32, seed=4).items()}
    with torch.no_grad():
        for a, b in zip(tt.eval()(batch), tt2(batch)):
            assert torch.equal(a, b)
        assert torch.equal(dl.eval()(batch), dl2(batch))
    opt_state = torch.load(tmp_path / "dlrm" / "optimizer.pt", weights_only=True)
    assert opt_state["state"] and "param_groups" in opt_state


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    """A NaN loss in epoch 2 stops training before the weights change: the model is epoch 1's, finite,
    equal to the checkpoint on disk, and the summary says where it stopped."""
    real = two_tower_training.in_batch_softmax_loss
    steps_per_epoch = -(-len(data.train) // 64)
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == steps_per_epoch + 3 else loss

    monkeypatch.setattr(two_tower_training, "in_batch_softmax_loss", poisoned)
    tt, hist = fit_two_tower(data, TT_CFG, epochs=4, batch_size=64, select=False, progress=False,
                             checkpoint_dir=tmp_path / "ckpt")
    assert hist["stop_reason"] == "non_finite_loss" and hist["epochs_run"] == 1 and hist["best_epoch"] == 1
    assert hist["non_finite_loss"] == {"epoch": 2, "step": steps_per_epoch + 3, "loss": "nan"}
    assert all(torch.isfinite(p).all() for p in tt.parameters())
    saved, cfg = load_two_tower(tmp_path / "ckpt")
    assert cfg["checkpoint"]["epoch"] == 1
    for (name, a), b in zip(tt.state_dict().items(), saved.state_dict().values()):
        assert torch.equal(a, b), name


def test_train_all_reports_a_non_finite_stop_from_a_config_value(data, tmp_path, monkeypatch):
    """A huge learning rate in the config file: the two-tower's loss turns NaN, training stops, the
    summary (and train.json) say so, the saved model is finite and the DLRM still trains."""
    from recstack.models import recipe
    from recstack.paths import RunPaths

    monkeypatch.setattr(recipe, "load_training_data", lambda p: data)
    paths = RunPaths.for_dataset("tiny", home=tmp_path)
    cfg = parse_train_config({"device": "cpu", "onnx": False, "context_ablation": False, "threads": 1,
                              "two_tower": {"epochs": 2, "lr": 1e30, "model": {"embedding_dim": 8, "output_dim": 8,
                                                                              "hidden": [16]}},
                              "dlrm": {"epochs": 1, "hard_negatives": 0, "model": {"embedding_dim": 8}}})
    summary = recipe.train_all(paths, config=cfg, progress=False)
    assert summary["non_finite_stops"] == ["two_tower"] and summary["safety_stops"] == []
    assert summary["two_tower"]["stop_reason"] == "non_finite_loss" and summary["dlrm"]["stop_reason"] == "max_epochs"
    saved = json.loads((paths.root / "train.json").read_text())
    assert saved["config"]["two_tower"]["lr"] == 1e30 and saved["non_finite_stops"] == ["two_tower"]
    tt, _ = load_two_tower(paths.models / "two_tower")
    assert all(torch.isfinite(p).all() for p in tt.parameters())
    assert (paths.root / "checkpoints" / "dlrm" / "model.pt").exists()


# ------------------------------------------------------------------------------ DDP under torchrun

def test_ddp_two_cpu_processes_match_one(tmp_path):
    """torchrun --nproc-per-node 2 (gloo): the same global batches give the same per-epoch losses and
    the same weights as one process (Adam's update of a near-zero gradient may flip on rounding)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun ships with torch"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "ddp_fit.py"), str(one)], env=env,
                              stderr=subprocess.PIPE, text=True),
             subprocess.Popen([torchrun, "--nproc-per-node", "2", "--standalone", str(ROOT / "tests" / "ddp_fit.py"),
                               str(two)], env=env, stderr=subprocess.PIPE, text=True)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world"], b["world"]) == (1, 2)
    for key in ("two_tower_loss", "dlrm_loss"):
        assert np.allclose(a[key], b[key], rtol=1e-5), (key, a[key], b[key])
    for model in ("two_tower", "dlrm"):
        diff = np.concatenate([np.abs(np.array(a[model][k]) - np.array(b[model][k])) for k in a[model]])
        assert diff.max() < 1e-2 and np.mean(diff < 1e-4) > 0.99, (model, diff.max())


def test_gpu_switches_resolve_and_bf16_autocast_trains(data):
    """precision / compile: auto is off on CPU; bf16 autocast, when asked for, really runs the forward in
    bf16 (other losses than fp32) and trains to a finite loss."""
    from recstack.models.loop import AUTO_ON_CUDA, StepOptions, resolve_step_options

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_step_options("auto", "auto", cpu) == StepOptions(False, False)
    assert resolve_step_options("auto", "auto", cuda) == StepOptions(AUTO_ON_CUDA["bf16"], AUTO_ON_CUDA["compile"])
    assert resolve_step_options("bf16", True, cpu) == StepOptions(True, True)
    assert resolve_step_options("fp32", False, cuda) == StepOptions(False, False)
    _, fp32 = fit_two_tower(data, TT_CFG, epochs=1, batch_size=64, select=False, progress=False)
    _, bf16 = fit_two_tower(data, TT_CFG, epochs=1, batch_size=64, select=False, progress=False,
                            step_options=StepOptions(bf16=True))
    loss32, loss16 = fp32["history"][0]["loss"], bf16["history"][0]["loss"]
    assert np.isfinite(loss16) and loss16 != loss32 and abs(loss16 - loss32) < 0.1 * loss32


def test_seed_table_statistics():
    """benchmarks/seeds.py: mean and sample standard deviation per row and metric, rows every seed has."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import seeds

    def run(seed, hr, nd, wall):
        return {"seed": seed, "evaluation": {"two_tower": {"hr@10": hr, "ndcg@10": nd}, "extra": {"hr@10": 1.0}},
                "train": {"wall_s": wall, "device": "cpu",
                          **{m: {"wall_s": wall / 2, "epochs_run": 2, "stop_reason": "max_epochs"}
                             for m in ("two_tower", "dlrm")}}}
    runs = [run(0, 0.30, 0.16, 10.0), run(1, 0.32, 0.18, 14.0), run(2, 0.34, 0.17, 12.0)]
    del runs[2]["evaluation"]["extra"]
    summary = seeds.summarise(runs)
    assert list(summary["rows"]) == ["two_tower"]
    hr = summary["rows"]["two_tower"]["hr@10"]
    assert hr["mean"] == pytest.approx(0.32) and hr["std"] == pytest.approx(0.02) and hr["values"] == [0.30, 0.32, 0.34]
    assert summary["rows"]["two_tower"]["ndcg@10"]["std"] == pytest.approx(0.01)
    assert summary["times"]["train_wall_s"]["mean"] == pytest.approx(12.0)
    text = seeds.markdown("tiny", [0, 1, 2], summary, runs)
    assert "| two_tower | 0.3200 ± 0.0200 | 0.1700 ± 0.0100 | 0.3000 / 0.3200 / 0.3400 |" in text


def test_seeds_reuse_saved_results_of_the_same_settings(tmp_path, monkeypatch, capsys):
    """benchmarks/seeds.py trains a seed once per settings: a later call with more seeds trains only the
    new one and tables all of them; other --epochs or --retrain train again. (Training and evaluation are
    replaced by stand-ins that record their calls; the real ones are the tests above and tests/test_evaluation.)"""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import seeds
    from recstack.evaluation import evaluate
    from recstack.models import recipe

    trained: list[tuple[int, int | None]] = []

    def train_all(paths, config, seed, epochs, progress):
        trained.append((seed, epochs))
        return {"wall_s": 1.0 + seed, "device": "cpu",
                **{m: {"wall_s": 0.5, "epochs_run": 1, "stop_reason": "max_epochs"} for m in ("two_tower", "dlrm")}}

    def evaluate_run(paths, device, progress):
        seed = int(paths.root.parents[1].name.removeprefix("seed"))
        return {"models": {"served": {"hr@10": 0.30 + seed / 100, "ndcg@10": 0.17, "note": "text"}}}

    monkeypatch.setattr(recipe, "train_all", train_all)
    monkeypatch.setattr(evaluate, "evaluate_run", evaluate_run)
    monkeypatch.setenv("RECSTACK_HOME", str(tmp_path))
    for name in ("data", "workflow", "features"):
        (tmp_path / "runs" / "tiny" / name).mkdir(parents=True)
    out = tmp_path / "tables"
    common = ["--dataset", "tiny", "--out", str(out)]

    assert seeds.main(common + ["--seeds", "0,1"]) == 0
    assert trained == [(0, None), (1, None)]
    assert seeds.main(common + ["--seeds", "0,1,2"]) == 0
    assert trained[2:] == [(2, None)]
    table = (out / "seeds.md").read_text()
    assert "| served | 0.3100 ± 0.0100 | 0.1700 ± 0.0000 | 0.3000 / 0.3100 / 0.3200 |" in table
    assert json.loads((out / "seeds.json").read_text())["seeds"] == [0, 1, 2]
    assert "reused" in capsys.readouterr().out
    assert seeds.main(common + ["--seeds", "0", "--epochs", "3"]) == 0
    assert trained[3:] == [(0, 3)]
    assert seeds.main(common + ["--seeds", "0", "--epochs", "3", "--retrain"]) == 0
    assert trained[4:] == [(0, 3)]


def test_train_cli_reports_the_safety_stop(data, tmp_path, monkeypatch, capsys):
    """`recstack train --config FILE --max-wall-s S`: a model stopped by the wall-clock limit is named in a
    warning and in train.json; the other keeps its epochs."""
    from recstack.cli import main
    from recstack.models import recipe

    monkeypatch.setattr(recipe, "load_training_data", lambda p: data)
    monkeypatch.setenv("RECSTACK_HOME", str(tmp_path))
    (tmp_path / "runs" / "tiny" / "data").mkdir(parents=True)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("device: cpu\nonnx: false\ncontext_ablation: false\nthreads: 1\ncheckpoints: false\n"
                   "two_tower: {epochs: 3, patience: 5, model: {embedding_dim: 8, output_dim: 8, hidden: [16]}}\n"
                   "dlrm: {epochs: 1, hard_negatives: 0, model: {embedding_dim: 8}}\n")
    assert main(["train", "--dataset", "tiny", "--config", str(cfg), "--max-wall-s", "1e-9", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: two_tower hit the wall-clock safety stop" in out and "WARNING: dlrm hit" in out
    assert "best epoch 1/1 (wall_clock_limit)" in out
    summary = json.loads((tmp_path / "runs" / "tiny" / "train.json").read_text())
    assert summary["safety_stops"] == ["two_tower", "dlrm"] and summary["config"]["max_wall_s"] == 1e-9
    assert not (tmp_path / "runs" / "tiny" / "checkpoints").exists()


def test_in_batch_loss_of_shards_averages_to_the_global_batch():
    """Data parallel two-tower: each rank's users against the gathered global batch (``row_offset``), the
    shard losses weighted by their rows give the global batch's loss."""
    from recstack.models.two_tower import in_batch_softmax_loss

    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=1)
    v = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=1)
    ids = torch.tensor([3, 4, 3, 5, 6, 7, 4])
    neg, neg_ids = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=1), torch.tensor([3, 8, 9, 5, 2])
    log_q = torch.rand(7, generator=g)
    full = in_batch_softmax_loss(u, v, ids, 0.1, log_q, neg, neg_ids)
    parts = [in_batch_softmax_loss(u[s:e], v, ids, 0.1, log_q, neg, neg_ids, row_offset=s) * (e - s)
             for s, e in ((0, 4), (4, 7))]
    assert torch.allclose(sum(parts) / 7, full, atol=1e-6)
