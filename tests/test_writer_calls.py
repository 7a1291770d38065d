"""Calls handed to the catalogue writer (upload session steps, forwarding, deletions): those
queued together share one transaction and one commit, each in a savepoint of its own."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from db.catalogue import close_database, get_meta, open_database, set_meta
from db.writer import CatalogueWriter


def test_calls_queued_together_share_one_commit_and_fail_alone(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    db = open_database("", tmp_path)
    writer = CatalogueWriter(db).start()
    transactions = []
    begin = writer._transaction
    monkeypatch.setattr(writer, "_transaction", lambda: transactions.append(1) or begin())
    release = threading.Event()

    def first() -> str:
        release.wait(10)  # holds the writer while the others queue up
        return "first"

    def a() -> str:
        set_meta("a", "1")
        return "a"

    def b() -> str:
        set_meta("b", "1")
        raise ValueError("b refused")

    def c() -> str | None:
        set_meta("c", "1")
        return get_meta("a")  # a's write, in the same transaction

    try:
        with ThreadPoolExecutor(4) as pool:
            held = pool.submit(writer.run, first)
            deadline = time.monotonic() + 10
            while not transactions and time.monotonic() < deadline:
                time.sleep(0.01)
            futures = []
            for work in (a, b, c):
                futures.append(pool.submit(writer.run, work))
                while writer._queue.qsize() < len(futures) and time.monotonic() < deadline:
                    time.sleep(0.01)  # queued in this order
            release.set()
            assert held.result(10) == "first"
            assert futures[0].result(10) == "a"
            with pytest.raises(ValueError, match="b refused"):
                futures[1].result(10)
            assert futures[2].result(10) == "1"
    finally:
        writer.stop()
    assert len(transactions) == 2  # the first call alone, then the three queued behind it
    with db.connection_context():
        assert (get_meta("a"), get_meta("b"), get_meta("c")) == ("1", None, "1")
    close_database(db)


def test_a_call_alone_that_raises_leaves_nothing(tmp_path: Path) -> None:
    db = open_database("", tmp_path)
    writer = CatalogueWriter(db).start()

    def half_done() -> None:
        set_meta("half", "1")
        raise ValueError("refused after a write")

    try:
        with pytest.raises(ValueError, match="refused after a write"):
            writer.run(half_done)
        assert writer.run(lambda: get_meta("half")) is None
    finally:
        writer.stop()
    close_database(db)

