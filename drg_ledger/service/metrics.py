"""Prometheus metrics of one service instance: requests, latency, events accepted/refused, refusals.

Each app has its own registry, so two apps in one process (tests) never share counters.
Routes are labelled by their template (`/balance`), never by the raw path, to bound cardinality.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The counters and histograms of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("drg_ledger_http_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("drg_ledger_http_request_duration_seconds", "Time to answer an HTTP request",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.events = Counter("drg_ledger_events", "Events submitted over HTTP, by fate", ["fate"],
                              registry=self.registry)
        self.refusals = Counter("drg_ledger_http_refusals", "Requests refused 401/403", ["status", "role_kind"],
                                registry=self.registry)
        for fate in ("accepted", "duplicate", "rejected"):
            self.events.labels(fate=fate)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def middleware(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            if template.startswith("/static"):
                template = "/static"
            self.requests.labels(request.method, template, str(status)).inc()
            self.latency.labels(request.method, template).observe(time.perf_counter() - start)
            if status in (401, 403):
                principal = getattr(request.state, "principal", None)
                kind = "anonymous" if principal is None else principal.role.split(":", 1)[0]
                self.refusals.labels(str(status), kind).inc()
