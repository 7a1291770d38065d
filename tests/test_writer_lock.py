"""The catalogue writer takes SQLite's write lock when its transaction begins, so a write from
another connection in the middle of it waits instead of making it fail ("database is locked",
which a C-STORE would have answered with 0xA700)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from db.catalogue import get_meta, open_database, set_meta
from db.models import Meta
from db.writer import CatalogueWriter


def test_a_write_from_another_connection_waits_for_the_writer(tmp_path: Path) -> None:
    db = open_database("", tmp_path)
    writer = CatalogueWriter(db).start()
    read_done, other_committed = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def work() -> str | None:
        Meta.select().count()  # the transaction has read: a deferred one holds a snapshot now
        read_done.set()
        other_committed.wait(0.5)  # the other connection writes meanwhile (if it can)
        set_meta("from-writer", "1")
        return get_meta("from-other")

    def other() -> None:
        try:
            read_done.wait(10)
            con = sqlite3.connect(tmp_path / "catalogue.sqlite", timeout=10)
            with con:
                con.execute("INSERT INTO meta (key, value) VALUES ('from-other', '1')")
            con.close()
            other_committed.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        seen = writer.run(work)
    finally:
        thread.join(15)
        writer.stop()
    assert not errors
    assert seen is None  # the other write waited for the writer's commit
    with db.connection_context():
        assert get_meta("from-writer") == "1" and get_meta("from-other") == "1"
    db.close()
