"""Offline evaluation of one pipeline run: popularity vs two-tower vs two-tower + DLRM reranking.

Protocol (shared/DATA.md): leave-one-out on the time split. For ``split="test"`` the target
is each user's test item, the user's history (model input) and seen items (excluded from
the ranking) are train + valid; for ``split="valid"`` both are train only. Every catalogue
item is ranked, ties pessimistically (:mod:`recstack.ranking`, the protocol training selects with).

* ``popularity``: interaction counts of the rows before the target, i.e. train for
  ``valid`` and train + valid for ``test`` (the DATA.md protocol refits baselines on train +
  valid; this reproduces its ML-100K anchor HR@10 0.086 / NDCG@10 0.044; train-only counts
  give 0.084 / 0.043);
* ``two_tower``: user-tower embedding . ``item_embeddings.npy`` (the exported item vectors);
* ``two_tower+dlrm`` (what is served): the two-tower's top-``candidates`` (seen items
  excluded first), merged with the item-kNN and popular sources when the ranker reads their
  features (``models/candidates/``, :func:`recstack.models.candidates.offline_candidates`, the
  computation of the serving step at the test interaction's time), are reranked by the fused score
  ``dlrm_weight * dlrm_logit + retrieval_weight * retrieval_score``
  (:func:`recstack.models.fusion.fuse_scores`, weights chosen on valid at training time and
  read from ``models/dlrm/config.json`` ``"fusion"``); the other items follow in two-tower order;
* ``dlrm_only``: the same candidates reranked by the DLRM logit alone (the ranker by itself);
* ``two_tower+dlrm_no_context`` (the context ablation, when ``models/dlrm_no_context`` exists):
  ``two_tower+dlrm`` with a ranker trained the same way (same data, seed, recipe) but without the
  request context (hour / weekday of the interaction, :mod:`recstack.workflows.request_context`),
  with its own fusion weights chosen on valid; ``dlrm_only_no_context``: that ranker alone. The
  served ranker scores each test row with the
  context of the test interaction's own timestamp, what a request at that time gets.

With the DLRM, ``report["diversity"]`` holds the diversity trade-off of the served re-ranking
(:mod:`recstack.evaluation.tradeoff`: NDCG@K, intra-list distance and coverage per MMR lambda),
plotted to ``diversity_<split>.png``.

The report goes to ``runs/<ds>/reports/evaluation_<split>.json`` and ``.png`` (bar chart).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from recstack.errors import InputError
from recstack.io import atomic_write_bytes, write_json
from recstack.models.candidates import ARTIFACT, CandidateSources, offline_candidates
from recstack.models.data import load_training_data
from recstack.models.device import resolve_device
from recstack.models.export import load_dlrm, load_two_tower
from recstack.models.fusion import LEGACY_FUSION, check_fusion, fuse_scores
from recstack.models.recipe import ABLATION_MODEL
from recstack.models.predict import dlrm_scores, rerank, user_embeddings
from recstack.models.validation import split_view
from recstack.paths import RunPaths
from recstack.ids import FIRST_CODE
from recstack.ranking import RankingAccumulator, mask_unrankable, row_batches, score_batch_rows, top_k

METRIC_COLUMNS = ("recall@{k}", "ndcg@{k}", "hr@{k}", "mrr", "coverage")
EXTRA_CUTOFFS = (50,)
"""Cut-offs every report carries besides ``k`` (issue 6: @10 and @50)."""
ABLATION_ROW = "two_tower+dlrm_no_context"
ABLATION_ALONE_ROW = "dlrm_only_no_context"


def evaluate_run(paths: RunPaths, k: int = 10, split: str = "test", *, candidates: int = 100,
                 device: str = "cpu", batch_size: int = 512, progress: bool = True,
                 write: bool = True, lambdas: tuple[float, ...] | None = None,
                 baselines: tuple[str, ...] | None = None, temporal: bool = True, cold_items: bool = True,
                 cutoffs: tuple[int, ...] = EXTRA_CUTOFFS) -> dict[str, Any]:
    """Score popularity, the classical baselines, two_tower, two_tower+dlrm (fused) and dlrm_only on
    ``split``; write the JSON, markdown and PNG report.

    Returns ``{"dataset", "split", "k", "users", "models": {name: metrics}, "files": {...}}``.
    Models whose folder is missing are reported under ``"skipped"``. ``lambdas``: the MMR lambdas
    of the diversity trade-off (default :data:`recstack.evaluation.tradeoff.LAMBDAS`; ``()``: none).
    ``baselines``: the classical baselines besides popularity (default all of
    :data:`recstack.evaluation.baseline_runs.BASELINES`; ``()``: none); ``temporal``: also run them
    under the global temporal split (``report["temporal"]``); ``cold_items``: the cold-item protocol
    of the two-tower (``report["cold_items"]``); ``cutoffs``: cut-offs reported besides ``k``.
    """
    from recstack.evaluation.baseline_runs import BASELINES
    from recstack.evaluation.metrics import ReportAccumulator, cutoffs_for
    from recstack.evaluation.protocols import loo_tasks
    from recstack.evaluation.tradeoff import LAMBDAS, DiversityTradeoff

    if split not in ("test", "valid"):
        raise InputError(f"--split: expected test or valid, got {split!r}")
    if k < 1:
        raise InputError(f"k: must be >= 1, got {k}")
    start = time.perf_counter()
    dev = resolve_device(device)
    data = load_training_data(paths)
    view = split_view(data, split)
    n_items = data.n_items
    baselines = tuple(b for b in (BASELINES if baselines is None else baselines) if b != "popularity")
    genres = _item_genres(paths, n_items, data)
    valid_task, test_task = loo_tasks(data, split)
    quality = (test_task or valid_task).quality(genres)
    new_accumulator = lambda: ReportAccumulator(n_items, k, cutoffs=cutoffs, quality=quality)
    accs: dict[str, RankingAccumulator] = {"popularity": new_accumulator()}
    skipped: dict[str, str] = {}

    two_tower = dlrm = item_emb = fusion = tradeoff = ablation = sources = None
    tt_dir, dlrm_dir = paths.models / "two_tower", paths.models / "dlrm"
    if (tt_dir / "config.json").exists():
        two_tower, _ = load_two_tower(tt_dir, dev)
        item_emb = np.load(tt_dir / "item_embeddings.npy", allow_pickle=False)
        if item_emb.shape[0] != n_items:
            raise InputError(f"{tt_dir / 'item_embeddings.npy'}: {item_emb.shape[0]} rows, the workflow has "
                             f"{n_items} item ids (retrain: recstack train)")
        accs["two_tower"] = new_accumulator()
        if (dlrm_dir / "config.json").exists():
            dlrm, dlrm_config = load_dlrm(dlrm_dir, dev)
            fusion = dlrm_config.get("fusion") or dict(LEGACY_FUSION)
            check_fusion(fusion)
            sources = CandidateSources(paths.models / ARTIFACT) if dlrm.n_cross else None
            accs["two_tower+dlrm"] = new_accumulator()
            accs["dlrm_only"] = new_accumulator()
            lambdas = LAMBDAS if lambdas is None else lambdas
            tradeoff = (DiversityTradeoff(item_emb, genres, n_items - FIRST_CODE, k,
                                          lambdas) if lambdas else None)
            ablation = _load_ablation(paths.models / ABLATION_MODEL, dev)
            if ablation is not None:
                accs[ABLATION_ROW] = new_accumulator()
                accs[ABLATION_ALONE_ROW] = new_accumulator()
        else:
            skipped["two_tower+dlrm"] = skipped["dlrm_only"] = f"{dlrm_dir} missing"
    else:
        skipped["two_tower"] = f"{tt_dir} missing"
        skipped["two_tower+dlrm"] = skipped["dlrm_only"] = f"{tt_dir} missing"

    popularity = data.item_counts(("train",) if split == "valid" else ("train", "valid")).astype(np.float64)
    catalogue = accs["popularity"].catalogue
    batches = list(row_batches(len(view.users), score_batch_rows(batch_size, n_items)))
    with torch.no_grad():
        for rows in tqdm(batches, desc=f"evaluate {split}", unit="batch", disable=not progress):
            users, targets = view.users[rows], view.targets[rows]
            accs["popularity"].add(np.tile(popularity, (len(rows), 1)), targets, users, view.seen)
            if two_tower is None:
                continue
            first = user_embeddings(two_tower, data, users, view.history[rows],
                                    view.history_times[rows]).astype(np.float64) @ item_emb.T
            mask_unrankable(first, users, view.seen, targets, catalogue)
            accs["two_tower"].add(first.copy(), targets)
            if dlrm is not None:
                if sources is not None:  # the served multi-source candidates and their cross features
                    cands, retrieval, cross = offline_candidates(sources, first, view.history[rows],
                                                                 view.times[rows], candidates)
                else:
                    cands, cross = top_k(first, candidates), None
                    retrieval = np.take_along_axis(first, cands, axis=1)  # inner products of unit vectors
                logits = dlrm_scores(dlrm, data, users, view.history[rows], cands, view.context[rows], cross=cross)
                fused = fuse_scores(logits, retrieval, fusion)
                accs["two_tower+dlrm"].add(rerank(first, cands, fused), targets)
                if tradeoff is not None:
                    tradeoff.add(cands, np.where(np.isfinite(retrieval), fused, -np.inf), targets)
                accs["dlrm_only"].add(rerank(first, cands, logits), targets)
                if ablation is not None:
                    plain = dlrm_scores(ablation[0], data, users, view.history[rows], cands, view.context[rows],
                                        cross=cross if ablation[0].n_cross else None)
                    accs[ABLATION_ROW].add(rerank(first, cands, fuse_scores(plain, retrieval, ablation[1])), targets)
                    accs[ABLATION_ALONE_ROW].add(rerank(first, cands, plain), targets)

    extra = _extra_protocols(paths, data, view, split, k, cutoffs, baselines, valid_task, test_task, quality,
                             two_tower, item_emb, temporal, cold_items, progress)
    models = {"popularity": accs.pop("popularity").result(), **extra.pop("rows"),
              **{name: acc.result() for name, acc in accs.items()}}
    skipped.update(extra.pop("skipped"))
    report: dict[str, Any] = {
        "dataset": paths.root.name, "split": split, "k": k, "cutoffs": list(cutoffs_for(k, cutoffs)),
        "users": int(len(view.users)),
        "catalogue": int(catalogue.sum()), "candidates": candidates,
        "candidate_sources": dict(vars(sources.cfg), width=sources.width) if sources is not None else None,
        "protocol": "leave-one-out, full catalogue, seen items excluded, ties ranked below",
        "models": models, **extra,
        "fusion": fusion,
        "diversity": ({"candidates": candidates, "rows": tradeoff.result(),
                       "ild": "ild_embedding: mean pairwise 1 - cosine of item-tower embeddings; "
                              "ild_genre: mean pairwise Jaccard distance of genre sets"}
                      if tradeoff is not None else None),
        "context": {"ranker": [c.name for c in dlrm.layout.context] if dlrm is not None else [],
                    "ablation": ABLATION_ROW if ablation is not None else None, "timezone": "UTC"},
        "skipped": skipped, "wall_s": round(time.perf_counter() - start, 2),
    }
    if write:
        report["files"] = write_report(report, paths.reports)
    return report


def _extra_protocols(paths, data, view, split, k, cutoffs, baselines, valid_task, test_task, quality, two_tower,
                     item_emb, temporal, cold_items, progress) -> dict[str, Any]:
    """The classical baselines (leave-one-out), the temporal split and the cold-item protocol (issue 6)."""
    from recstack.evaluation.baseline_runs import run_baselines
    from recstack.evaluation.cold_items import cold_item_report
    from recstack.evaluation.protocols import temporal_report

    rows, selection, skipped = ((run_baselines(valid_task, test_task, k, cutoffs, baselines, quality=quality,
                                               progress=progress)) if baselines else ({}, {}, {}))
    out: dict[str, Any] = {"rows": rows, "skipped": skipped, "baselines": selection}
    if temporal:
        out["temporal"] = temporal_report(paths, split, k, cutoffs, ("popularity", *baselines), progress=progress)
    if cold_items and two_tower is not None:
        try:
            out["cold_items"] = cold_item_report(paths, data, view, two_tower, item_emb, split, k)
        except InputError as err:  # e.g. an items table whose side columns do not match the workflow's
            out["skipped"]["cold_items"] = str(err)
    return out


def _load_ablation(model_dir: Path, dev: torch.device) -> tuple[Any, dict[str, Any]] | None:
    """The no-context DLRM and its fusion weights, or None when it was not trained."""
    if not (model_dir / "config.json").exists():
        return None
    model, config = load_dlrm(model_dir, dev)
    fusion = config.get("fusion") or dict(LEGACY_FUSION)
    check_fusion(fusion)
    return model, fusion


def write_report(report: dict[str, Any], reports_dir: Path) -> dict[str, str]:
    """Write ``evaluation_<split>.json`` and ``.png`` (atomically); return their paths."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = f"evaluation_{report['split']}"
    json_path, png_path = reports_dir / f"{stem}.json", reports_dir / f"{stem}.png"
    files = {"json": str(json_path), "png": str(png_path)}
    if report.get("diversity"):
        from recstack.evaluation.tradeoff import plot_tradeoff

        files["diversity_png"] = str(reports_dir / f"diversity_{report['split']}.png")
        plot_tradeoff(report["diversity"]["rows"], report["k"],
                      f"{report['dataset']} {report['split']}: MMR re-ranking of {report['candidates']} candidates",
                      Path(files["diversity_png"]))
    from recstack.evaluation.report_markdown import format_markdown, plot_rows

    files["markdown"] = str(reports_dir / f"{stem}.md")
    if (report.get("temporal") or {}).get("models"):
        files["temporal_png"] = str(reports_dir / f"{stem}_temporal.png")
        plot_rows(report["temporal"]["models"], _plot_metrics(report),
                  f"{report['dataset']}: global temporal split (T = {report['temporal']['quantile']:.0%} quantile)",
                  Path(files["temporal_png"]))
    write_json(json_path, {**report, "files": files})
    plot_rows(report["models"], _plot_metrics(report),
              f"{report['dataset']} {report['split']}: full-catalogue leave-one-out ({report['users']} users)", png_path)
    atomic_write_bytes(Path(files["markdown"]), format_markdown(report).encode())
    return files


def _item_genres(paths: RunPaths, n_items: int, data) -> np.ndarray | None:
    """Multi-hot genres [n_items, G] by encoded item id from the item feature table (None without genres)."""
    import pandas as pd

    from recstack.evaluation.diversity import genre_matrix

    table_path = paths.features / "item_features.parquet"
    id_column = data.layout.item.id_column.name
    if not table_path.is_file():
        return None
    table = pd.read_parquet(table_path)
    if "genres" not in table:
        return None
    codes = table[id_column].to_numpy(np.int64)
    keep = codes < n_items
    return genre_matrix(codes[keep], table["genres"].to_numpy()[keep].tolist(), n_items)


def _plot_metrics(report: dict[str, Any]) -> list[str]:
    """The metrics the bar charts show: HR and NDCG at each cut-off, MRR, coverage@k."""
    cuts = report.get("cutoffs", [report["k"]])
    return [f"{m}@{c}" for c in cuts for m in ("hr", "ndcg")] + ["mrr", f"coverage@{report['k']}"]


def format_table(report: dict[str, Any]) -> str:
    """The report's metrics as a fixed-width text table."""
    k = report["k"]
    headers = ["model", f"Recall@{k}", f"NDCG@{k}", f"HR@{k}", "MRR", "coverage"]
    keys = [m.format(k=k) for m in METRIC_COLUMNS]
    for cut in (c for c in report.get("cutoffs", []) if c != k):  # the extra cut-offs and list measures
        headers += [f"Recall@{cut}", f"NDCG@{cut}"]
        keys += [f"recall@{cut}", f"ndcg@{cut}"]
    for key in (f"ild@{k}", f"novelty@{k}"):
        if any(key in m for m in report["models"].values()):
            headers.append(key.replace("ild", "ILD"))
            keys.append(key)
    rows = [[name] + [f"{m.get(key, float('nan')):.4f}" for key in keys] for name, m in report["models"].items()]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]
    for name, why in report.get("skipped", {}).items():
        out.append(f"(skipped {name}: {why})")
    return "\n".join(out)
