"""Protecting the server (rate, concurrency, body size), health, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest
from starlette.testclient import TestClient

from tests.helpers import make_dataset
from tests.web_support import build_world, web  # noqa: F401 - fixture
from web.app import create_app
from web.limits import TokenBucket, UserLimitsMiddleware


@pytest.fixture
def strict(make_settings):
    """A world whose users may make 3 requests at once, then one a second."""
    yield from build_world(make_settings, web={"rate_per_second": 1.0, "burst": 3})


def test_token_bucket_answers_429_with_retry_after(strict):
    strict.headers("reader")
    for _ in range(3):
        assert strict.get("/api/pacs/studies/").status_code == 200
    refused = strict.get("/api/pacs/studies/")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["content-type"] == "application/problem+json"
    assert "rate" in refused.json()["detail"]
    strict.clock.advance(1.0)
    assert strict.get("/api/pacs/studies/").status_code == 200
    assert strict.get("/api/pacs/studies/").status_code == 429


def test_the_rate_limit_is_per_user(strict):
    for _ in range(4):
        strict.get("/api/pacs/studies/", user="first")
    assert strict.get("/api/pacs/studies/", user="first").status_code == 429
    assert strict.get("/api/pacs/studies/", user="second").status_code == 200


def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    bucket = TokenBucket(rate=10.0, burst=2, clock=lambda: now[0])
    assert bucket.take("u") == 0 and bucket.take("u") == 0
    assert bucket.take("u") == pytest.approx(0.1)
    now[0] += 0.05
    assert bucket.take("u") == pytest.approx(0.05)
    now[0] += 0.05
    assert bucket.take("u") == 0


class _User:
    is_authenticated = True
    identity = "viewer1"


def test_requests_in_flight_are_capped_per_user():
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow_app(scope, receive, send):
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limits = UserLimitsMiddleware(slow_app, max_in_flight=1, bucket=TokenBucket(100.0, 100))

    async def call() -> list[dict]:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b""}

        scope = {"type": "http", "method": "GET", "path": "/api/x", "headers": [], "user": _User()}
        await limits(scope, receive, send)
        return sent

    async def scenario() -> tuple[list[dict], list[dict]]:
        first = asyncio.create_task(call())
        await asyncio.wait_for(entered.wait(), 5)
        second = await asyncio.wait_for(call(), 5)
        release.set()
        return await asyncio.wait_for(first, 5), second

    first, second = asyncio.run(scenario())
    assert first[0]["status"] == 200
    assert second[0]["status"] == 429
    assert (b"retry-after", b"1") in second[0]["headers"]
    assert limits.in_flight == {}


def test_a_streamed_body_over_the_cap_is_413(make_settings):
    for world in build_world(make_settings, web={"max_body_bytes": 100}):
        chunks = (b"x" * 60 for _ in range(3))
        response = world.client.post("/api/token/", content=chunks, headers={"Content-Type": "application/json"})
        assert response.status_code == 413


def test_healthz_reports_catalogue_storage_and_dimse(web):
    response = web.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"catalogue": "ok", "storage": "ok"}}
    shutil.rmtree(web.settings.data_dir / "tmp")
    broken = web.client.get("/healthz")
    assert broken.status_code == 503 and broken.json()["checks"]["storage"].startswith("not writable")


class _Status:
    def __init__(self, listening: bool, associations: int) -> None:
        self.listening, self.associations = listening, associations

    def dimse_listening(self) -> bool:
        return self.listening

    def active_associations(self) -> int:
        return self.associations


def _app_with_status(make_settings, status):
    from node.runtime import Node

    settings = make_settings()
    node = Node(settings)
    node.open_store()
    return node, create_app(settings, node_status=status)


def test_healthz_is_503_when_the_dimse_listener_is_down(make_settings):
    node, app = _app_with_status(make_settings, _Status(False, 0))
    try:
        with TestClient(app) as client:
            response = client.get("/healthz")
    finally:
        node.stop()
    assert response.status_code == 503
    assert response.json()["checks"]["dimse"] == "not listening"


def test_metrics_count_requests_by_route_and_report_the_node(make_settings):
    node, app = _app_with_status(make_settings, _Status(True, 3))
    try:
        node.ingestor.ingest_part10(_part10(make_dataset()))
        with TestClient(app) as client:
            client.get("/api/pacs/studies/")
            client.get("/api/pacs/instances/1.2.3/")
            client.get("/healthz")
            text = client.get("/metrics").text
    finally:
        node.stop()
    assert 'pacsnode_http_requests_total{method="GET",route="/api/pacs/studies/",status="401"} 1.0' in text
    assert 'pacsnode_http_requests_total{method="GET",route="/api/pacs/instances/{sop_uid}/",status="401"} 1.0' in text
    assert re.search(r'pacsnode_http_request_duration_seconds_count\{method="GET",route="/healthz"\} 1\.0', text)
    assert "pacsnode_instances_stored 1.0" in text
    assert "pacsnode_dimse_associations_active 3.0" in text


def _part10(ds) -> bytes:
    from tests.web_support import part10_bytes

    return part10_bytes(ds)


def test_openapi_document_lists_every_route(web):
    assert web.client.get("/api/openapi.json").status_code == 401
    document = web.get("/api/openapi.json").json()
    assert document["openapi"].startswith("3.")
    routes = {re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path) for route in web.client.app.routes}
    assert routes == set(document["paths"])
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
