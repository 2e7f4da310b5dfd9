"""`recstack ab`: report on a running experiment, simulate many, load an experiment's model versions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recstack.cliutil import add_dataset_argument
from recstack.errors import InputError
from recstack.paths import RunPaths
from recstack.serving.server import DEFAULT_HTTP_PORT


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ab", help="A/B experiments: report, simulate, load model versions",
                                   description="A/B experiments (README: A/B experiments).")
    sub = parser.add_subparsers(dest="ab_command", metavar="ACTION")
    sub.required = True

    report = sub.add_parser("report", help="per-variant exposures, click-through, conversion and tests")
    add_dataset_argument(report)
    report.add_argument("--experiments", type=Path, required=True, help="the experiments file the gateway runs")
    report.add_argument("--event-log", default=None, help="interaction log URL (default: the run's)")
    report.add_argument("--exposure-log", default=None, help="exposure log URL (default: the run's)")
    report.add_argument("--alpha", type=float, default=0.05)
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.set_defaults(handler=_report)

    simulate = sub.add_parser("simulate", help="replay held-out interactions as many simulated experiments",
                              description="A/A (pipeline vs pipeline) and A/B (popularity vs pipeline) tests "
                                          "replayed on the test split; prints how often each is declared "
                                          "significant by a fixed-horizon z-test, the z-test peeked at daily, "
                                          "and the mSPRT peeked at daily.")
    add_dataset_argument(simulate)
    simulate.add_argument("--runs", type=int, default=1000, help="simulated experiments per scenario")
    simulate.add_argument("--days", type=int, default=14, help="daily cohorts the test users arrive in")
    simulate.add_argument("-k", type=int, default=10, help="list length shown")
    simulate.add_argument("--alpha", type=float, default=0.05)
    simulate.add_argument("--json-out", type=Path, default=None, help="also write the results as JSON here")
    simulate.add_argument("--png", type=Path, default=None, help="also plot the rejection rates to this PNG")
    simulate.set_defaults(handler=_simulate)

    load = sub.add_parser("load-versions", help="load an experiment's model versions beside the live one",
                          description="Set the fused model's version policy to the live version plus every "
                                      "model_version of the experiments file, pin the ensemble to the live "
                                      "version, and reload both on the running tritonserver.")
    add_dataset_argument(load)
    load.add_argument("--experiments", type=Path, default=None, help="experiments file (omit with --clear)")
    load.add_argument("--clear", action="store_true", help="unload every version but the live one")
    load.add_argument("--repo", type=Path, default=None, help="model repository (default: triton_repo/<dataset>)")
    load.add_argument("--url", default=f"127.0.0.1:{DEFAULT_HTTP_PORT}",
                      help="HTTP address of the running tritonserver ('' for none)")
    load.set_defaults(handler=_load_versions)


def _report(args: argparse.Namespace) -> int:
    from recstack.events.log import open_event_log
    from recstack.serving.ab.experiments import load_experiment
    from recstack.serving.ab.exposures import open_exposure_log
    from recstack.serving.ab.report import build_report, format_report, read_all

    experiment = load_experiment(args.experiments)
    paths = RunPaths.for_dataset(args.dataset)
    with open_event_log(paths, args.event_log) as log, \
            open_exposure_log(paths, args.exposure_log, args.event_log) as exposures:
        report = build_report(experiment, read_all(exposures), read_all(log), alpha=args.alpha)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from recstack.io import write_json
    from recstack.serving.ab.simulate import (
        build_replay,
        format_simulation,
        plot_simulation,
        run_experiments,
    )

    if args.runs < 1 or args.days < 1 or not 0 < args.alpha < 1:
        raise InputError("--runs and --days must be >= 1 and --alpha in (0, 1)")
    paths = RunPaths.for_dataset(args.dataset)
    replay = build_replay(paths, {"pipeline": {"kind": "pipeline"}, "popularity": {"kind": "popularity"}},
                          k=args.k, days=args.days)
    results = {}
    for name, (a, b) in {"A/A (pipeline vs pipeline)": ("pipeline", "pipeline"),
                         "A/B (popularity vs pipeline)": ("popularity", "pipeline")}.items():
        results[name] = run_experiments(replay.users, replay.day, replay.clicks[a], replay.clicks[b], args.runs,
                                        alpha=args.alpha)
        print(format_simulation(name, results[name]) + "\n")
    if args.json_out:
        write_json(args.json_out, results)
    if args.png:
        plot_simulation(results, args.png)
    return 0


def _load_versions(args: argparse.Namespace) -> int:
    from recstack.serving.ab.experiments import load_experiment
    from recstack.serving.versions import load_versions

    if args.clear == (args.experiments is not None):
        raise InputError("--experiments: give an experiments file, or --clear")
    versions = [] if args.clear else load_experiment(args.experiments).model_versions()
    repo = args.repo or RunPaths.for_dataset(args.dataset).triton_repo
    done = load_versions(repo, versions, args.url or None)
    where = "reloaded on the server" if done["reloaded"] else "takes effect when the server starts"
    print(f"live version {done['live']}; loaded versions {done['loaded']}; {where}")
    return 0
