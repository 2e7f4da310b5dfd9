"""The gateway's FastAPI application (`create_app`): the routes apps call, in front of the Triton
ensemble (pooled async gRPC), the event log and the run's catalogue. OpenAPI at ``/docs``."""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from recstack.ensembles.graph import ENSEMBLE_NAME
from recstack.errors import InputError
from recstack.features.live_items import DuplicateItem
from recstack.serving.gateway.catalogue import Catalogue
from recstack.serving.gateway.config import MAX_K, GatewayConfig
from recstack.serving.gateway.metrics import GatewayMetrics
from recstack.serving.gateway.schemas import (
    INT64, EventsIn, EventsOut, Health, NewItem, NewItemOut, NewUser, NewUserOut, RecommendedItem, Recommendations,
    SimilarItems,
)

OUTPUTS = ["item_ids", "scores", "cold_start", "explored", "model_version"]


class TritonUnavailable(RuntimeError):
    """Triton could not answer (down, restarting, timed out): a 503 for the app."""


class Recommender:
    """Calls the ``recommend`` ensemble over one pooled async gRPC channel."""

    def __init__(self, url: str, timeout_s: float):
        import tritonclient.grpc.aio as grpc_aio

        self._module = grpc_aio
        self.client = grpc_aio.InferenceServerClient(url=url)
        self.timeout_s = timeout_s

    async def top_n(self, user_id: int, n: int) -> dict[str, np.ndarray]:
        from tritonclient.utils import InferenceServerException

        inputs = [self._module.InferInput("user_id", [1, 1], "INT64"), self._module.InferInput("top_n", [1, 1], "INT32")]
        inputs[0].set_data_from_numpy(np.array([[user_id]], np.int64))
        inputs[1].set_data_from_numpy(np.array([[n]], np.int32))
        outputs = [self._module.InferRequestedOutput(name) for name in OUTPUTS]
        try:
            result = await self.client.infer(ENSEMBLE_NAME, inputs, outputs=outputs, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise TritonUnavailable(exc.message() if callable(getattr(exc, "message", None)) else str(exc)) from None
        return {name: result.as_numpy(name) for name in OUTPUTS}

    async def ready(self) -> bool:
        try:
            return bool(await self.client.is_model_ready(ENSEMBLE_NAME, client_timeout=self.timeout_s))
        except Exception:  # noqa: BLE001  unreachable -> not ready
            return False

    async def close(self) -> None:
        await self.client.close()


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
        state["items"] = ItemAdder(config.paths, config.live_items)
        state["events"] = EventService.for_run(config.paths, config.event_log, live_items=config.live_items).start()
        state["recommender"] = Recommender(config.triton_url, config.triton_timeout_s)
        metrics.watch_events(state["events"])
        try:
            yield
        finally:
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
    ) -> Recommendations:
        excluded = {int(x) for x in exclude.split(",") if x}
        out = await state["recommender"].top_n(user_id, min(MAX_K, k + len(excluded)))
        catalogue: Catalogue = state["catalogue"]
        if out["explored"].any():
            catalogue.refresh()  # titles of items added since the last refresh
        items = [RecommendedItem(item_id=int(i), title=catalogue.title(i), score=float(s) if np.isfinite(s) else None,
                                 explored=bool(e))
                 for i, s, e in zip(out["item_ids"][0], out["scores"][0], out["explored"][0])
                 if i >= 0 and int(i) not in excluded][:k]
        cold = bool(out["cold_start"][0, 0])
        explored = sum(item.explored for item in items)
        metrics.recommended(cold, len(items), explored)
        return Recommendations(user_id=user_id, items=items, cold_start=cold,
                               model_version=int(out["model_version"][0, 0]), explored=explored)

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
        ready = all(v == "ok" for v in checks.values())
        body = Health(status="ready" if ready else "not ready", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
