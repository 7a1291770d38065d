"""Group commit: one thread writes catalogue rows; every caller waits for its own commit.

Several associations storing at once share one transaction (and one fsync of the WAL), yet
no caller returns before the commit that holds its row. That is what lets the C-STORE SCP
answer Success only for what is durable.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future

from peewee import Database

from db.catalogue import HierarchyCache, IndexResult, InstanceRecord, index_batch

log = logging.getLogger(__name__)

_STOP = object()


class CatalogueWriter:
    def __init__(self, db: Database, max_batch: int = 500) -> None:
        self.db = db
        self.max_batch = max_batch
        self.cache = HierarchyCache()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="catalogue-writer", daemon=True)
        self._started = False

    def start(self) -> "CatalogueWriter":
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def stop(self) -> None:
        """Commit what is queued, then end the thread."""
        if self._started:
            self._queue.put(_STOP)
            self._thread.join()
            self._started = False

    def index(self, record: InstanceRecord, replace: bool = False) -> IndexResult:
        """Queue one row and wait until the transaction holding it is committed."""
        if not self._started:
            raise RuntimeError("the catalogue writer is not running")
        future: Future[IndexResult] = Future()
        self._queue.put((record, replace, future))
        return future.result()

    def _run(self) -> None:
        with self.db.connection_context():
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                batch = [item]
                stop = False
                while len(batch) < self.max_batch:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stop = True
                        break
                    batch.append(more)
                self._commit(batch)
                if stop:
                    return

    def _commit(self, batch: list) -> None:
        try:
            with self.db.atomic():
                results = index_batch([(r, replace) for r, replace, _ in batch], self.cache)
        except Exception as exc:  # noqa: BLE001 - isolate the failing row; others still commit
            self.cache.clear()
            if len(batch) > 1:
                for item in batch:
                    self._commit([item])
                return
            log.exception("catalogue write failed for %s", batch[0][0].sop_instance_uid)
            batch[0][2].set_exception(exc)
            return
        for (_, _, future), result in zip(batch, results):
            future.set_result(result)

