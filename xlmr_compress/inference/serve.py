"""An HTTP server over a pipeline (Starlette under uvicorn): POST /predict, GET /health and /info, with dynamic
micro-batching of concurrent requests and a drain of the requests in flight on SIGTERM."""
from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections import Counter, deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ..configs import ServeConfig
from ..errors import UserError
from .pipeline import CLASSIFY, QA, Pipeline


class RequestError(Exception):
    """A bad request: the HTTP status and a one-line message naming the problem and the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class MicroBatcher:
    """Gathers the texts of concurrent requests into one pipeline call: up to max_batch texts, the first waiting at
    most max_wait seconds for others; the model runs on one worker thread, so the event loop keeps answering."""

    def __init__(self, pipe: Pipeline, max_batch: int, max_wait: float) -> None:
        self.pipe, self.max_batch, self.max_wait = pipe, max_batch, max_wait
        self.jobs: deque[tuple[list, int | None, asyncio.Future]] = deque()
        self.sizes: Counter[int] = Counter()  # texts per model call -> calls, shown by /info
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.arrived: asyncio.Event | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.arrived = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    async def submit(self, items: list, top_k: int | None) -> list:
        """The pipeline's results for one request's items, computed in a batch with whatever else arrives."""
        future = asyncio.get_running_loop().create_future()
        self.jobs.append((items, top_k, future))
        self.arrived.set()
        return await future

    async def _next(self, timeout: float | None) -> tuple | None:
        """The next queued job, waiting up to `timeout` seconds (None: forever) for one."""
        while not self.jobs:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout)
            except TimeoutError:
                return None
        return self.jobs.popleft()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._next(None)]
            size, deadline = len(batch[0][0]), loop.time() + self.max_wait
            while size < self.max_batch:
                job = await self._next(max(deadline - loop.time(), 0))
                if job is None:
                    break
                if size + len(job[0]) > self.max_batch:
                    self.jobs.appendleft(job)
                    break
                batch.append(job)
                size += len(job[0])
            self.sizes[size] += 1
            items = [item for job in batch for item in job[0]]
            # classification: every label, ranked, so each request can cut its own top_k
            top_k = len(self.pipe.label_names) if self.pipe.task == CLASSIFY else None
            try:
                results = await loop.run_in_executor(self.executor, self.pipe.run, items, top_k)
            except Exception as e:  # noqa: BLE001  the requests of this batch fail with it; the server goes on
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            first = 0
            for job_items, job_top_k, future in batch:
                part = results[first:first + len(job_items)]
                first += len(job_items)
                if self.pipe.task == CLASSIFY:
                    part = [ranked[0] if job_top_k is None else ranked[:job_top_k] for ranked in part]
                if not future.done():
                    future.set_result(part)


def parse_request(body: Any, pipe: Pipeline, config: ServeConfig) -> tuple[list, bool, int | None]:
    """The pipeline items of a /predict body, whether one input was sent, and top_k; RequestError when bad."""
    if not isinstance(body, dict):
        raise RequestError(422, 'the body must be a JSON object: {"inputs": ...}')
    top_k = body.get("top_k")
    if top_k is not None and (pipe.task != CLASSIFY or not isinstance(top_k, int) or isinstance(top_k, bool)
                              or top_k < 1):
        raise RequestError(422, "top_k must be a positive integer, and only a classification model takes it")
    if pipe.task == QA and "inputs" not in body:
        if "question" not in body or "context" not in body:
            raise RequestError(422, 'a QA model takes {"question": str, "context": str} (or lists of both)')
        question, context, inputs = body["question"], body["context"], None
    elif "inputs" not in body:
        raise RequestError(422, 'the body has no "inputs": send {"inputs": str | [str] | [[str, str]]}')
    else:
        question, context, inputs = None, None, body["inputs"]
    try:
        items, single = pipe.prepare(inputs, question, context)
    except UserError as e:
        raise RequestError(422, str(e)) from None
    if not items:
        raise RequestError(422, "the input is an empty list: send at least one text")
    if len(items) > config.max_texts:
        raise RequestError(413, f"the request holds {len(items)} texts, more than the limit of {config.max_texts}: "
                                "send them in several requests (or raise --max-texts)")
    texts = [t for item in items for t in ((item,) if isinstance(item, str) else item) if t is not None]
    if any(not t.strip() for t in texts):
        raise RequestError(422, "the input holds an empty text: send non-empty texts")
    longest = max(len(t) for t in texts)
    if longest > config.max_chars:
        raise RequestError(413, f"a text of {longest} characters is over the limit of {config.max_chars}: split it "
                                "(or raise --max-chars)")
    return items, single, top_k


def create_app(pipe: Pipeline, config: ServeConfig, model: str = "") -> Any:
    """The Starlette application: /predict through the micro-batcher, /health, /info; errors as JSON."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    batcher = MicroBatcher(pipe, config.max_batch, config.max_wait_ms / 1000)
    state = {"in_flight": 0, "requests": 0}

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def predict(request: Request) -> JSONResponse:
        state["in_flight"] += 1
        try:
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError) as e:
                raise RequestError(400, f"the body is not valid JSON ({e}): send {{\"inputs\": ...}}") from None
            items, single, top_k = parse_request(body, pipe, config)
            results = await batcher.submit(items, top_k)
        except RequestError as e:
            return error(e.status, str(e))
        finally:
            state["in_flight"] -= 1
        state["requests"] += 1
        return JSONResponse(results if not single or (pipe.task == CLASSIFY and top_k is None) else results[0])

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def info(request: Request) -> JSONResponse:
        return JSONResponse({"model": model, **pipe.info(), "max_batch": config.max_batch,
                             "max_wait_ms": config.max_wait_ms, "max_chars": config.max_chars,
                             "max_texts": config.max_texts, "requests": state["requests"],
                             "in_flight": state["in_flight"],
                             "batch_sizes": {str(k): v for k, v in sorted(batcher.sizes.items())}})

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, f"{exc.detail}: the endpoints are POST /predict, GET /health and GET /info")

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"{type(exc).__name__}: {exc}")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    routes = [Route("/predict", predict, methods=["POST"]), Route("/health", health), Route("/info", info)]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: server_error})


def serve(src: str | Path, config: ServeConfig | None = None) -> None:
    """Serve a model directory over HTTP until SIGINT or SIGTERM, which finish the requests in flight first."""
    import uvicorn

    config = config or ServeConfig()
    check_config(config)
    pipe = Pipeline.load(src, config)
    app = create_app(pipe, config, str(src))
    print(f"serving {src} ({pipe.task}, {pipe.info()['precision']}) on http://{config.host}:{config.port}",
          file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                           timeout_graceful_shutdown=config.drain_seconds))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it drained for: the requests are done, exit quietly
        pass


def check_config(config: ServeConfig) -> None:
    """Refuse limits that cannot work and a port already taken, before the model loads."""
    for name in ("max_batch", "max_chars", "max_texts"):
        if getattr(config, name) < 1:
            raise UserError(f"{name} {getattr(config, name)} must be at least 1")
    if config.max_wait_ms < 0 or config.drain_seconds < 0:
        raise UserError("max_wait_ms and drain_seconds must be at least 0")
    with socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((config.host, config.port))
        except OSError as e:
            raise UserError(f"cannot listen on {config.host}:{config.port} ({e.strerror}): choose another --port "
                            "or --host") from None
