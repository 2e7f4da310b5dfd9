"""`recstack bench serve`'s perf_analyzer replay, run for real: NVIDIA's perf_analyzer (the C++
client, installed into the venv by scripts/install_perf_analyzer.sh) replays the input-data JSON
with the command the tool wrote, against the e2e tritonserver."""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from recstack.serving import bench

pytestmark = pytest.mark.e2e

# Measurement windows end once three in a row agree within this many percent: a loose bound,
# because here the test checks what was sent and answered, not how steady the latency is.
STABILITY = ["--stability-percentage", "1000", "--max-trials", "3"]


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    """The venv's perf_analyzer wrapper; skips with the installer's reason where it could not be
    installed, fails where the installer never ran (it must install on a supported machine)."""
    exe = Path(sys.prefix) / "bin" / "perf_analyzer"
    if exe.is_file():
        return exe
    reason = Path(sys.prefix) / "lib" / "perf_analyzer" / "UNAVAILABLE"
    if reason.is_file():
        pytest.skip(f"perf_analyzer unavailable: {reason.read_text().strip()}")
    pytest.fail(f"{exe} not found: run scripts/install_perf_analyzer.sh (scripts/setup.sh does)")


def _recommend_stats(url: str) -> dict[str, int]:
    """``recommend``'s cumulative inference and failure counts from Triton's statistics API."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        (stats,) = client.get_inference_statistics("recommend", as_json=True)["model_stats"]
    fail = stats.get("inference_stats", {}).get("fail", {})
    return {"inferences": int(stats.get("inference_count", 0)), "failures": int(fail.get("count", 0))}


def _replay(command: str, exe: Path, input_data: Path, csv_path: Path) -> subprocess.CompletedProcess:
    """Run one of the written perf_analyzer commands with ``input_data`` in place of the written
    file, ``exe`` for the bare name, and its CSV report at ``csv_path``."""
    argv = shlex.split(command)
    assert argv[0] == "perf_analyzer"
    argv[argv.index("--input-data") + 1] = str(input_data)
    return subprocess.run([str(exe), *argv[1:], *STABILITY, "-f", str(csv_path)],
                          check=False, capture_output=True, text=True, timeout=60)


def test_perf_analyzer_replays_the_written_load(cli_env, e2e_paths, e2e_server, perf_analyzer, tmp_path):
    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "serve", "--url", e2e_server.grpc_url, "--concurrency-range", "1",
                              "--measurement-interval", "1", "--warmup", "0.2", "--users", "40",
                              "--out", str(tmp_path)])
    assert args.handler(args) == 0
    body = json.loads((tmp_path / "bench_serve_grpc.json").read_text())
    (command,) = body["perf_analyzer_commands"]
    input_data = Path(body["files"]["input_data"])
    users = json.loads(input_data.read_text())["data"]
    assert len(users) == 40

    # the written command, as written, with the written users: every request answered
    before = _recommend_stats(e2e_server.grpc_url)
    run = _replay(command, perf_analyzer, input_data, tmp_path / "replay.csv")
    after = _recommend_stats(e2e_server.grpc_url)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"Successfully read data for 1 stream/streams with {len(users)} step/steps" in run.stdout
    (row,) = csv.DictReader((tmp_path / "replay.csv").open())
    assert row["Concurrency"] == "1" and float(row["Inferences/Second"]) > 0
    assert 0 < int(row["p50 latency"]) <= int(row["p95 latency"]) <= int(row["p99 latency"])   # microseconds
    # Triton counted at least the requests perf_analyzer reports (it also sends between its
    # measurement windows), none of them failed
    reported = int(re.search(r"Client:\s+Request count: (\d+)", run.stdout).group(1))
    assert reported > 0 and after["inferences"] - before["inferences"] >= reported
    assert after["failures"] == before["failures"]

    # the file's content is what reaches the server: the same users asking for top_n = 101 are
    # refused by the ensemble's own check, and perf_analyzer fails on it
    out_of_range = json.loads(input_data.read_text())
    for entry in out_of_range["data"]:
        entry["top_n"]["content"] = [101]
    refused_path = tmp_path / "top_n_101.json"
    refused_path.write_text(json.dumps(out_of_range))
    refused = _replay(command, perf_analyzer, refused_path, tmp_path / "refused.csv")
    assert refused.returncode != 0
    assert "input 'top_n': must be between 1 and 100, got 101" in refused.stdout + refused.stderr
    assert _recommend_stats(e2e_server.grpc_url)["failures"] > after["failures"]

    # perf_analyzer validates the file against the model's inputs: a user id that is not an
    # integer is rejected before anything is sent
    malformed = json.loads(input_data.read_text())
    malformed["data"][7]["user_id"]["content"] = ["not a user"]
    malformed_path = tmp_path / "malformed.json"
    malformed_path.write_text(json.dumps(malformed))
    counts = _recommend_stats(e2e_server.grpc_url)
    bad = _replay(command, perf_analyzer, malformed_path, tmp_path / "malformed.csv")
    assert bad.returncode != 0 and "unable to find int64_t data in json" in bad.stdout + bad.stderr
    assert _recommend_stats(e2e_server.grpc_url) == counts
