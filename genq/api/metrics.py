"""`genq api`'s Prometheus metrics: requests by route and status, and their latency, served
on ``/metrics`` (open, like ``/healthz``: it holds no tenant's data).

A pure ASGI middleware (Starlette's BaseHTTPMiddleware would buffer streamed bodies). The
route label is the route's path template (``/v1/batches/{batch_id}``), never the path itself,
so labels stay bounded; requests no route matched (401s before routing, 404s) count as
``unmatched``.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class ApiMetrics:
    """The API process's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "genq_api_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "genq_api_request_seconds",
            "Time to answer a request, by route and method.",
            ["route", "method"],
            buckets=_SECONDS,
            registry=self.registry,
        )

    def response(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """Counts and times every HTTP request (the outermost middleware: refusals count too)."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            name = route.path if isinstance(route, Route) else "unmatched"
            method = str(scope.get("method", ""))
            method = method if method in _METHODS else "other"  # any text a client sends
            self.metrics.requests.labels(name, method, str(status[0])).inc()
            self.metrics.latency.labels(name, method).observe(time.perf_counter() - started)
