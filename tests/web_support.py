"""Fixtures for the HTTP API tests: a catalogue with ingested datasets and a TestClient app."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Iterator

import pytest
from pydicom.dataset import Dataset
from starlette.testclient import TestClient

from db import accounts
from db.models import database
from node.config import Settings
from node.ingest import Ingestor
from node.passwords import hash_password
from node.runtime import Node
from web.app import create_app

PASSWORD = "correct horse battery"


def part10_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class FakeClock:
    """Monotonic seconds that a test moves forward by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class WebWorld:
    settings: Settings
    ingestor: Ingestor
    client: TestClient
    clock: FakeClock
    tokens: dict[str, str] = field(default_factory=dict)

    def ingest(self, *datasets: Dataset) -> None:
        for ds in datasets:
            self.ingestor.ingest_part10(part10_bytes(ds))

    def add_user(self, name: str, role: str = "viewer", password: str = PASSWORD) -> None:
        with database.connection_context():
            accounts.create_user(name, hash_password(password), role)

    def login(self, name: str, password: str = PASSWORD) -> dict[str, str]:
        response = self.client.post("/api/token/", json={"username": name, "password": password})
        assert response.status_code == 200, response.text
        return response.json()

    def headers(self, name: str = "reader", role: str = "viewer") -> dict[str, str]:
        """Authorization headers for a user, created and logged in on first use."""
        if name not in self.tokens:
            self.add_user(name, role)
            self.tokens[name] = self.login(name)["access"]
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def get(self, url: str, user: str = "reader", **kwargs: object):  # noqa: ANN201 - httpx.Response
        headers = {**self.headers(user), **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        return self.client.get(url, headers=headers, **kwargs)  # type: ignore[arg-type]


def build_world(make_settings, **sections: dict) -> Iterator[WebWorld]:
    settings = make_settings(**sections)
    node = Node(settings)
    ingestor = node.open_store()
    clock = FakeClock()
    app = create_app(settings, clock=clock)
    try:
        with TestClient(app) as client:
            yield WebWorld(settings, ingestor, client, clock)
    finally:
        node.stop()


@pytest.fixture
def web(make_settings) -> Iterator[WebWorld]:
    yield from build_world(make_settings)
