"""`recstack ab report`: per-variant exposures, click-through and conversion, with tests.

The unit is the user (the unit of assignment, so units are independent): a variant's
click-through is the share of its exposed users who clicked an item after it was shown to them
(an event of an ``outcomes.click`` type on a shown item, received after the exposure);
conversion likewise with the ``outcomes.conversion`` types. Each gets a Wilson 95% interval;
each variant is compared with the control (the first variant) by the pooled two-proportion
z-test (one look, at the end) and by the mSPRT always-valid p-value over one look per day since
the first exposure (valid however often one looks): see :mod:`recstack.serving.ab.stats`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from recstack.serving.ab.experiments import Experiment
from recstack.serving.ab.exposures import parse_exposure_id
from recstack.serving.ab.stats import (
    DEFAULT_TAU,
    msprt,
    two_proportion_z_test,
    wilson_interval,
)

DAY_S = 86400.0


def read_all(log, chunk: int = 10_000) -> pd.DataFrame:
    """Every event of ``log`` as the offline layout (offset, event_id, user_id, item_id, type, ...)."""
    frames, after = [], 0
    while True:
        batch = log.read(after, chunk)
        if not len(batch):
            break
        frames.append(batch.to_frame())
        after = batch.last_offset
    if not frames:
        return pd.DataFrame({"offset": [], "event_id": [], "user_id": [], "item_id": [], "type": [], "value": [],
                             "timestamp": [], "received": []})
    return pd.concat(frames, ignore_index=True)


def exposures_frame(events: pd.DataFrame, experiment: Experiment) -> pd.DataFrame:
    """The experiment's exposure rows: user_id, item_id, variant, request_id, received."""
    parsed = [parse_exposure_id(e) for e in events["event_id"].tolist()]
    keep = np.array([p is not None and p.experiment == experiment.name for p in parsed], dtype=bool)
    rows = events[keep]
    return pd.DataFrame({"user_id": rows["user_id"].to_numpy(np.int64), "item_id": rows["item_id"].to_numpy(np.int64),
                         "variant": [p.variant for p, k in zip(parsed, keep) if k],
                         "request_id": [p.request_id for p, k in zip(parsed, keep) if k],
                         "received": rows["received"].to_numpy(np.float64)})


def user_outcomes(exposures: pd.DataFrame, events: pd.DataFrame, types: tuple[str, ...]) -> pd.Series:
    """Per exposed user: the first time (received) they had a ``types`` event on an item shown to
    them before it, NaN when never."""
    shown = exposures.groupby(["user_id", "item_id"], as_index=False)["received"].min()
    outcome = events[events["type"].isin(types)][["user_id", "item_id", "received"]]
    joined = outcome.merge(shown, on=["user_id", "item_id"], suffixes=("", "_shown"))
    joined = joined[joined["received"] >= joined["received_shown"]]
    return joined.groupby("user_id")["received"].min()


def build_report(experiment: Experiment, exposure_events: pd.DataFrame, events: pd.DataFrame,
                 alpha: float = 0.05, tau: float = DEFAULT_TAU) -> dict[str, Any]:
    """The report as a dict: ``variants`` (per-variant counts, rates, intervals), ``comparisons``
    (each variant against the control: z-test and mSPRT over daily looks) and ``mismatched``
    (exposed users whose logged variant is not their assignment: should be 0)."""
    exposures = exposures_frame(exposure_events, experiment)
    users = exposures.groupby("user_id").agg(variant=("variant", "first"), first=("received", "min"))
    assigned = np.array([experiment.assign(u).name for u in users.index], dtype=object)
    mismatched = int((assigned != users["variant"].to_numpy(object)).sum())
    start = float(users["first"].min()) if len(users) else 0.0
    days = int((exposures["received"].max() - start) // DAY_S) + 1 if len(users) else 0
    result: dict[str, Any] = {"experiment": experiment.name, "alpha": alpha, "tau": tau, "days": days,
                              "mismatched": mismatched, "variants": {}, "comparisons": {}}
    outcome_times = {name: user_outcomes(exposures, events, types) for name, types in experiment.outcomes.items()}
    daily: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for variant in experiment.variants:
        mine = users[users["variant"] == variant.name]
        row: dict[str, Any] = {"share": variant.share, "users": len(mine),
                               "exposures": int(exposures[exposures["variant"] == variant.name]["request_id"].nunique())}
        daily[variant.name] = {}
        for name, times in outcome_times.items():
            hit_time = times.reindex(mine.index)
            hits = int(hit_time.notna().sum())
            row[name] = {"users": hits, "rate": hits / len(mine) if len(mine) else 0.0,
                         "ci": wilson_interval(hits, len(mine), alpha)}
            ends = [start + (d + 1) * DAY_S for d in range(days)]
            daily[variant.name][name] = [(int((hit_time <= end).sum()), int((mine["first"] <= end).sum()))
                                         for end in ends]
        result["variants"][variant.name] = row
    control = experiment.control.name
    for variant in experiment.variants[1:]:
        comparison = {}
        for name in experiment.outcomes:
            a, b = result["variants"][control][name], result["variants"][variant.name][name]
            test = two_proportion_z_test(a["users"], result["variants"][control]["users"],
                                         b["users"], result["variants"][variant.name]["users"], alpha)
            looks = [(xa, na, xb, nb) for (xa, na), (xb, nb) in zip(daily[control][name], daily[variant.name][name])]
            always_valid = msprt(looks, tau)
            comparison[name] = {"diff": test.diff, "ci": test.ci, "z": test.z, "p": test.p,
                                "msprt_p": always_valid[-1] if always_valid else 1.0,
                                "significant_fixed": test.p < alpha,
                                "significant_sequential": bool(always_valid and always_valid[-1] < alpha)}
        result["comparisons"][variant.name] = comparison
    return result


def format_report(report: dict[str, Any]) -> str:
    """One screen: a table of variants, then each comparison with the control."""
    def pct(x: float) -> str:
        return f"{100 * x:5.2f}%"

    lines = [(f"experiment {report['experiment']}: {report['days']} day(s) of exposures, unit = user, "
              f"alpha {report['alpha']}")]
    lines.append(f"{'variant':<16}{'share':>6}{'users':>8}{'lists':>8}   {'click-through (95% CI)':<32}"
                 f"{'conversion (95% CI)':<32}")
    for name, row in report["variants"].items():
        cells = [f"{pct(row[o]['rate'])} [{pct(row[o]['ci'][0])}, {pct(row[o]['ci'][1])}]"
                 for o in ("click", "conversion")]
        lines.append(f"{name:<16}{row['share']:>6.2f}{row['users']:>8}{row['exposures']:>8}   {cells[0]:<32}{cells[1]:<32}")
    for name, comparison in report["comparisons"].items():
        for outcome, c in comparison.items():
            verdict = ("significant" if c["significant_sequential"] else
                       "significant at a single planned look only" if c["significant_fixed"] else "not significant")
            lines.append(f"{name} vs control, {outcome}: diff {100 * c['diff']:+.2f} pts "
                         f"[{100 * c['ci'][0]:+.2f}, {100 * c['ci'][1]:+.2f}], z {c['z']:+.2f}, p {c['p']:.4f}; "
                         f"always-valid p (mSPRT, daily looks) {c['msprt_p']:.4f}: {verdict}")
    if report["mismatched"]:
        lines.append(f"WARNING: {report['mismatched']} user(s) were served a variant other than their assignment "
                     "(the experiments file changed during the test?)")
    return "\n".join(lines)
