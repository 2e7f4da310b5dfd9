"""Soak: recommendations and events at fixed rates through the real gateway process and tritonserver
for minutes; prints errors, latency percentiles and the memory drift of every process, writes
soak.json and soak.png (resident memory over time).

    python benchmarks/soak.py --home /tmp/hm --dataset ml-100k --minutes 3 --rate 20 --events-per-second 50

The run must exist (`recstack run --serve 0`). The soak's events go to new users of a scratch
event log (see recstack.serving.soak.scratch_home); the run's own event log is left alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from recstack.io import write_json
from recstack.paths import RunPaths
from recstack.serving.soak import plot_memory, run_soak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("."))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=20.0, help="recommendation requests per second")
    parser.add_argument("--events-per-second", type=float, default=50.0)
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds left out of latency and drift")
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    args = parser.parse_args()
    paths = RunPaths.for_dataset(args.dataset, home=args.home)
    with tempfile.TemporaryDirectory(prefix="recstack-soak-") as scratch:
        result = run_soak(paths, Path(scratch), args.minutes * 60, args.rate, args.events_per_second,
                          warmup_s=args.warmup, sample_every_s=2.0)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    write_json(args.out / "soak.json", {**summary, "rss_mib": result.rss_mib})
    plot_memory(result, args.out / "soak.png")
    lat = result.latency_ms
    print(f"soak {args.minutes:g} min: {result.requests} recommendations at {args.rate:g}/s, "
          f"{result.events_sent} events at {args.events_per_second:g}/s; errors {result.errors}")
    print(f"recommendations p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms; "
          f"events p95 {result.event_latency_ms.get('p95', float('nan')):.1f} ms")
    print(f"{'process':<32} {'start MiB':>10} {'end MiB':>10} {'drift MiB':>10} {'MiB/min':>8}")
    for label, d in sorted(summary["drift"].items()):
        print(f"{label:<32} {d['start_mib']:>10.1f} {d['end_mib']:>10.1f} {d['drift_mib']:>+10.1f} "
              f"{d['slope_mib_per_min']:>+8.2f}")
    print(json.dumps({"errors": result.errors, "p95_ms": lat["p95"]}))


if __name__ == "__main__":
    main()
