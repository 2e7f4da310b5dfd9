"""`recstack gateway`: serve the REST gateway (FastAPI + uvicorn) for one run, loopback by default."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from recstack.cliutil import add_dataset_argument
from recstack.paths import RunPaths
from recstack.serving.server import DEFAULT_GRPC_PORT

DEFAULT_PORT = 8080


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gateway", help="REST gateway for apps: recommendations, events, new users, similar items, metrics",
        description="Serve the gateway (OpenAPI at /docs) in front of a running tritonserver (`recstack serve`). "
                    "Write endpoints need the X-API-Key header when $RECSTACK_API_KEY is set.")
    add_dataset_argument(parser)
    parser.add_argument("--triton-url", default=f"127.0.0.1:{DEFAULT_GRPC_PORT}", help="Triton gRPC host:port")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--event-log", default=None,
                        help="event log URL (default: $RECSTACK_EVENT_LOG, else runs/<dataset>/events/log.db)")
    parser.add_argument("--experiments", type=Path, default=None,
                        help="A/B experiments file (YAML or JSON): variants, shares, salt (README: A/B experiments)")
    parser.add_argument("--exposure-log", default=None,
                        help="where shown lists are logged (default: runs/<dataset>/events/exposures.db, or "
                             "the Redis of a Redis --event-log)")
    parser.set_defaults(handler=run_gateway)


async def _check_experiment(config) -> None:
    from recstack.serving.gateway.app import Recommender, open_experiment

    recommender = Recommender(config.triton_url, config.triton_timeout_s)
    try:
        (await open_experiment(config, recommender)).close()
    finally:
        await recommender.close()


def run_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from recstack.serving.gateway import GatewayConfig, create_app

    config = GatewayConfig(RunPaths.for_dataset(args.dataset), args.triton_url, event_log=args.event_log,
                           experiments=args.experiments, exposure_log=args.exposure_log)
    if config.experiments is not None:  # a bad variant: one line and exit code 2, not a startup traceback
        asyncio.run(_check_experiment(config))
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level="warning")
    return 0
