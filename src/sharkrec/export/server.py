"""HTTP serving: ``POST /predict`` (JSON rows of raw values → scores), ``GET /health``, the KServe v2
routes and ``GET /metrics``.

Request ``{"rows": [{"C1": "68fd1e64", "I1": 3, "genres": ["Drama", "War"]}, ...]}``; response
``{"tasks": ["label"], "scores": [[0.031], ...]}``. Bad requests never reach the model:

- malformed JSON, a value of the wrong type (an object, a boolean), no or too many rows → 422
  with the pydantic location of the problem;
- a field the schema does not know, a dense value that is not a number, a list for a
  single-value field → 400 naming the row and the field.

The body is parsed and type-checked in one pass (pydantic's JSON validator) and the response is
written as JSON bytes directly. Concurrent requests are batched: each request is validated in its
handler, then queued; one worker takes every waiting request, gathers more for up to
``max_wait_ms`` or until ``max_batch_rows`` rows, and on a single model thread encodes them with
the training cell rules (:class:`~sharkrec.export.records.RecordEncoder`, no pandas) and scores
them as one batch. If the merged rows do not encode, each request is encoded alone: a bad one gets
its 400, the others their scores.

The same model answers the Open Inference Protocol (KServe v2 REST, :mod:`sharkrec.export.oip`):
``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``GET /v2/models/{name}`` (metadata: one
input per schema field, one FP32 output per task), ``/v2/models/{name}/ready`` and ``POST
/v2/models/{name}/infer`` (column tensors, turned into rows and queued with the ``/predict``
requests, so the scores are the same). ``name`` is the artifact directory's name unless
:func:`create_app` is given one; an unknown name is a 404, a bad tensor a 400, both as
``{"error": ...}``.

``GET /metrics`` is Prometheus text (:mod:`sharkrec.export.metrics`): requests by endpoint and
status, request latency and rows per model batch (histograms), queue depth, model load seconds and
the artifact's manifest digest (``sharkrec_artifact_info``).

A user-model artifact (:mod:`sharkrec.export.user_artifact`) is served by :func:`create_user_app`:
``{"inputs": [arg_1, ...]}`` (one JSON value per positional argument of the model's forward, tensors
as nested lists) → ``{"output": ...}`` (the model's output, tensors as nested lists); a value that
does not fit the exported inputs gets a 400 naming it.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Union

import numpy as np
import orjson
import pydantic_core
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError
from torch import nn

from sharkrec.data.batch import Batch
from sharkrec.errors import ConfigError, DataError, SharkrecError
from sharkrec.export import metrics as prom
from sharkrec.export.engine import ServingModel
from sharkrec.export.oip import model_metadata, request_rows
from sharkrec.export.records import RecordEncoder

#: one cell: a string or number, a list of them (multi-hot), or null (missing)
Cell = Union[StrictStr, StrictInt, StrictFloat, None, list[Union[StrictStr, StrictInt]]]  # noqa: UP007


class PredictRequest(BaseModel):
    """Rows of raw field values, keyed by schema field name."""

    model_config = ConfigDict(extra="forbid")
    rows: list[dict[str, Cell]] = Field(min_length=1)


_CELL_TYPES = frozenset({str, int, float, type(None), list})
_TOKEN_TYPES = frozenset({str, int})


def json_rows(raw: bytes) -> list[dict[str, Any]] | None:
    """The rows of a ``/predict`` body, read by orjson, when every part has the shape and types
    :class:`PredictRequest` accepts; ``None`` for anything else (pydantic then names the problem). The
    same acceptance as the pydantic model, at a fraction of its cost for many rows."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    rows = body.get("rows") if type(body) is dict and len(body) == 1 else None
    if type(rows) is not list or not rows or set(map(type, rows)) != {dict}:
        return None
    for row in rows:
        types = set(map(type, row.values()))
        if not types <= _CELL_TYPES:
            return None
        if list in types and not all(set(map(type, cell)) <= _TOKEN_TYPES
                                     for cell in row.values() if type(cell) is list):
            return None
    return rows


class PredictResponse(BaseModel):
    """One list of T probabilities per row, in the order of ``tasks``."""

    tasks: list[str]
    scores: list[list[float]]


class Overloaded(Exception):
    """The request queue is full: answered 503 with ``Retry-After`` instead of a wait without bound."""

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=503, content={"error": str(self)}, headers={"Retry-After": str(RETRY_AFTER_S)})


RETRY_AFTER_S = 1


class BodyLimit:
    """ASGI middleware answering 413 to a request body over ``max_bytes`` (declared by Content-Length: refused
    at the route's first read, before any byte is read; or counted while a chunked body arrives), before the
    route parses it."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = prom.content_length(scope)
        too_long = declared is not None and declared > self.max_bytes
        seen = [0]
        started = [False]

        async def counted() -> dict[str, Any]:  # the route's first read fails: routed (metrics), nothing read
            if too_long:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.max_bytes:
                    raise _TooLarge
            return message

        async def watch(message: dict[str, Any]) -> None:
            started[0] = started[0] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except _TooLarge:
            if not started[0]:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = orjson.dumps({"error": f"the request body is over {self.max_bytes} bytes; send fewer "
                                               "rows per request (sharkrec serve --max-body-bytes to raise it)"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class FastRoute:
    """ASGI middleware answering ``POST path`` with ``answer(body) -> Response`` directly, without the framework's
    request object, dependency solving and exception layers (most of the server's CPU per one-row request);
    everything else goes on to the app. ``route`` is recorded in the scope, as the router would, so the metrics
    count the request under its route."""

    def __init__(self, app: Any, path: str, answer: Callable[[bytes], Any], route: Any) -> None:
        self.app = app
        self.path = path
        self.answer = answer
        self.route = route

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        response = await self.answer(b"".join(chunks))
        await response(scope, receive, send)


class Batcher:
    """Gathers the rows of concurrent requests into batches for one model thread (encode, score)."""

    def __init__(self, model: ServingModel, max_batch_rows: int, max_wait_ms: float, max_queue: int = 1024) -> None:
        self.model = model
        self.max_batch_rows = max_batch_rows
        self.max_queue = max_queue  # requests waiting; one more is refused (503) instead of waiting longer
        self.refused = 0
        self.max_wait_s = max_wait_ms / 1000.0
        self.batches = 0
        self.rows = 0
        self.encoder = RecordEncoder(model)  # used on the model thread only
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sharkrec-model")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[list[dict[str, Any]], asyncio.Future[np.ndarray]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.on_batch: Callable[[int], None] | None = None  # called with the rows of every model batch
        self.arriving = 0  # requests whose body is read and being checked, not yet queued

    def queue_depth(self) -> int:
        """Requests waiting for the model thread (not counting the batch being scored)."""
        return 0 if self._queue is None else self._queue.qsize()

    async def predict(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """(N, T) probabilities of raw ``rows`` (JSON records), scored in a batch with whatever else is waiting.

        Raises :class:`DataError` naming the row and field when ``rows`` break the schema's rules.
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._queue is None or self._worker is None or self._worker.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._run(self._queue))
        if self._queue.qsize() >= self.max_queue:
            self.refused += 1
            raise Overloaded(f"{self._queue.qsize()} requests are waiting for the model (the limit is "
                             f"{self.max_queue}); retry after a second, or add workers")
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.put_nowait((rows, future))
        return await future

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False)

    async def _run(self, queue: asyncio.Queue[tuple[list[dict[str, Any]], asyncio.Future[np.ndarray]]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
            size = self._drain(queue, items, len(items[0][0]))
            # the adaptive window: wait only for requests already read and being checked by their handlers
            # (``arriving``), one event-loop turn at a time, never past ``max_wait_ms``; an idle server answers
            # at once, a loaded one batches whatever has arrived while the model thread was busy
            deadline = loop.time() + self.max_wait_s
            while self.arriving > 0 and size < self.max_batch_rows and loop.time() < deadline:
                await asyncio.sleep(0)
                size = self._drain(queue, items, size)
            try:
                answers = await loop.run_in_executor(self._executor, self._score_requests, [r for r, _ in items])
            except Exception as exc:  # answer every waiting request; the worker keeps running
                answers = [exc] * len(items)
            self.batches += 1
            scored = sum(len(a) for a in answers if isinstance(a, np.ndarray))
            self.rows += scored
            if self.on_batch is not None:
                self.on_batch(scored)
            for (_, future), answer in zip(items, answers, strict=True):
                if future.done():
                    continue
                if isinstance(answer, Exception):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)

    def _drain(self, queue: asyncio.Queue[Any], items: list[Any], size: int) -> int:
        """Move the waiting requests into ``items`` (up to ``max_batch_rows`` rows); the batch's rows."""
        while size < self.max_batch_rows and not queue.empty():
            items.append(queue.get_nowait())
            size += len(items[-1][0])
        return size

    def _score_requests(self, requests: list[list[dict[str, Any]]]) -> list[np.ndarray | Exception]:
        """Per request: its (N, T) scores, or the :class:`DataError` of its first bad row."""
        encode = self.encoder.encode
        try:
            scores = self._score(encode([row for rows in requests for row in rows]))
        except DataError:  # find the bad request(s); score the others together
            answers: list[DataError | None] = []
            for rows in requests:
                try:
                    encode(rows)
                    answers.append(None)
                except DataError as exc:
                    answers.append(exc)
            good = [row for rows, answer in zip(requests, answers, strict=True) if answer is None for row in rows]
            scores = self._score(encode(good)) if good else np.zeros((0, 0))
            out: list[np.ndarray | Exception] = []
            start = 0
            for answer, rows in zip(answers, requests, strict=True):
                if answer is None:
                    out.append(scores[start:start + len(rows)])
                    start += len(rows)
                else:
                    out.append(answer)
            return out
        bounds = np.cumsum([0, *(len(rows) for rows in requests)])
        return [scores[a:b] for a, b in itertools.pairwise(bounds)]

    def _score(self, batch: Batch) -> np.ndarray:
        return self.model.predict_proba(batch).numpy()


def create_app(artifact: str | os.PathLike[str] | ServingModel, *, max_batch_rows: int = 4096,
               max_wait_ms: float = 2.0, max_request_rows: int = 10000, name: str | None = None,
               max_queue: int = 1024, max_body_bytes: int = 16 << 20,
               cache_dir: str | os.PathLike[str] | None = None, access_log: bool = False) -> FastAPI:
    """A FastAPI app serving ``artifact`` (a path, a loaded :class:`ServingModel` or a user model's
    :class:`~sharkrec.export.user_artifact.UserServingModel`).

    ``name`` is the model's name in the v2 routes (``/v2/models/{name}``): by default the artifact
    directory's name (``model`` for an artifact passed already loaded). ``max_queue`` requests may wait for
    the model; the next gets 503 with ``Retry-After``. A body over ``max_body_bytes`` gets 413 unread.
    ``cache_dir``: map the tables from a serving cache there (:func:`~sharkrec.export.artifact.load_artifact`),
    so processes serving one artifact share them. ``access_log``: one JSON line per request on stderr.
    """
    from sharkrec.export.artifact import load_artifact

    if max_batch_rows < 1 or max_request_rows < 1 or not max_wait_ms >= 0 or max_queue < 1 or max_body_bytes < 1:
        raise ConfigError("max_batch_rows, max_request_rows, max_queue and max_body_bytes must be >= 1 and "
                          "max_wait_ms >= 0")
    started = time.perf_counter()
    model = artifact if isinstance(artifact, nn.Module) else load_artifact(artifact, cache_dir=cache_dir)
    load_seconds = math.nan if isinstance(artifact, nn.Module) else time.perf_counter() - started
    if not isinstance(model, ServingModel):
        return create_user_app(model)
    if name is None:
        name = "model" if isinstance(artifact, nn.Module) else Path(artifact).resolve().name
    if not name or "/" in name:
        raise ConfigError(f"model name {name!r} is not usable in a URL; give a name without '/'")
    backend = model.embedding.backend  # builds or loads the lookup kernel now, not in the first request's handler
    batcher = Batcher(model, max_batch_rows, max_wait_ms, max_queue)
    registry, requests, latency = _server_metrics(model, batcher, load_seconds, _artifact_id(artifact, model))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.stop()

    app = FastAPI(title="sharkrec", lifespan=lifespan)
    app.state.model = model
    app.state.batcher = batcher
    app.state.model_name = name

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(registry.render(), media_type=prom.CONTENT_TYPE)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid(exc.errors())

    @app.exception_handler(SharkrecError)
    async def bad_data(request: Request, exc: SharkrecError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": str(exc)})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "format_version": model.manifest.get("version"), "tasks": list(model.task_names),
                "fields": list(model.schema.sparse_names) + list(model.schema.dense_names),
                "batches": batcher.batches, "rows": batcher.rows, "refused": batcher.refused,
                "lookup": backend, "embedding_bytes": model.embedding.embedding_bytes()}

    tasks = list(model.task_names)
    body_schema = {"content": {"application/json": {"schema": PredictRequest.model_json_schema()}}, "required": True}

    async def predict_answer(raw: bytes) -> Response:
        """The answer to a ``/predict`` body: scores, or the 422 / 400 / 503 of a bad or refused request."""
        batcher.arriving += 1
        try:
            rows = json_rows(raw)
            if rows is None:  # not plain JSON rows of cells: pydantic gives the 422's locations
                try:
                    rows = PredictRequest.model_validate_json(raw).rows
                except ValidationError as exc:
                    return invalid([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()])
        finally:
            batcher.arriving -= 1
        if len(rows) > max_request_rows:
            return JSONResponse(status_code=400, content={"error": f"the request has {len(rows)} rows; send at most "
                                                                   f"{max_request_rows} per request"})
        try:
            scores = await batcher.predict(rows)  # a bad row fails this request alone
        except SharkrecError as exc:
            return JSONResponse(status_code=400, content={"error": str(exc)})
        except Overloaded as exc:
            return exc.response()
        return Response(orjson.dumps({"tasks": tasks, "scores": scores.astype(np.float64)},
                                     option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    # the body is read and validated in one pass, instead of FastAPI's json.loads + model + response model; the
    # ``FastRoute`` middleware answers POST /predict with the same function without the framework's routing
    @app.post("/predict", response_model=PredictResponse, openapi_extra={"requestBody": body_schema})
    async def predict(request: Request) -> Response:
        return await predict_answer(await request.body())

    route = next(r for r in app.router.routes if getattr(r, "path", None) == "/predict")
    app.add_middleware(FastRoute, path="/predict", answer=predict_answer, route=route)  # inside metrics and limits

    _add_v2_routes(app, model, batcher, name, max_request_rows)
    # middleware order, outermost first: metrics (and the access log), the body limit, the fast routes
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(prom.RequestMetrics, requests=requests, latency=latency,  # outermost: counts 413s too
                       log=prom.access_line if access_log else None)
    return app


def _artifact_id(artifact: str | os.PathLike[str] | ServingModel, model: ServingModel) -> str:
    """The artifact's ``manifest.sha256`` digest (checked by the load), or for an artifact given loaded
    ``json-sha256:`` + the sha256 of its manifest as sorted-key JSON."""
    from sharkrec.export.artifact import DIGEST, artifact_dir

    if not isinstance(artifact, nn.Module):
        digest = artifact_dir(artifact) / DIGEST
        if digest.is_file():
            return digest.read_text(encoding="ascii").split()[0]
        return "none"  # an artifact written before the digest existed
    text = json.dumps(model.manifest, sort_keys=True, default=str).encode()
    return "json-sha256:" + hashlib.sha256(text).hexdigest()


def _server_metrics(model: ServingModel, batcher: Batcher, load_seconds: float,
                    artifact_id: str) -> tuple[prom.Registry, prom.Counter, prom.Histogram]:
    """The app's metrics registry; the batcher reports its batch sizes into it."""
    registry = prom.Registry()
    requests = registry.add(prom.Counter("sharkrec_http_requests_total",
                                         "HTTP requests answered, by endpoint and status.", ("endpoint", "status")))
    latency = registry.add(prom.Histogram("sharkrec_http_request_duration_seconds",
                                          "HTTP request latency in seconds, by endpoint.", prom.LATENCY_BUCKETS,
                                          ("endpoint",)))
    batch_rows = registry.add(prom.Histogram("sharkrec_batch_rows", "Rows scored per model batch.",
                                             prom.ROWS_BUCKETS))
    batcher.on_batch = batch_rows.observe
    registry.add(prom.Gauge("sharkrec_queue_depth", "Requests waiting for the model thread.",
                            function=batcher.queue_depth))
    registry.add(prom.Gauge("sharkrec_model_load_seconds",
                            "Seconds to load the artifact (NaN when given a loaded model).",
                            function=lambda: load_seconds))
    info = registry.add(prom.Gauge("sharkrec_artifact_info", "The served artifact: its manifest digest and version.",
                                   ("digest", "format_version")))
    info.set(1, artifact_id, str(model.manifest.get("version")))
    return registry, requests, latency


def _add_v2_routes(app: FastAPI, model: ServingModel, batcher: Batcher, name: str, max_request_rows: int) -> None:
    """The Open Inference Protocol (KServe v2) REST routes; errors are ``{"error": ...}`` (400, or 404 for an
    unknown model)."""
    from sharkrec import __version__

    metadata = model_metadata(model, name, None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": message})

    def unknown(model_name: str) -> JSONResponse:
        return error(404, f"model {model_name!r} is not served here; this server serves {name!r}")

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "sharkrec", "version": __version__, "extensions": []}

    @app.get("/v2/health/live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, Any]:
        return {"ready": True}  # the model is loaded before the app exists

    @app.get("/v2/models/{model_name}")
    async def v2_metadata(model_name: str) -> Any:
        return metadata if model_name == name else unknown(model_name)

    @app.get("/v2/models/{model_name}/ready")
    async def v2_model_ready(model_name: str) -> Any:
        return {"name": name, "ready": True} if model_name == name else unknown(model_name)

    async def infer_answer(raw: bytes) -> Response:
        """The answer to a v2 infer body: FP32 output tensors, or a 400 / 503 ``{"error": ...}``."""
        batcher.arriving += 1
        try:
            body = orjson.loads(raw)
            rows, outputs = request_rows(model, body, max_request_rows)
        except orjson.JSONDecodeError as exc:
            return error(400, f"the request body is not JSON ({exc}); send a v2 infer request object")
        except DataError as exc:
            return error(400, str(exc))
        finally:
            batcher.arriving -= 1
        try:
            scores = await batcher.predict(rows)  # DataError: a value the encoder rejects
        except DataError as exc:
            return error(400, str(exc))
        except Overloaded as exc:
            return exc.response()
        column = {task: i for i, task in enumerate(model.task_names)}
        answer: dict[str, Any] = {"model_name": name}
        if isinstance(body, dict) and "id" in body:
            answer["id"] = body["id"]
        answer["outputs"] = [{"name": task, "datatype": "FP32", "shape": [len(rows)],
                              "data": scores[:, column[task]].tolist()} for task in outputs]
        return Response(orjson.dumps(answer), media_type="application/json")

    @app.post("/v2/models/{model_name}/infer")
    async def v2_infer(model_name: str, request: Request) -> Response:
        if model_name != name:
            return unknown(model_name)
        return await infer_answer(await request.body())

    route = next(r for r in app.router.routes if getattr(r, "path", None) == "/v2/models/{model_name}/infer")
    app.add_middleware(FastRoute, path=f"/v2/models/{name}/infer", answer=infer_answer, route=route)


class UserPredictRequest(BaseModel):
    """A user model's inputs: one JSON value per positional argument of its forward (tensors as nested lists)."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[Any] = Field(min_length=1)


def create_user_app(model: Any) -> FastAPI:
    """The app of a user-model artifact (:class:`~sharkrec.export.user_artifact.UserServingModel`):
    ``POST /predict`` takes ``{"inputs": [...]}`` and answers ``{"output": ...}``; each request is scored as
    its own batch on one model thread."""
    from sharkrec.export.user_artifact import output_json

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sharkrec-model")
    counts = {"requests": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        executor.shutdown(wait=False)

    app = FastAPI(title="sharkrec", lifespan=lifespan)
    app.state.model = model

    @app.exception_handler(SharkrecError)
    async def bad_data(request: Request, exc: SharkrecError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": str(exc)})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "kind": model.manifest.get("kind"), "format_version": model.manifest.get("version"),
                "tasks": list(model.task_names), "fields": list(model.fields.names),
                "inputs": model.input_tensors, "requests": counts["requests"], "lookup": model.embedding.backend,
                "embedding_bytes": model.embedding.embedding_bytes()}

    def score(arguments: list[Any]) -> bytes:
        output = model(*model.parse_inputs(arguments))
        return pydantic_core.to_json({"output": output_json(output)})

    body_schema = {"content": {"application/json": {"schema": UserPredictRequest.model_json_schema()}},
                   "required": True}

    @app.post("/predict", openapi_extra={"requestBody": body_schema})
    async def predict(request: Request) -> Response:
        try:
            arguments = UserPredictRequest.model_validate_json(await request.body()).inputs
        except ValidationError as exc:
            return invalid([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()])
        body = await asyncio.get_running_loop().run_in_executor(executor, score, arguments)
        counts["requests"] += 1
        return Response(body, media_type="application/json")

    return app


def invalid(errors: Any) -> JSONResponse:
    """422 with a one-line ``error`` (the first five problems, ``loc: message``) and pydantic's records."""
    problems = [f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg')}" for error in errors]
    return JSONResponse(status_code=422, content={"error": "; ".join(problems[:5]) + (
        f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""), "detail": jsonable(errors)})


def jsonable(errors: Any) -> Any:
    """Pydantic error records with their non-JSON parts (exception objects in ``ctx``) made strings."""
    out = []
    for error in errors:
        error = dict(error)
        if "ctx" in error:
            error["ctx"] = {k: str(v) for k, v in error["ctx"].items()}
        error.pop("url", None)
        if isinstance(error.get("input"), bytes):
            error["input"] = error["input"].decode("utf-8", errors="replace")
        out.append(error)
    return out


def app_from_environment() -> FastAPI:
    """The app of one worker process started by :func:`sharkrec.serving.serve` (its settings in
    ``$SHARKREC_SERVE_CONFIG``)."""
    from sharkrec.serving import CONFIG_ENV

    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise ConfigError(f"${CONFIG_ENV} is not set; start workers with sharkrec serve --workers N")
    return worker_app(json.loads(raw))


def worker_app(config: dict[str, Any]) -> FastAPI:
    """The app one worker serves, from :func:`sharkrec.serving.serve`'s settings."""
    import torch

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    app = create_app(config["artifact"], cache_dir=config["cache_dir"], access_log=bool(config["access_log"]),
                     **config["options"])
    # everything loaded so far (torch, the framework, the model: ~240k tracked objects) leaves the cyclic
    # collector's view: a full collection over them took 135-147 ms here, the p99 of 32 connections
    gc.collect()
    gc.freeze()
    return app
