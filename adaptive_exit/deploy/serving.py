"""``adaptive-exit serve``: an HTTP endpoint with dynamic batching, compaction inside each
batch, and a controller that moves the run-time budget to hold a latency target.

* Requests wait in a queue; a worker takes up to ``max_batch`` items, or what arrived
  within ``max_wait_ms`` of the first, and runs them as one batch under the current
  policy (exited rows leave the batch: compaction).
* The controller watches the latency of recent requests (queueing included). When their
  percentile is over the target it moves one level down the model's budget table (a
  cheaper calibrated policy); when it is well under (below ``1 - headroom`` of the target)
  for a while, or the server is idle, it moves back up, to full quality when it can.
* ``/health``, ``/metrics`` (requests, errors, latency percentiles, the current budget and
  policy, exits per stage) and the domain's endpoint (text: ``POST /predict`` JSON; speech:
  ``POST /enhance`` WAV in, WAV out), with request size limits and 4xx answers that say
  what was wrong; a bad request never stops the server.

What a domain serves is a :class:`ServeAdapter` (``Domain.serve_adapter``); the core runs it.
"""

import asyncio
import json
import logging
import threading
import time
from collections import deque
from contextlib import asynccontextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from adaptive_exit.budgets import BudgetSpec, BudgetTable
from adaptive_exit.policies import ExitPolicy, build_policy
from adaptive_exit.runtime.runner import EarlyExitRunner

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A bad request: the server answers ``status`` with the message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class ServeAdapter:
    """How a domain's requests become batch items and results become responses."""

    path = "/predict"
    content_types: tuple[str, ...] = ("application/json",)
    limit_name = "request_bytes_text"  # the limit (adaptive_exit.limits) on this endpoint's request bodies

    @property
    def max_request_bytes(self) -> int:
        from adaptive_exit.limits import limit

        return int(limit(self.limit_name))

    def parse(self, body: bytes, content_type: str) -> list[Any]:
        """The request's items (raise RequestError for bad input)."""
        raise NotImplementedError

    def batch_key(self, item: Any) -> Any:
        """Items with different keys never share a batch (e.g. single texts and pairs)."""
        return None

    def collate(self, items: list[Any]) -> Any:
        raise NotImplementedError

    def item_result(self, item: Any, output: torch.Tensor, stage: int, num_stages: int) -> Any:
        """One item's answer from its row of the batch result."""
        raise NotImplementedError

    def respond(self, items: list[Any], results: list[Any]) -> tuple[bytes, str, dict[str, str]]:
        """The response body, its content type and extra headers."""
        return json.dumps({"results": results}).encode(), "application/json", {}


@dataclass
class Level:
    """One rung of the controller's ladder: a budget name and its policy."""

    name: str
    policy: ExitPolicy
    fraction: float


def budget_levels(table: BudgetTable, default: ExitPolicy) -> list[Level]:
    """Full quality first, then the calibrated fraction budgets from largest to smallest
    (the table's ``mean:`` entries; without any, the default policy capped at 70/50/30%)."""
    entries = sorted(((b, p) for b, p in table.entries.items() if b.kind_of.fraction), key=lambda item: -item[0].value)
    levels = [Level("full", build_policy("full"), 1.0)]
    if not entries:
        entries = [(BudgetSpec.parse(f"mean:{v}"), table.policy_for(f"mean:{v}", default)) for v in (0.7, 0.5, 0.3)]
    levels += [Level(str(b), p, b.value) for b, p in entries if b.value < 1]
    return levels


class LatencyController:
    """Moves along the budget levels to keep the latency the SLO names (a quantile of recent
    latencies, ``quantile``, or their mean when it is None: ``ms:40``) under the target.

    Two signals move it toward cheaper levels: the percentile of recent latencies over the
    target, and (sooner, before those requests finish) a batch whose oldest request has
    already queued for ``queue_fraction`` of the target. Moving back toward full quality
    needs the percentile well under the target (``headroom``) and ``up_cooldown_s`` since the
    last move, so a level that only just copes is not left for one that cannot (the
    oscillation that otherwise keeps refilling the queue).
    """

    def __init__(self, levels: list[Level], target_ms: float, quantile: float | None = 0.95, window: int = 64,
                 headroom: float = 0.4, cooldown_s: float = 0.5, idle_s: float = 2.0, up_cooldown_s: float = 5.0,
                 queue_fraction: float = 0.8):
        self.levels, self.target_ms, self.quantile = levels, target_ms, quantile
        self.window: deque[float] = deque(maxlen=window)
        self.headroom, self.cooldown_s, self.idle_s = headroom, cooldown_s, idle_s
        self.up_cooldown_s, self.queue_fraction = up_cooldown_s, queue_fraction
        self.index = 0
        self.last_move = self.last_request = time.monotonic()
        self.lock = threading.Lock()

    @property
    def level(self) -> Level:
        return self.levels[self.index]

    def observed(self) -> float | None:
        if len(self.window) < 8:
            return None
        return sum(self.window) / len(self.window) if self.quantile is None else percentile(self.window, self.quantile)

    def record(self, latency_ms: float) -> None:
        with self.lock:
            self.window.append(latency_ms)
            self.last_request = time.monotonic()
            self._adjust()

    def queue_wait(self, waited_ms: float) -> None:
        """The oldest request of the batch about to run has waited ``waited_ms``: a queue is
        building up, whatever the finished requests say yet."""
        with self.lock:
            cheaper = self.index < len(self.levels) - 1
            if cheaper and waited_ms > self.queue_fraction * self.target_ms and time.monotonic() - self.last_move >= self.cooldown_s:
                self._move(+1, waited_ms, "queued")

    def _adjust(self) -> None:
        since = time.monotonic() - self.last_move
        value = self.observed()
        if value is None or since < self.cooldown_s:
            return
        if value > self.target_ms and self.index < len(self.levels) - 1:
            self._move(+1, value)
        elif value < (1 - self.headroom) * self.target_ms and self.index > 0 and since >= self.up_cooldown_s:
            self._move(-1, value)

    def tick(self) -> None:
        """Called periodically: after ``idle_s`` without requests, back to full quality."""
        with self.lock:
            if self.index and time.monotonic() - self.last_request > self.idle_s:
                self.window.clear()
                self._move(-self.index, None)

    def _move(self, step: int, value: float | None, signal: str | None = None) -> None:
        self.index += step
        self.last_move = time.monotonic()
        self.window.clear()
        measured = signal or ("mean" if self.quantile is None else f"p{100 * self.quantile:g}")
        logger.info("budget -> %s (%s)", self.level.name,
                    "idle" if value is None else f"{measured} {value:.1f} ms vs target {self.target_ms:g} ms")


@dataclass
class Pending:
    items: list[Any]
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Metrics:
    def __init__(self, num_stages: int):
        self.requests = self.errors = self.items = 0
        self.latencies: deque[float] = deque(maxlen=2048)
        self.exits = [0] * num_stages
        self.lock = threading.Lock()

    def snapshot(self, controller: LatencyController | None, policy: ExitPolicy) -> dict[str, Any]:
        with self.lock:
            lat = list(self.latencies)
        return {"requests": self.requests, "items": self.items, "errors": self.errors,
                "latency_ms": {"p50": percentile(lat, 0.5) if lat else None, "p95": percentile(lat, 0.95) if lat else None,
                               "count": len(lat)},
                "budget": controller.level.name if controller else "fixed", "policy": policy.spec(),
                "target_ms": controller.target_ms if controller else None, "exits_per_stage": list(self.exits)}


class BatchingServer:
    """The batcher, the runner and the controller behind the HTTP endpoints."""

    def __init__(self, model: Any, adapter: ServeAdapter, policy: ExitPolicy, levels: list[Level] | None = None,
                 slo: str | None = None, max_batch: int = 32, max_wait_ms: float = 5.0):
        self.model, self.adapter = model, adapter
        self.runner = EarlyExitRunner(model, policy)
        self.fixed_policy = policy
        self.controller = None
        if slo:
            budget = BudgetSpec.parse(slo)
            if budget.unit != "ms":
                raise ValueError(f"--slo must be a latency (p95:50ms, ms:40), got {slo}")
            self.controller = LatencyController(levels or [Level("fixed", policy, 1.0)], budget.value,
                                                budget.kind_of.quantile)
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.metrics = Metrics(model.num_stages)
        self.queue: asyncio.Queue | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptive-exit-runner")

    @property
    def policy(self) -> ExitPolicy:
        return self.controller.level.policy if self.controller else self.fixed_policy

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._worker())]
        if self.controller:
            self.tasks.append(loop.create_task(self._ticker()))

    async def stop(self) -> None:
        for task in getattr(self, "tasks", []):
            task.cancel()
        await asyncio.gather(*getattr(self, "tasks", []), return_exceptions=True)

    async def submit(self, items: list[Any]) -> list[Any]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(Pending(items, future))
        return await future

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.controller.tick()

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            batch = [first]
            count = len(first.items)
            deadline = loop.time() + self.max_wait
            while count < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                batch.append(nxt)
                count += len(nxt.items)
            if self.controller:
                self.controller.queue_wait((time.monotonic() - first.arrived) * 1000)
            try:
                results = await loop.run_in_executor(self.executor, self._run, [i for p in batch for i in p.items])
            except Exception as exc:  # noqa: BLE001 - a batch failing must not stop the server
                logger.exception("batch failed")
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(RequestError(f"the model failed on this batch: {exc}", 500))
                continue
            start = 0
            now = time.monotonic()
            for pending in batch:
                part = results[start:start + len(pending.items)]
                start += len(pending.items)
                latency = (now - pending.arrived) * 1000
                with self.metrics.lock:
                    self.metrics.latencies.append(latency)
                if self.controller:
                    self.controller.record(latency)
                if not pending.future.done():
                    pending.future.set_result(part)

    def _run(self, items: list[Any]) -> list[Any]:
        self.runner.policy = self.policy
        groups: dict[Any, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(self.adapter.batch_key(item), []).append(i)
        results: list[Any] = [None] * len(items)
        for rows in groups.values():
            batch = self.adapter.collate([items[i] for i in rows])
            with torch.no_grad():
                result = self.runner(batch)
            stages = result.exit_stage.tolist()
            with self.metrics.lock:
                for s in stages:
                    self.metrics.exits[s] += 1
                self.metrics.items += len(rows)
            for j, i in enumerate(rows):
                results[i] = self.adapter.item_result(items[i], result.output[j], stages[j], self.model.num_stages)
        return results


class ClientDisconnect(Exception):
    """The client went away mid-body (nothing to answer)."""


async def read_bounded(request: Any, limit: int) -> bytes:
    """The request body, counted while it streams in: a chunked upload over ``limit`` is
    refused as soon as it passes it (memory stays flat), whatever Content-Length said."""
    from starlette.requests import ClientDisconnect as StarletteDisconnect

    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(f"request body over the limit of {limit} bytes", 413)
            chunks.append(chunk)
    except StarletteDisconnect:
        raise ClientDisconnect() from None
    return b"".join(chunks)


def create_app(server: BatchingServer):
    """The FastAPI application around a :class:`BatchingServer`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await server.start()
        yield
        await server.stop()

    app = FastAPI(title="adaptive-exit", description="Early-exit inference with a latency-aware budget",
                  lifespan=lifespan)
    adapter = server.adapter

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        """A bug, not the client's fault: one log line (no traceback) and a 500 that says so."""
        logger.error("internal error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__,
                     " ".join(str(exc).split())[:300])
        return error(500, "internal error; the server log has one line about it")

    def error(status: int, message: str) -> JSONResponse:
        with server.metrics.lock:
            server.metrics.errors += 1
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "num_stages": server.model.num_stages, "endpoint": adapter.path}

    @app.get("/metrics")
    async def metrics() -> dict[str, Any]:
        return server.metrics.snapshot(server.controller, server.policy)

    @app.post(adapter.path)
    async def endpoint(request: Request):
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in adapter.content_types:
            return error(415, f"content type {content_type or 'missing'!r} is not accepted; send {' or '.join(adapter.content_types)}")
        limit = adapter.max_request_bytes
        declared = request.headers.get("content-length")
        if declared and declared.strip().isdigit() and int(declared) > limit:
            return error(413, f"request of {declared} bytes is over the limit of {limit} (limit {adapter.limit_name})")
        try:
            body = await read_bounded(request, limit)
        except RequestError as exc:
            return error(exc.status, f"{exc} (limit {adapter.limit_name})" if exc.status == 413 else str(exc))
        except ClientDisconnect:
            logger.info("client disconnected before the request body was complete")
            return error(400, "the request body ended early")
        try:
            items = adapter.parse(body, content_type)
            with server.metrics.lock:
                server.metrics.requests += 1
            results = await server.submit(items)
        except RequestError as exc:
            return error(exc.status, str(exc))
        payload, media, headers = adapter.respond(items, results)
        return Response(payload, media_type=media, headers=headers)

    return app


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of values by rank (nearest-rank, no interpolation)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")
