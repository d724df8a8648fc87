"""Prometheus metrics. With several uvicorn workers, set PROMETHEUS_MULTIPROC_DIR to an empty
directory before the workers start (`personalize serve --workers N` does this): each
worker then writes its samples there and ``/metrics`` aggregates all of them, whichever
worker answers the scrape.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from personalize.service.holder import LoadedModel

REQUESTS = Counter(
    "personalize_http_requests_total",
    "HTTP requests by method, route template and status code.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "personalize_http_request_duration_seconds",
    "HTTP request latency by method, route template and status code.",
    ["method", "route", "status"],
    buckets=(0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
PREDICTIONS = Counter(
    "personalize_predictions_total",
    "Patients scored, by recommendation (treatment label, control label or 'either') "
    "and channel (single, batch, cds-hooks).",
    ["recommendation", "channel"],
)
MODEL_LOADED = Gauge(
    "personalize_model_loaded",
    "Processes serving this model version (1 per process; summed over live workers).",
    ["name", "version", "source"],
    multiprocess_mode="livesum",
)


MAX_LABEL_SETS = 1024  # (method, route, status) children the middleware keeps at hand


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> tuple[bytes, str]:
    """The exposition text: every worker's samples in multiprocess mode."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def on_swap(previous: LoadedModel | None, current: LoadedModel) -> None:
    if previous is not None:
        MODEL_LOADED.labels(previous.name, previous.version, previous.source).set(0)
    MODEL_LOADED.labels(current.name, current.version, current.source).set(1)


def count_predictions(recommendations: list[str], channel: str) -> None:
    counts: dict[str, int] = {}
    for rec in recommendations:
        counts[rec] = counts.get(rec, 0) + 1
    for rec, n in counts.items():
        PREDICTIONS.labels(rec, channel).inc(n)


def process_exit() -> None:
    """Drop this worker's live gauges from the aggregate (multiprocess mode)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(os.getpid())


class MetricsMiddleware:
    """Counts and times every request by route template (not raw path: bounded label
    values) and final status code."""

    def __init__(self, app: ASGIApp, routes: Callable[[], Sequence[Any]] | None = None) -> None:
        self.app = app
        self._routes = routes
        self._static: dict[str, str] | None = None
        # each label set's two children, looked up once (`labels` validates and locks)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _template(self, scope: Scope) -> str:
        route: Any = scope.get("route")
        path = getattr(route, "path", None)
        if path:
            return str(path)
        # routes FastAPI does not record in the scope (openapi.json, docs, mounts)
        if self._static is None:
            self._static = {}
            for r in self._routes() if self._routes else []:
                p = getattr(r, "path", None)
                if p is not None:
                    self._static[p or "/"] = p or "/"
        raw = str(scope.get("path", ""))
        if raw in self._static:
            return self._static[raw]
        for prefix in self._static:
            if prefix != "/" and "{" not in prefix and raw.startswith(prefix + "/"):
                return prefix + "/{path}"
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            labels = (scope["method"], self._template(scope), status[0])
            children = self._children.get(labels)
            if children is None:
                str_labels = (labels[0], labels[1], str(labels[2]))
                children = REQUESTS.labels(*str_labels), LATENCY.labels(*str_labels)
                if len(self._children) < MAX_LABEL_SETS:
                    self._children[labels] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - start)
