from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from pydicom import config as pydicom_config
from pynetdicom import _config as pynetdicom_config

from node.config import Settings, settings_from_mapping
from node.runtime import Node
from tests.helpers import have_dcmtk

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_reachable() -> bool:
    try:
        import psycopg2

        conn = psycopg2.connect(POSTGRES_URL, connect_timeout=2)
        conn.close()
        return True
    except Exception:  # noqa: BLE001 - any failure means: skip
        return False


@pytest.fixture(autouse=True)
def _restore_pynetdicom_config() -> Iterator[None]:
    names = ("STORE_RECV_CHUNKED_DATASET", "STORE_SEND_CHUNKED_DATASET", "LOG_HANDLER_LEVEL",
             "LOG_REQUEST_IDENTIFIERS", "LOG_RESPONSE_IDENTIFIERS")
    saved = [getattr(pynetdicom_config, name) for name in names]
    validation = pydicom_config.settings.reading_validation_mode
    yield
    for name, value in zip(names, saved):
        setattr(pynetdicom_config, name, value)
    pydicom_config.settings.reading_validation_mode = validation


@pytest.fixture
def make_settings(tmp_path: Path):
    """Settings with data under tmp_path and the DIMSE listener on a free port."""

    def build(**sections: dict) -> Settings:
        raw: dict = {"node": {"data_dir": "data"}, "dicom": {"host": "127.0.0.1", "port": 0}}
        for name, values in sections.items():
            raw.setdefault(name, {}).update(values)
        return settings_from_mapping(raw, base_dir=tmp_path)

    return build


@pytest.fixture(params=[True, False], ids=["fast-path", "stock-pynetdicom"])
def running_node(make_settings, request) -> Iterator[Node]:
    """The in-process node, with and without scp.fastpath: the same exchanges must pass."""
    node = Node(make_settings(), fast_path=request.param).start()
    yield node
    node.stop()


@contextmanager
def fresh_postgres_database(name: str) -> Iterator[str]:
    """A new PostgreSQL database for one test or module, dropped afterwards; skips if none."""
    if not postgres_reachable():
        pytest.skip("no PostgreSQL reachable on 127.0.0.1:5432")
    import psycopg2

    admin = psycopg2.connect(POSTGRES_URL)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        from db.models import database

        if database.obj is not None:
            database.obj.close()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path: Path) -> Iterator[str]:
    """Catalogue URL for both back ends; PostgreSQL gets a database of its own per test."""
    if request.param == "sqlite":
        yield ""
        return
    with fresh_postgres_database(f"t_{tmp_path.name.lower().replace('-', '_')[-40:]}") as url:
        yield url


def pytest_collection_modifyitems(config, items):
    if not have_dcmtk():
        skip = pytest.mark.skip(reason="DCMTK is not installed (make system-deps installs it)")
        for item in items:
            if "dcmtk" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium per browser test module (Playwright driving Debian's chromium)."""
    from tests.viewer_fixtures import chromium

    with chromium() as b:
        yield b


@pytest.fixture
def page(browser) -> Iterator[object]:
    """A fresh browser context and page; a script error on the page fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    pg = context.new_page()
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, errors
