"""A/B experiments without a server: the experiments file, sticky assignment and its shares, the
statistics against known values, the report's join of exposures and outcomes, the simulator's
false-positive rate and power, and the version policy an experiment needs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from recstack.errors import InputError
from recstack.serving.ab.experiments import load_experiment, parse_experiment, unit_hash
from recstack.serving.ab.stats import (
    msprt,
    msprt_likelihood_ratio,
    two_proportion_z_test,
    wilson_interval,
)

EXPERIMENT = {"name": "exp-1", "salt": "salt-1",
              "variants": [{"name": "control", "share": 0.5}, {"name": "b", "share": 0.3, "model_version": 2},
                           {"name": "c", "share": 0.2, "params": {"diversity_lambda": 0.7}}]}


def test_assignment_is_sticky_across_processes_and_shares_match_within_sampling_error():
    experiment = parse_experiment(EXPERIMENT)
    ids = np.arange(100_000) * 7 + 13
    names = [experiment.assign(int(u)).name for u in ids]
    assert names[:50] == [experiment.assign(int(u)).name for u in ids[:50]]  # same answer again
    # another interpreter with another hash seed: the assignment does not depend on Python's hash()
    code = (f"from recstack.serving.ab.experiments import parse_experiment; import json; "
            f"e = parse_experiment(json.loads({json.dumps(json.dumps(EXPERIMENT))})); "
            f"print(','.join(e.assign(u).name for u in {ids[:50].tolist()}))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.strip()
    assert other.split(",") == names[:50]
    # Pearson chi-square against the configured shares, 2 degrees of freedom: the 0.999 quantile is 13.82
    observed = np.array([names.count(v.name) for v in experiment.variants])
    expected = np.array([v.share for v in experiment.variants]) * len(ids)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 13.82, (observed, expected, chi2)
    # a new salt reshuffles: about half of the users of a 50/50 split change sides
    moved = np.mean([unit_hash("salt-1", int(u)) < 0.5 != (unit_hash("salt-2", int(u)) < 0.5) for u in ids[:10_000]])
    assert 0.46 < moved < 0.54


@pytest.mark.parametrize(("change", "message"), [
    ({"salt": ""}, "salt: required"),
    ({"variants": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}]}, "shares sum to 0.9"),
    ({"variants": [{"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}]}, "name 'a' is used twice"),
    ({"variants": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "params": {"top_n": 3}}]},
     r"variants\[1\].params.top_n: set by the gateway"),
    ({"variants": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "model_version": 0}]},
     r"variants\[1\].model_version: 0 must be a version number"),
    ({"variants": [{"name": "a", "share": 1.0}]}, "at least two variants"),
    ({"colour": "red"}, "colour: unknown field"),
    ({"outcomes": {"click": ["tap"]}}, "outcomes.click"),
])
def test_bad_experiments_name_the_field(change, message):
    with pytest.raises(InputError, match=message):
        parse_experiment({**EXPERIMENT, **change})


def test_experiments_file_yaml_and_json(tmp_path):
    (tmp_path / "e.json").write_text(json.dumps(EXPERIMENT))
    (tmp_path / "e.yaml").write_text("name: exp-1\nsalt: salt-1\nvariants:\n  - {name: control, share: 0.5}\n"
                                     "  - {name: b, share: 0.3, model_version: 2}\n"
                                     "  - {name: c, share: 0.2, params: {diversity_lambda: 0.7}}\n")
    assert load_experiment(tmp_path / "e.json") == load_experiment(tmp_path / "e.yaml") == parse_experiment(EXPERIMENT)
    assert load_experiment(tmp_path / "e.yaml").model_versions() == [2]
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_experiment(tmp_path / "bad.yaml")


def test_statistics_match_known_values():
    # Wilson 95% for 10/100: (0.0552, 0.1744) (statsmodels proportion_confint(method="wilson"))
    assert wilson_interval(10, 100) == pytest.approx((0.05522914, 0.17436566), abs=1e-7)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.16112516), abs=1e-7)  # upper = z²/(n + z²)
    # pooled z-test 10/100 vs 20/100: p̂ = 0.15, SE = sqrt(0.15 * 0.85 * 0.02), z = 1.98030, p = 0.04767
    test = two_proportion_z_test(10, 100, 20, 100)
    assert test.z == pytest.approx(0.1 / math.sqrt(0.15 * 0.85 * 0.02)) and test.p == pytest.approx(0.0476704, abs=1e-6)
    assert test.ci == pytest.approx((0.1 - 1.959964 * math.sqrt(0.09 * 0.01 + 0.16 * 0.01),
                                     0.1 + 1.959964 * math.sqrt(0.09 * 0.01 + 0.16 * 0.01)), abs=1e-6)
    # mSPRT by hand: V = 0.1*0.9/100 + 0.2*0.8/100 = 0.0025 = τ² -> Λ = sqrt(1/2) exp(0.01 τ² / (2 V (V + τ²))) = e / sqrt(2)
    exact = math.e / math.sqrt(2)
    assert msprt_likelihood_ratio(10, 100, 20, 100, tau=0.05) == pytest.approx(exact, rel=1e-12)
    p_values = msprt([(1, 10, 3, 10), (10, 100, 20, 100), (11, 110, 20, 110)])
    assert p_values[1] == pytest.approx(1 / exact) and p_values[2] <= p_values[1] < p_values[0] <= 1.0


def test_report_counts_clicks_on_shown_items_after_the_exposure(tmp_path):
    from recstack.events import SqliteEventLog
    from recstack.serving.ab.exposures import exposure_events
    from recstack.serving.ab.report import build_report, format_report, read_all

    experiment = parse_experiment({**EXPERIMENT, "variants": [{"name": "control", "share": 0.5},
                                                              {"name": "b", "share": 0.5}]})
    users = {name: [u for u in range(200) if experiment.assign(u).name == name][:20] for name in ("control", "b")}
    exposures, events = SqliteEventLog(tmp_path / "x.db"), SqliteEventLog(tmp_path / "e.db")
    t0 = 1_700_000_000.0
    for name, ids in users.items():
        for user in ids:
            exposures.append(exposure_events(experiment.name, name, user, [10, 11, 12], now=t0))
    # control: 2 users click a shown item; 1 clicks an item not shown; 1 buys a shown item
    # b: 6 users click a shown item, 2 of them buy it
    clicks = [(users["control"][0], 10, "click"), (users["control"][1], 12, "click"),
              (users["control"][2], 99, "click"), (users["control"][3], 11, "purchase")]
    clicks += [(u, 11, "click") for u in users["b"][:6]] + [(u, 11, "purchase") for u in users["b"][:2]]
    events.append([{"event_id": f"e{i}", "user": u, "item": item, "type": kind} for i, (u, item, kind) in
                   enumerate(clicks)])
    report = build_report(experiment, read_all(exposures), read_all(events))
    control, b = report["variants"]["control"], report["variants"]["b"]
    assert (control["users"], control["exposures"], control["click"]["users"], control["conversion"]["users"]) == (
        20, 20, 2, 1)
    assert (b["users"], b["click"]["users"], b["conversion"]["users"]) == (20, 6, 2)
    assert control["click"]["ci"] == pytest.approx(wilson_interval(2, 20))
    comparison = report["comparisons"]["b"]["click"]
    assert comparison["p"] == pytest.approx(two_proportion_z_test(2, 20, 6, 20).p)
    assert comparison["msprt_p"] == pytest.approx(msprt([(2, 20, 6, 20)])[-1])  # one day: one look
    assert report["mismatched"] == 0 and "b vs control, click" in format_report(report)


def test_simulated_aa_tests_reject_at_the_nominal_rate_and_naive_peeking_does_not():
    """A CI-sized simulator run on synthetic users (the README's figures come from ML-100K)."""
    from recstack.serving.ab.simulate import run_experiments

    rng = np.random.default_rng(0)
    users = np.arange(3000, dtype=np.int64)
    day = np.minimum(users * 14 // len(users), 13)
    clicks = rng.random(len(users)) < 0.15
    aa = run_experiments(users, day, clicks, clicks, runs=400)["significant"]
    # 400 runs at α = 0.05: sd = 0.011, so the fixed-horizon rate is within 0.05 ± 3.3 sd
    assert 0.014 <= aa["fixed"]["rate"] <= 0.086, aa
    assert aa["sequential"]["rate"] <= 0.086, aa  # the mSPRT is conservative, never above α beyond noise
    assert aa["naive_peeking"]["rate"] >= 0.10, aa  # peeking 14 times roughly triples it
    better = rng.random(len(users)) < 0.25
    ab = run_experiments(users, day, clicks, better, runs=100, salt_prefix="power")["significant"]
    assert ab["fixed"]["rate"] >= 0.95 and ab["sequential"]["rate"] >= 0.9, ab


def test_version_policy_loads_experiment_versions_and_pins_the_ensemble(tmp_path):
    from recstack.ensembles.model_repo import (
        live_version,
        pin_ensemble_version,
        served_versions,
        set_live_version,
        version_policy,
    )

    model = tmp_path / "recommend_steps"
    for v in (1, 2, 3):
        (model / str(v)).mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "recommend_steps"\n' + version_policy(1))
    assert live_version(model) == 1 and served_versions(model) == [1]
    set_live_version(model, 1, also=[3])
    assert live_version(model) == 1 and served_versions(model) == [1, 3]
    set_live_version(model, 2)  # a deploy keeps the experiment's versions loaded
    assert live_version(model) == 2 and served_versions(model) == [2, 3]
    set_live_version(model, 2, also=[])
    assert served_versions(model) == [2] and "live version" not in (model / "config.pbtxt").read_text()
    with pytest.raises(InputError, match=r"versions: \[7\]"):
        set_live_version(model, 2, also=[7])
    ensemble = tmp_path / "recommend"
    ensemble.mkdir()
    (ensemble / "config.pbtxt").write_text('step [\n    {\n      model_name: "recommend_steps"\n'
                                           '      model_version: -1\n    }\n]\n')
    assert pin_ensemble_version(ensemble, "recommend_steps", 2)
    assert "model_version: 2\n" in (ensemble / "config.pbtxt").read_text()
    assert not pin_ensemble_version(ensemble, "recommend_steps", 2)


def test_ab_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from recstack.cli import main

    assert main(["ab", "report", "--experiments", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    assert main(["ab", "load-versions", "--clear", "--experiments", str(tmp_path / "e.yaml")]) == 2
    assert "give an experiments file, or --clear" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({**EXPERIMENT, "salt": ""}))
    assert main(["ab", "report", "--experiments", str(tmp_path / "bad.json")]) == 2
    assert "bad.json: salt: required" in capsys.readouterr().err
