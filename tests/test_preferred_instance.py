"""`recstack export --preferred-instance` (issue 7): the first instance of each python model has
rate-limiter priority, so sequential requests run on one stub (its caches stay warm) and the
second stub takes only what overlaps.

The e2e test serves the ML-100K run's default export (started the way `recstack serve` does) and
a plain export of it, and reads each stub process's CPU time from /proc: under concurrency 1
nearly all of it is one stub's with the preferred instance, while two plain instances split it
about evenly; under concurrency 8 the spare stub works too. Both answer the same."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.ensembles.examples import SUM_INPUTS, SUM_OUTPUTS, SUM_STEP_CLASS
from recstack.ensembles.graph import FUSED_NAME, export_ensemble, recommendation_graph
from recstack.ensembles.model_repo import SPARE_INSTANCE_PRIORITY, write_python_model
from recstack.serving import bench
from recstack.serving.backends import RATE_LIMIT_OPTION, server_options
from recstack.serving.client import TritonClient
from recstack.serving.procfs import group_processes
from recstack.serving.server import start_server

SEQUENTIAL_SHARE = 0.85  # least share of stub CPU on the preferred stub at concurrency 1


def test_config_has_two_groups_and_the_server_gets_the_rate_limiter(tmp_path):
    write_python_model(tmp_path, "plain", SUM_STEP_CLASS, {}, SUM_INPUTS, SUM_OUTPUTS, instance_count=3)
    assert server_options(tmp_path) == ()
    write_python_model(tmp_path, "one", SUM_STEP_CLASS, {}, SUM_INPUTS, SUM_OUTPUTS, instance_count=1,
                       preferred_instance=True)  # nothing to prefer among one
    assert "rate_limiter" not in (tmp_path / "one" / "config.pbtxt").read_text()
    assert server_options(tmp_path) == ()
    write_python_model(tmp_path, "sum", SUM_STEP_CLASS, {}, SUM_INPUTS, SUM_OUTPUTS, instance_count=3,
                       preferred_instance=True)
    text = (tmp_path / "sum" / "config.pbtxt").read_text()
    assert text.count("kind: KIND_CPU") == 2
    assert "count: 1\n    kind: KIND_CPU\n    rate_limiter { priority: 1 }" in text
    assert f"count: 2\n    kind: KIND_CPU\n    rate_limiter {{ priority: {SPARE_INSTANCE_PRIORITY} }}" in text
    assert server_options(tmp_path) == (RATE_LIMIT_OPTION,)


def _stub_cpu_s(server_pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each python-backend stub of the server's process group."""
    return {p.pid: p.cpu_s for p in group_processes(server_pid) if p.is_stub}


def _load(server, users: list[int], concurrency: int, seconds: float) -> dict[int, float]:
    before = _stub_cpu_s(server.pid)
    report = bench.bench_serve(bench.BenchConfig(url=server.grpc_url, users=users, concurrency=[concurrency],
                                                 measurement_interval_s=seconds, warmup_s=0.5))
    after = _stub_cpu_s(server.pid)
    level = report.levels[0]
    assert level.errors == 0 and level.requests > 0, level.first_error
    return {pid: after[pid] - before.get(pid, 0.0) for pid in after}


def _shares(cpu: dict[int, float]) -> list[float]:
    total = sum(cpu.values())
    return sorted((c / total for c in cpu.values()), reverse=True)


@pytest.mark.e2e
def test_sequential_requests_stay_on_one_stub_and_load_spreads(e2e_paths, e2e_server, tmp_path):
    """The e2e server runs the default export (preferred instance); a plain export of the same run
    is the contrast: its two stubs share sequential requests."""
    assert "rate_limiter" in (e2e_paths.triton_repo / FUSED_NAME / "config.pbtxt").read_text()
    assert RATE_LIMIT_OPTION in e2e_server.extra_args
    export_ensemble(recommendation_graph(e2e_paths), tmp_path / "repo", preferred_instance=False)
    plain = start_server(tmp_path / "repo", e2e_paths.feature_repo)
    try:
        assert RATE_LIMIT_OPTION not in plain.extra_args
        users = bench.draw_users(e2e_paths, 200, seed=0)
        with TritonClient(e2e_server.grpc_url) as preferred_client, TritonClient(plain.grpc_url) as plain_client:
            for user in users[:20]:
                request = {"user_id": np.array([[user]], np.int64), "top_n": np.array([[10]], np.int32)}
                assert np.array_equal(preferred_client.infer("recommend", request, ["item_ids"])["item_ids"],
                                      plain_client.infer("recommend", request, ["item_ids"])["item_ids"])
        plain_sequential = _load(plain, users, concurrency=1, seconds=3.0)
    finally:
        plain.stop()
    sequential = _load(e2e_server, users, concurrency=1, seconds=3.0)
    concurrent = _load(e2e_server, users, concurrency=8, seconds=3.0)
    print(f"stub CPU s at concurrency 1: plain {plain_sequential}, preferred {sequential}; "
          f"preferred at concurrency 8: {concurrent}")
    assert len(plain_sequential) == len(sequential) == 2
    assert _shares(plain_sequential)[0] < 0.75, plain_sequential  # plain instances take turns
    assert max(sequential.values()) > 0.2 and _shares(sequential)[0] >= SEQUENTIAL_SHARE, sequential
    preferred_pid = max(sequential, key=sequential.get)
    spare = sum(cpu for pid, cpu in concurrent.items() if pid != preferred_pid)
    assert spare >= 0.05 * sum(concurrent.values()), concurrent
