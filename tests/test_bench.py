"""`recstack bench serve`: bookkeeping units (fake timestamps, fake sends) and a short, bounded
load against the real tritonserver of the e2e fixtures over gRPC and HTTP."""

from __future__ import annotations

import argparse
import asyncio
import json
import math

import numpy as np
import pytest

from recstack.errors import InputError
from recstack.serving import bench
from recstack.serving.loadgen import (
    RequestRecord, check_target, parse_range, parse_statistics, percentiles_ms, run_closed_loop, run_open_loop,
    stats_delta, summarize,
)

# ------------------------------------------------------------------ units (no server)


@pytest.mark.parametrize("text, kind, want", [
    ("1:4:1", int, [1, 2, 3, 4]), ("1:4", int, [1, 2, 3, 4]), ("4", int, [4]), ("1,4,16", int, [1, 4, 16]),
    ("10:50:20", int, [10, 30, 50]), ("10:55:20", int, [10, 30, 50]), ("0.5:1.5:0.5", float, [0.5, 1.0, 1.5]),
    ("1,8:12:2", int, [1, 8, 10, 12]),
])
def test_parse_range(text, kind, want):
    assert parse_range(text, "--concurrency-range", kind) == want


@pytest.mark.parametrize("text", ["4:1", "0", "1:2:0", "a", "1:2:3:4", "", "-1:3", "1:1000"])
def test_parse_range_rejects(text):
    with pytest.raises(InputError, match="--concurrency-range"):
        parse_range(text, "--concurrency-range")


@pytest.mark.parametrize("url, want", [("127.0.0.1:8001", "127.0.0.1:8001"), ("localhost:8000", "localhost:8000"),
                                       ("http://127.0.0.2:8000/", "127.0.0.2:8000"), ("[::1]:8001", "[::1]:8001")])
def test_loopback_targets_pass(url, want):
    assert check_target(url) == want


@pytest.mark.parametrize("url", ["10.0.0.1:8001", "example.com:8001", "0.0.0.0:8001", "grpc://192.168.1.2:8001"])
def test_remote_targets_refused_unless_allowed(url):
    with pytest.raises(InputError, match="--allow-remote"):
        check_target(url)
    assert check_target(url, allow_remote=True).endswith(":8001")


def test_cli_refuses_remote_url_before_any_work(tmp_path):
    args = _parse(["--url", "10.1.2.3:8001", "--dataset", "no-such-run"])
    with pytest.raises(InputError, match="not a loopback"):
        args.handler(args)


def test_percentiles_are_nearest_rank_in_ms():
    got = percentiles_ms([i / 1000 for i in range(100, 0, -1)])       # 1..100 ms, unsorted
    assert (got["p50"], got["p90"], got["p95"], got["p99"], got["max"]) == pytest.approx((50, 90, 95, 99, 100))
    assert got["mean"] == pytest.approx(50.5)
    assert percentiles_ms([0.007])["p99"] == pytest.approx(7.0)
    assert math.isnan(percentiles_ms([])["p50"])


def test_summarize_counts_completions_inside_the_window():
    # fake clock: window [10, 12) s
    records = [RequestRecord(9.0, 9.5),                  # warm-up: ignored
               RequestRecord(9.8, 10.1),                 # started in warm-up, done in window: counted (0.3 s)
               RequestRecord(10.5, 10.6),                # 0.1 s
               RequestRecord(11.0, 11.2),                # 0.2 s
               RequestRecord(11.9, 12.4),                # done after the window: ignored
               RequestRecord(10.0, 10.2, "boom"),        # error: counted as an error, not a latency
               RequestRecord(12.1, 12.3, "late boom")]   # errors in the tail count too
    level = summarize(records, 10.0, 12.0, mode="concurrency", level=2)
    assert level.requests == 3 and level.throughput_rps == pytest.approx(1.5)
    assert level.latency_ms["p50"] == pytest.approx(200) and level.latency_ms["max"] == pytest.approx(300)
    assert (level.errors, level.first_error, level.sent) == (2, "boom", 7)


def test_stats_delta_from_grpc_json_and_http_forms():
    before = parse_statistics({"model_stats": [  # gRPC as_json: int64 as strings, zero fields omitted
        {"name": "ranker", "version": "1", "inference_count": "10", "execution_count": "5",
         "inference_stats": {"success": {"count": "10", "ns": "50000000"}, "queue": {"count": "10", "ns": "1000000"},
                             "compute_infer": {"count": "10", "ns": "30000000"}}}]})
    after = parse_statistics({"model_stats": [   # HTTP: plain ints
        {"name": "ranker", "version": "1", "inference_count": 30, "execution_count": 10,
         "inference_stats": {"success": {"count": 30, "ns": 150000000}, "fail": {"count": 0, "ns": 0},
                             "queue": {"count": 30, "ns": 5000000}, "compute_input": {"count": 30, "ns": 2000000},
                             "compute_infer": {"count": 30, "ns": 90000000},
                             "compute_output": {"count": 30, "ns": 2000000}}}]})
    d = stats_delta(before, after)["ranker"]
    assert (d["requests"], d["executions"], d["avg_batch"]) == (20, 5, 4.0)
    assert d["queue_ms"] == pytest.approx(0.2)          # 4 ms over 20 requests
    assert d["compute_ms"] == pytest.approx(3.2)        # (2 + 60 + 2) ms / 20
    assert d["total_ms"] == pytest.approx(5.0)
    idle = stats_delta(after, after)["ranker"]
    assert idle["requests"] == 0 and math.isnan(idle["queue_ms"])


def test_closed_loop_keeps_n_in_flight_and_stops_by_time():
    in_flight, peak, sent = [0], [0], []

    async def send(index):
        sent.append(index)
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        await asyncio.sleep(0.01)
        in_flight[0] -= 1

    async def snapshot():
        return len(sent)

    records, ws, we, snaps = asyncio.run(run_closed_loop(send, 3, 0.1, 0.3, snapshot=snapshot))
    assert peak[0] == 3 and in_flight[0] == 0
    assert sorted(sent) == list(range(len(sent)))       # indices 0..n-1, each once
    assert we - ws == pytest.approx(0.3) and max(r.start_s for r in records) < we
    level = summarize(records, ws, we, mode="concurrency", level=3)
    # 3 in flight / 10 ms = 300/s at best; the window arithmetic can land a float ulp above it
    assert level.errors == 0 and 150 < level.throughput_rps <= 300 * (1 + 1e-9)
    assert len(snaps) == 2 and snaps[0] < snaps[1]


def test_open_loop_sends_a_fixed_count_and_counts_queueing_from_the_schedule():
    calls = []

    async def send(index):
        calls.append(index)
        await asyncio.sleep(0.02)                        # 50/s capacity with one slot
        if index == 3:
            raise RuntimeError("bad user")

    records, ws, we, _ = asyncio.run(run_open_loop(send, 100.0, 0.0, 0.3, max_in_flight=1))
    assert sorted(calls) == list(range(30))             # ceil(100/s * 0.3 s), no more
    level = summarize(records, ws, ws + 1.0, mode="request_rate", level=100)
    assert level.errors == 1 and "bad user" in level.first_error
    # one slot at 50/s for a 100/s schedule: the last request waits ~0.3 s behind schedule
    assert level.latency_ms["max"] > 200 and level.latency_ms["p50"] > 50


def test_timeouts_are_errors():
    async def send(index):
        await asyncio.sleep(5)

    records, ws, we, _ = asyncio.run(run_closed_loop(send, 2, 0.0, 0.05, timeout_s=0.1))
    assert len(records) == 2 and all("timeout" in r.error for r in records)


def test_input_data_is_perf_analyzer_format():
    data = bench.perf_analyzer_input_data([5, 7], 10, {"user_id": [1], "top_n": [1]})
    assert data == {"data": [{"user_id": {"content": [5], "shape": [1]}, "top_n": {"content": [10], "shape": [1]}},
                             {"user_id": {"content": [7], "shape": [1]}, "top_n": {"content": [10], "shape": [1]}}]}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", "serve", *argv])


# ------------------------------------------------------------------ against the real server


def _users_of(input_data: dict) -> list[int]:
    return [entry["user_id"]["content"][0] for entry in input_data["data"]]


@pytest.mark.e2e
@pytest.mark.parametrize("protocol, batch_size", [("grpc", 1), ("http", 2)])
def test_bounded_load_against_the_real_server(e2e_paths, e2e_server, tmp_path, protocol, batch_size):
    from recstack.serving.client import TritonClient

    url = e2e_server.grpc_url if protocol == "grpc" else e2e_server.http_url
    users = bench.draw_users(e2e_paths, 101, seed=3)
    cfg = bench.BenchConfig(url=url, users=users, protocol=protocol, concurrency=[1, 4], batch_size=batch_size,
                            k=10, measurement_interval_s=2.0, warmup_s=0.5)
    report = bench.bench_serve(cfg)
    assert [lv.level for lv in report.levels] == [1, 4]
    # the steps of the exported ensemble (one fused model by default)
    assert report.steps == ["recommend_steps"]
    assert {name: report.input_dims[name] for name in ("user_id", "top_n")} == {"user_id": [1], "top_n": [1]}
    for lv in report.levels:
        assert lv.errors == 0, lv.first_error
        assert lv.requests > 0 and lv.throughput_rps > 0 and lv.client_cpu_ms > 0
        lat = lv.latency_ms
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        for model in [cfg.model, *report.steps]:       # time per step for every model of the ensemble
            step = lv.steps[model]
            assert step["requests"] > 0, model
            assert step["queue_ms"] >= 0 and step["compute_ms"] >= 0 and step["total_ms"] > 0, model

    files = bench.write_reports(report, tmp_path)
    assert open(files["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    body = json.loads(open(files["json"]).read())
    assert [lv["level"] for lv in body["levels"]] == [1, 4] and body["config"]["protocol"] == protocol
    assert all(f"-b {batch_size}" in c and files["input_data"] in c for c in body["perf_analyzer_commands"])
    table = bench.format_table(report)
    assert "p95 ms" in table and "server ms" in table and all(m in table for m in report.steps)

    # the input data holds the run's users, in order, whole requests only; replayed as perf_analyzer
    # groups them (-b B: B consecutive entries per request) the server answers each of them
    data = json.loads(open(files["input_data"]).read())
    replay = _users_of(data)
    assert replay == report.config.users and replay[:101] == users and len(replay) % batch_size == 0
    assert {e["top_n"]["content"][0] for e in data["data"]} == {10}
    with TritonClient(url, protocol=protocol) as client:
        for start in range(0, 6 * batch_size, batch_size):
            entries = data["data"][start:start + batch_size]
            inputs = {name: np.array([e[name]["content"] for e in entries], dtype=dtype)
                      for name, dtype in (("user_id", np.int64), ("top_n", np.int32))}
            out = client.infer(cfg.model, inputs, ["item_ids", "cold_start"])
            assert out["item_ids"].shape[0] == batch_size and not out["cold_start"].any()


@pytest.mark.e2e
def test_open_loop_against_the_real_server(e2e_paths, e2e_server):
    users = bench.draw_users(e2e_paths, 50, seed=4)
    cfg = bench.BenchConfig(url=e2e_server.grpc_url, users=users, request_rates=[20.0],
                            measurement_interval_s=1.5, warmup_s=0.5)
    (level,) = bench.bench_serve(cfg).levels
    assert level.errors == 0, level.first_error
    assert level.sent == 40 and 20 <= level.requests <= 40     # 20/s x 2 s issued; ~30 complete in the window


@pytest.mark.e2e
def test_cli_bench_serve(cli_env, e2e_paths, e2e_server, tmp_path, capsys):
    args = _parse(["--url", e2e_server.grpc_url, "--concurrency-range", "2", "--measurement-interval", "1",
                   "--warmup", "0.2", "--users", "20", "--out", str(tmp_path)])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    steps = json.loads((tmp_path / "bench_serve_grpc.json").read_text())["steps"]
    assert "req/s" in out and "p99 ms" in out and steps and all(step in out for step in steps)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bench_serve_grpc.json", "bench_serve_grpc.png", "bench_serve_grpc_input_data.json"]
    with pytest.raises(InputError, match="--batch-size"):
        args = _parse(["--url", e2e_server.grpc_url, "--batch-size", "4096", "--out", str(tmp_path)])
        args.handler(args)
