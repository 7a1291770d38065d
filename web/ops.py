"""Operations: ``/healthz`` for load balancers and ``/metrics`` for Prometheus.

The metrics live in a registry owned by the app (not prometheus_client's global one), so
every app instance counts for itself.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from db.models import Instance, database
from web.context import NodeStatus, context_of

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class _NodeCollector(Collector):
    """Figures read when Prometheus scrapes, so they are never stale and cost nothing between."""

    def __init__(self, node_status: NodeStatus | None) -> None:
        self.node_status = node_status

    def collect(self) -> Iterator[Any]:
        stored = GaugeMetricFamily("pacsnode_instances_stored", "Instances in the catalogue")
        with database.connection_context():
            stored.add_metric([], Instance.select().count())
        yield stored
        if self.node_status is not None:
            active = GaugeMetricFamily("pacsnode_dimse_associations_active",
                                       "DIMSE associations in progress")
            active.add_metric([], self.node_status.active_associations())
            yield active


class Metrics:
    def __init__(self, node_status: NodeStatus | None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("pacsnode_http_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("pacsnode_http_request_duration_seconds",
                                 "HTTP request latency by route", ["route", "method"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_NodeCollector(node_status))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)


class MetricsMiddleware:
    """Counts every request by its route template (not its URL: UIDs would explode the labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(label, scope["method"], status, time.perf_counter() - started)


def metrics(request: Request) -> Response:
    registry = context_of(request).metrics.registry  # type: ignore[attr-defined]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def healthz(request: Request) -> JSONResponse:
    """Catalogue reachable, storage writable, DIMSE listener up: 200 when all hold, else 503."""
    ctx = context_of(request)
    checks = {"catalogue": _catalogue_check(), "storage": _storage_check(ctx.data_dir / "tmp")}
    if ctx.node_status is not None:
        checks["dimse"] = "ok" if ctx.node_status.dimse_listening() else "not listening"
    healthy = all(value == "ok" for value in checks.values())
    return JSONResponse({"status": "ok" if healthy else "unhealthy", "checks": checks},
                        status_code=200 if healthy else 503, headers={"Cache-Control": "no-store"})


def _catalogue_check() -> str:
    try:
        with database.connection_context():
            database.execute_sql("SELECT 1").fetchone()
    except Exception as exc:  # noqa: BLE001 - any driver error means unreachable
        return f"unreachable: {exc}"
    return "ok"


def _storage_check(folder: Any) -> str:
    probe = folder / f".health-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"not writable: {exc.strerror}"
    return "ok"
