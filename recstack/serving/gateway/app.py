"""The gateway's FastAPI application (`create_app`): the routes apps call, in front of the Triton
ensemble (pooled async gRPC), the event log and the run's catalogue. OpenAPI at ``/docs``."""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from recstack.ensembles.graph import ENSEMBLE_NAME
from recstack.errors import InputError
from recstack.ids import FIRST_CODE
from recstack.features.live_items import DuplicateItem
from recstack.serving.gateway.catalogue import Catalogue
from recstack.serving.gateway.config import MAX_K, GatewayConfig
from recstack.serving.gateway.experiment import ExperimentRouter
from recstack.serving.gateway.metrics import GatewayMetrics
from recstack.serving.gateway.reasons import REASON_OUTPUTS, Reasons
from recstack.serving.gateway.schemas import (
    INT64, EventsIn, EventsOut, Health, NewItem, NewItemOut, NewUser, NewUserOut, RecommendedItem, Recommendations,
    RequestContextOut, SimilarItems,
)
from recstack.serving.gateway.web import mount_web_page
from recstack.workflows.request_context import DEVICES, MAX_REQUEST_TIME, context_codes, device_code

OUTPUTS = ["item_ids", "scores", "cold_start", "explored", "store_fallback", "model_version", *REASON_OUTPUTS]
RERANK_DTYPES = {"diversity_lambda": np.float32, "freshness_weight": np.float32, "genre_cap": np.int32}
Device = Literal[DEVICES]  # type: ignore[valid-type]
log = logging.getLogger("recstack.gateway")


class TritonUnavailable(RuntimeError):
    """Triton could not answer (down, restarting, timed out): a 503 for the app."""


class RecommendationFailed(RuntimeError):
    """Triton answered with an error (a step of the ensemble raised for this request): a 500."""


UNAVAILABLE_STATUSES = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED")
"""gRPC statuses meaning Triton did not answer, as opposed to a request its models failed."""


RECONNECT_BACKOFF_MS = (100, 1000)
"""gRPC's first and longest wait between reconnects to Triton. Its defaults (1 s growing to 120 s)
kept the gateway failing for 2.6 s after a restarted tritonserver was ready (measured); capped
at 1 s it is back within a second of the server."""


def channel_options() -> list[tuple[str, int]]:
    """tritonclient's default gRPC channel options, with :data:`RECONNECT_BACKOFF_MS`."""
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
            ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1])]


class Recommender:
    """Calls the ``recommend`` ensemble over one pooled async gRPC channel."""

    def __init__(self, url: str, timeout_s: float):
        import tritonclient.grpc.aio as grpc_aio

        self._module = grpc_aio
        self.client = grpc_aio.InferenceServerClient(url=url, channel_args=channel_options())
        self.timeout_s = timeout_s

    async def top_n(self, user_id: int, n: int, model: str = ENSEMBLE_NAME, version: str = "",
                    extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The ensemble's outputs for one user; ``model`` / ``version``: an experiment's variant;
        ``extra``: further inputs ([1, 1] arrays: re-ranking settings, a variant's params)."""
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        arrays = {"user_id": np.array([[user_id]], np.int64), "top_n": np.array([[n]], np.int32), **(extra or {})}
        inputs = []
        for name, array in arrays.items():
            inputs.append(self._module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype)))
            inputs[-1].set_data_from_numpy(array)
        outputs = [self._module.InferRequestedOutput(name) for name in OUTPUTS]
        try:
            result = await self.client.infer(model, inputs, model_version=version, outputs=outputs,
                                             client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            text = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
            status = str(exc.status()) if callable(getattr(exc, "status", None)) else ""
            if status and status not in UNAVAILABLE_STATUSES:
                raise RecommendationFailed(text) from None
            raise TritonUnavailable(text) from None
        return {name: result.as_numpy(name) for name in OUTPUTS}

    async def input_specs(self, model: str, version: str = "") -> dict[str, str]:
        """``{input name: Triton datatype}`` from the served model's metadata (raises when not loaded)."""
        meta = await self.client.get_model_metadata(model, version, as_json=True, client_timeout=self.timeout_s)
        return {spec["name"]: spec["datatype"] for spec in meta.get("inputs", [])}

    async def ready(self) -> bool:
        try:
            return bool(await self.client.is_model_ready(ENSEMBLE_NAME, client_timeout=self.timeout_s))
        except Exception:  # noqa: BLE001  unreachable -> not ready
            return False

    async def close(self) -> None:
        await self.client.close()


async def open_experiment(config: GatewayConfig, recommender: Recommender) -> ExperimentRouter | None:
    """The experiment of ``config.experiments``, checked against the running server (None: no experiment)."""
    if config.experiments is None:
        return None
    from recstack.serving.ab.experiments import load_experiment
    from recstack.serving.ab.exposures import open_exposure_log

    router = ExperimentRouter(load_experiment(config.experiments),
                              open_exposure_log(config.paths, config.exposure_log, config.event_log))
    try:
        await router.check(recommender)
    except BaseException:
        router.close()
        raise
    return router


def _request_seconds(value: datetime | None) -> int:
    """The request time as unix seconds (now when not given); InputError (422) for a naive or out-of-range time."""
    if value is None:
        return int(time.time())
    if value.tzinfo is None:
        raise InputError("request_time: give a time zone (e.g. 2026-11-26T18:00:00Z) or unix seconds")
    seconds = int(value.timestamp())
    if not 0 <= seconds <= MAX_REQUEST_TIME:
        raise InputError(f"request_time: {value.isoformat()} is outside 1970-01-01 .. 2100-01-01 UTC")
    return seconds


def create_app(config: GatewayConfig) -> FastAPI:
    """The gateway for one run: see the module docstring and the README's "Gateway" section."""
    from recstack.events import EventService
    from recstack.features import OnlineFeatures
    from recstack.serving.items import ItemAdder

    state: dict[str, Any] = {}
    metrics = GatewayMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["catalogue"] = Catalogue(config.paths, config.live_items)
        state["reasons"] = Reasons(state["catalogue"])
        state["items"] = ItemAdder(config.paths, config.live_items)
        state["events"] = EventService.for_run(config.paths, config.event_log, live_items=config.live_items).start()
        state["recommender"] = Recommender(config.triton_url, config.triton_timeout_s)
        metrics.watch_events(state["events"])
        state["experiment"] = await open_experiment(config, state["recommender"])
        try:
            yield
        finally:
            if state["experiment"] is not None:
                state["experiment"].close()
            await state["recommender"].close()
            state["events"].close()
            state["items"].close()

    app = FastAPI(title="recstack gateway", version="1", lifespan=lifespan,
                  description="Recommendations, events and new users in front of the recstack Triton ensemble.")

    @app.middleware("http")
    async def observe(request: Request, call_next):  # noqa: ANN001
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.observe(getattr(route, "path", "unmatched"), request.method, response.status_code,
                        time.perf_counter() - start)
        return response

    @app.exception_handler(DuplicateItem)
    async def duplicate_item(_: Request, exc: DuplicateItem) -> JSONResponse:
        metrics.error("conflict")
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        metrics.error("input")
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RecommendationFailed)
    async def recommendation_failed(_: Request, exc: RecommendationFailed) -> JSONResponse:
        metrics.error("recommendation")
        return JSONResponse({"detail": f"recommendation failed: {exc}"}, status_code=500)

    @app.exception_handler(TritonUnavailable)
    async def triton_error(_: Request, exc: TritonUnavailable) -> JSONResponse:
        metrics.error("triton")
        return JSONResponse({"detail": f"recommendation service unavailable: {exc}"}, status_code=503)

    def require_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
        # compare_digest: the time taken does not tell how much of a guessed key was right
        if config.api_key is not None and not hmac.compare_digest((x_api_key or "").encode(),
                                                                  config.api_key.encode()):
            metrics.error("auth")
            raise HTTPException(status_code=401, detail="X-API-Key: missing or wrong")

    @app.get("/v1/users/{user_id}/recommendations", response_model=Recommendations)
    async def recommendations(
        user_id: Annotated[int, PathParam(**INT64)],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        exclude: Annotated[str, Query(max_length=2000, pattern=r"^(-?\d{1,19}(,-?\d{1,19})*)?$",
                                      description="comma-separated raw item ids not to return")] = "",
        diversity_lambda: Annotated[float | None, Query(ge=0, le=1, description="MMR lambda: 1 = ranker order, "
                                                        "lower = more diverse (default: the export's)")] = None,
        freshness_weight: Annotated[float | None, Query(ge=0, le=100, description="weight of time-decayed "
                                                        "popularity (default: the export's)")] = None,
        genre_cap: Annotated[int | None, Query(ge=0, le=MAX_K, description="most items per genre, 0 = no cap "
                                               "(default: the export's)")] = None,
        request_time: Annotated[datetime | None, Query(
            description="when the request happens: ISO 8601 with a time zone or unix seconds (default: now); "
                        "its hour and weekday in UTC are the ranker's context")] = None,
        device: Annotated[Device | None, Query(description="the app's device / platform")] = None,
    ) -> Recommendations:
        excluded = {int(x) for x in exclude.split(",") if x}
        when = _request_seconds(request_time)
        # both context inputs always sent (device 0 = none): Triton's dynamic batching joins only
        # requests that carry the same inputs
        extra = {"request_time": np.array([[when]], np.int64), "device": np.array([[device_code(device)]], np.int64)}
        extra.update({name: np.array([[value]], RERANK_DTYPES[name]) for name, value in (
            ("diversity_lambda", diversity_lambda), ("freshness_weight", freshness_weight), ("genre_cap", genre_cap))
            if value is not None})
        router: ExperimentRouter | None = state["experiment"]
        route = router.route(user_id) if router is not None else None
        # an experiment's params win over the query's: a variant is what its users are served
        variant = {"model": route.model, "version": route.version, "extra": {**extra, **route.inputs}} if route \
            else {"extra": extra}
        out = await state["recommender"].top_n(user_id, min(MAX_K, k + len(excluded)), **variant)
        catalogue: Catalogue = state["catalogue"]
        if out["explored"].any():
            catalogue.refresh()  # titles of items added since the last refresh
        items = [RecommendedItem(item_id=int(i), title=catalogue.title(i), score=float(s) if np.isfinite(s) else None,
                                 explored=bool(e), reason=r)
                 for i, s, e, r in zip(out["item_ids"][0], out["scores"][0], out["explored"][0],
                                       state["reasons"].for_list(out))
                 if i >= 0 and int(i) not in excluded][:k]
        cold = bool(out["cold_start"][0, 0])
        explored = sum(item.explored for item in items)
        fallback = "popularity" if out["store_fallback"][0, 0] else None
        metrics.recommended(cold, len(items), explored, fallback)
        metrics.context(device)
        hour, weekday, _ = context_codes([when])[0] - FIRST_CODE
        log.info("recommendations user=%d request_time=%d device=%s items=%d", user_id, when, device or "-", len(items))
        if route is not None:  # durable before the answer, like any event
            await run_in_threadpool(router.log_exposure, route, user_id, [item.item_id for item in items])
        return Recommendations(user_id=user_id, items=items, cold_start=cold,
                               model_version=int(out["model_version"][0, 0]), explored=explored, fallback=fallback,
                               experiment=router.experiment.name if route is not None else None,
                               variant=route.variant.name if route is not None else None,
                               context=RequestContextOut(request_time=when, hour=int(hour), weekday=int(weekday),
                                                         device=device))

    @app.post("/v1/items", response_model=NewItemOut, status_code=201, dependencies=[Depends(require_key)],
              responses={409: {"description": "the item is in the catalogue already"}})
    async def post_item(body: NewItem) -> NewItemOut:
        (added,) = await run_in_threadpool(state["items"].add, [body.model_dump()])
        metrics.items_added.inc()
        await run_in_threadpool(state["catalogue"].refresh, True)
        return NewItemOut(item_id=added.item_id, seq=added.seq, added_at=added.added_at)

    @app.post("/v1/events", response_model=EventsOut, dependencies=[Depends(require_key)])
    async def post_events(body: EventsIn) -> EventsOut:
        events = [e.model_dump() for e in body.events]
        result = await run_in_threadpool(state["events"].append, events)
        metrics.events(result.accepted, result.duplicates)
        return EventsOut(accepted=result.accepted, duplicates=result.duplicates, offsets=result.offsets)

    @app.post("/v1/users", response_model=NewUserOut, status_code=201, dependencies=[Depends(require_key)])
    async def post_user(body: NewUser) -> NewUserOut:
        catalogue: Catalogue = state["catalogue"]
        unknown = [i for i in body.items if catalogue.encode(i) is None]
        if unknown:
            raise InputError(f"items: {unknown} are not in the catalogue")
        picked = list(dict.fromkeys(body.items + catalogue.onboarding_items(body.genres, config.onboarding_per_genre)))
        now = time.time()
        events = [{"event_id": f"onboarding:{body.user_id}:{item}", "user": body.user_id, "item": item,
                   "type": "like", "timestamp": now} for item in picked]
        if events:  # applied before answering: the next recommendations use them
            await run_in_threadpool(state["events"].append, events, True)
        return NewUserOut(user_id=body.user_id, onboarding_items=picked)

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarItems)
    async def similar(item_id: Annotated[int, PathParam(**INT64)],
                      k: Annotated[int, Query(ge=1, le=MAX_K)] = 10) -> SimilarItems:
        catalogue: Catalogue = state["catalogue"]
        try:
            found = catalogue.similar(item_id, k)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"item_id: {item_id} is not in the catalogue") from None
        return SimilarItems(item_id=item_id, items=[RecommendedItem(item_id=i, title=catalogue.title(i), score=s)
                                                    for i, s in found])

    @app.get("/v1/genres", response_model=list[str])
    async def genres() -> list[str]:
        """The catalogue's genres (what `POST /v1/users` accepts in ``genres``)."""
        return state["catalogue"].genre_names

    mount_web_page(app)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health)
    async def readyz() -> JSONResponse:
        checks = {"triton": "ok" if await state["recommender"].ready() else "not ready"}
        try:
            await run_in_threadpool(OnlineFeatures(config.paths.feature_repo).users, [0])
            checks["online_store"] = "ok"
        except Exception as exc:  # noqa: BLE001  report, never raise
            checks["online_store"] = f"error: {type(exc).__name__}"
        checks["event_log"] = "ok" if state["events"].running else "consumer stopped"
        # an unreachable online store degrades the lists (popularity fallback) but does not stop them
        # and events stay durable in the log until it is back, so the gateway stays in rotation
        ready = all(v == "ok" for name, v in checks.items() if name != "online_store")
        status = "not ready" if not ready else "ready" if checks["online_store"] == "ok" else "degraded"
        body = Health(status=status, checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
