"""What the gateway adds: the same users' top-10 straight from Triton (gRPC) and through the gateway
(HTTP + JSON + titles), sequentially, in one run; and events/s accepted through `POST /v1/events`.

    python benchmarks/gateway_overhead.py --home /tmp/hm --dataset ml-100k --requests 300

Starts a real tritonserver and the gateway (uvicorn, in this process) on loopback ports.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from recstack.paths import RunPaths
from recstack.serving import bench
from recstack.serving.client import TritonClient
from recstack.serving.gateway import GatewayConfig, create_app
from recstack.serving.recommend import recommend
from recstack.serving.server import start_server
from recstack.serving.tritonserver import free_port


def timed(fn, users: list[int]) -> np.ndarray:
    out = []
    for user in users:
        start = time.perf_counter()
        fn(user)
        out.append((time.perf_counter() - start) * 1e3)
    return np.array(out)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("."))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--event-batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=500, help="events per POST")
    args = parser.parse_args()
    paths = RunPaths.for_dataset(args.dataset, home=args.home)
    users = bench.draw_users(paths, args.requests, seed=1)
    server = start_server(paths.triton_repo, paths.feature_repo)
    port = free_port()
    gateway = uvicorn.Server(uvicorn.Config(create_app(GatewayConfig(paths, server.grpc_url, api_key=None)),
                                            host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=gateway.run, daemon=True)
    thread.start()
    while not gateway.started:
        time.sleep(0.05)
    try:
        with TritonClient(server.grpc_url) as triton, httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            for user in users[:20]:  # warm both paths
                recommend(triton, [user], k=10)
                http.get(f"/v1/users/{user}/recommendations")
            direct = timed(lambda u: recommend(triton, [u], k=10), users)
            via = timed(lambda u: http.get(f"/v1/users/{u}/recommendations").raise_for_status(), users)
            first_user = 10**9
            sent, start = 0, time.perf_counter()
            for b in range(args.event_batches):
                events = [{"event_id": f"bench-{start}-{b}-{i}", "user": first_user + i % 1000, "item": 50 + i % 100,
                           "type": "view"} for i in range(args.batch)]
                sent += http.post("/v1/events", json={"events": events}).raise_for_status().json()["accepted"]
            rate = sent / (time.perf_counter() - start)
    finally:
        gateway.should_exit = True
        thread.join(timeout=30)
        server.stop()
    print("| path | p50 ms | p95 ms | p99 ms | x direct p50 |")
    print("|---|---|---|---|---|")
    for name, t in (("Triton gRPC direct (baseline)", direct), ("gateway HTTP (JSON, titles)", via)):
        print(f"| {name} | {np.percentile(t, 50):.2f} | {np.percentile(t, 95):.2f} | {np.percentile(t, 99):.2f} | "
              f"{np.percentile(t, 50) / np.percentile(direct, 50):.2f}x |")
    print(f"\nPOST /v1/events: {sent} events in batches of {args.batch}: {rate:,.0f} events/s accepted (durable)")


if __name__ == "__main__":
    main()
