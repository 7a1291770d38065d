"""Group commit for upload-session writes: requests arriving together share one transaction.

Every session step (create, metadata, acknowledge, each chunk's offset) must be durable before
its answer, and on SQLite each commit is an fsync. Writes are handed to the catalogue writer
thread (``db.writer.CatalogueWriter.run``: a second writing connection would make its batches
fail), and the writes queued while one transaction commits go together in the next, each in
a savepoint of its own so that one refused step (a stale status) leaves the others standing.

No thread of its own: the first caller that finds nobody leading runs the batches until the
queue is empty (leader/follower), so there is nothing to start or stop.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Callable

from db.models import database

Work = Callable[[], Any]


class GroupWriter:
    def __init__(self, run: Callable[[Work], Any]) -> None:
        self._run = run  # runs one function inside one catalogue transaction, returns its result
        self._lock = threading.Lock()
        self._queue: list[tuple[Work, Future]] = []
        self._leading = False

    def write(self, work: Work) -> Any:
        """``work()`` committed (with whatever else was queued meanwhile); its result or exception."""
        future: Future = Future()
        with self._lock:
            self._queue.append((work, future))
            lead = not self._leading
            self._leading = True
        if lead:
            self._lead()
        return future.result()

    def _lead(self) -> None:
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._leading = False
                    return
            try:
                outcomes = self._run(lambda: [_in_savepoint(work) for work, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - the commit failed: every caller hears it
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), (ok, value) in zip(batch, outcomes):
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)


def _in_savepoint(work: Work) -> tuple[bool, Any]:
    try:
        with database.atomic():  # nested: a savepoint, rolled back alone on failure
            return True, work()
    except Exception as exc:  # noqa: BLE001 - handed to the caller of this work
        return False, exc
