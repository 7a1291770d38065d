"""Group commit: one thread writes catalogue rows; every caller waits for its own commit.

Several associations storing at once share one transaction (and one fsync of the WAL), yet
no caller returns before the commit that holds its row. That is what lets the C-STORE SCP
answer Success only for what is durable.

Unsettled rows (SQLite): a caller may commit a row while its file is still being fsynced
(``submit(..., settle_later=True)``), so the file's fsync, its folder's fsync and the WAL's
run at the same time instead of one after the other. Every commit then also records, in the
same transaction, the lowest row id whose file is not yet known to be durable
(``meta.unsettled_from``); the caller calls ``settle`` once its fsyncs are done, and
``unindex`` if one failed. After a power loss, ``recover`` re-checks the rows from that id
on against their files (size and SHA-256), deletes the rows whose file is missing or damaged
and fsyncs the others, before anything is stored. A caller only reports an instance as
stored after its fsyncs and its commit, so a row recover deletes was never acknowledged.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

from peewee import Database, SqliteDatabase

from db.catalogue import (HierarchyCache, IndexResult, InstanceRecord, get_meta, index_batch,
                          instance_rows_from, set_meta, unindex_rows)

log = logging.getLogger(__name__)

_STOP = object()
UNSETTLED_KEY = "unsettled_from"


IndexedHook = Callable[[list[tuple[InstanceRecord, IndexResult]]], None]


class CatalogueWriter:
    def __init__(self, db: Database, max_batch: int = 500, on_indexed: IndexedHook | None = None) -> None:
        """``on_indexed`` runs inside each batch's transaction with its records and results, so
        what it writes (the forwarding queue) commits with the rows, at no extra commit."""
        self.db = db
        self.max_batch = max_batch
        self.on_indexed = on_indexed
        self.cache = HierarchyCache()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="catalogue-writer", daemon=True)
        self._started = False
        self._unsettled: set[int] = set()
        self._unsettled_lock = threading.Lock()

    @property
    def overlaps_durability(self) -> bool:
        """Whether callers may commit rows before their files are durable (settle_later).

        Only for SQLite, where this process is the only writer and ``recover`` runs before
        it stores anything; with PostgreSQL other processes share the rows, so files are
        made durable first.
        """
        return isinstance(self.db, SqliteDatabase)

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
        return self.submit(record, replace).result()

    def submit(self, record: InstanceRecord, replace: bool = False,
               settle_later: bool = False) -> "Future[IndexResult]":
        """Queue one row; the future resolves once the transaction holding it is committed.

        With ``settle_later`` the caller's file is not durable yet: the row stays in the
        unsettled range until ``settle`` (or ``unindex``) is called with its row id.
        """
        if not self._started:
            raise RuntimeError("the catalogue writer is not running")
        if settle_later and not self.overlaps_durability:
            raise ValueError("rows can only be committed before their files with SQLite")
        future: Future[IndexResult] = Future()
        self._queue.put((record, replace, settle_later, future))
        return future

    def settle(self, row_id: int) -> None:
        """The file of this row is durable (its fsyncs are done)."""
        with self._unsettled_lock:
            self._unsettled.discard(row_id)

    def unindex(self, rows: list[tuple[int, str]]) -> list[bool]:
        """Delete committed rows (row id, path) whose files did not become durable."""
        try:
            return self._call(lambda: unindex_rows(rows))
        finally:
            for row_id, _ in rows:
                self.settle(row_id)

    def recover(self, intact: Callable[[str, int, str], bool]) -> list[tuple[str, str]]:
        """Check the unsettled rows of an earlier run; returns (SOP Instance UID, path) of
        the rows deleted because ``intact(path, size, sha256)`` said no."""
        if not self.overlaps_durability:
            return []
        return self._call(lambda: self._recover(intact))

    def _recover(self, intact: Callable[[str, int, str], bool]) -> list[tuple[str, str]]:
        first = get_meta(UNSETTLED_KEY)
        if first is None:
            return []
        rows = instance_rows_from(int(first))
        bad = [(row_id, sop_uid, path) for row_id, sop_uid, path, size, sha256 in rows
               if not intact(path, size, sha256)]
        if bad:
            unindex_rows([(row_id, path) for row_id, _, path in bad])
        set_meta(UNSETTLED_KEY, str(max((row[0] for row in rows), default=int(first) - 1) + 1))
        return [(sop_uid, path) for _, sop_uid, path in bad]

    def run(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` (catalogue writes of another part: upload session steps, forwarding,
        deletions) in this thread and return its result once it is committed. The calls
        queued together share one transaction, each in a savepoint of its own, so a burst of
        small writes costs one commit (a commit that fails fails all of them).

        On SQLite a second connection that writes makes this thread's batches fail with
        "database is locked" (a read snapshot that another commit made stale cannot become a
        write), so other writers hand their writes here instead.
        """
        return self._call(work)

    def submit_call(self, work: Callable[[], Any]) -> Future:
        """``run`` without the wait: the future resolves once ``work``'s transaction is
        committed, so an event loop can await it (``asyncio.wrap_future``) with no thread of
        its own blocked on it."""
        if not self._started:
            raise RuntimeError("the catalogue writer is not running")
        future: Future = Future()
        self._queue.put((work, future))
        return future

    def _call(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` in the writer thread inside a savepoint of the next call transaction;
        wait for the commit."""
        return self.submit_call(work).result()

    def _run(self) -> None:
        with self.db.connection_context():
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                drained = [item]
                stop = False
                while len(drained) < self.max_batch:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stop = True
                        break
                    drained.append(more)
                # Everything drained here was queued by callers still waiting for it, so any
                # order is one they may see: the rows (C-STOREs waiting) first, then the calls.
                rows = [entry for entry in drained if len(entry) == 4]
                calls = [entry for entry in drained if len(entry) == 2]
                if rows:
                    self._commit(rows)
                if calls:
                    self._run_calls(calls)
                if stop:
                    return

    def _transaction(self) -> Any:
        """A transaction that takes SQLite's write lock when it begins (BEGIN IMMEDIATE).

        A deferred one reads first and asks for the lock at its first write; if another
        connection (a command line process creating a retrieval job, a retrieval runner
        recording progress) committed in between, SQLite refuses the upgrade at once with
        "database is locked", without waiting the busy timeout, and a C-STORE was answered
        0xA700. Taking the lock first makes such a writer wait its turn instead.
        """
        if isinstance(self.db, SqliteDatabase):
            return self.db.atomic(lock_type="IMMEDIATE")
        return self.db.atomic()

    def _run_calls(self, calls: list[tuple[Callable[[], Any], Future]]) -> None:
        """The queued calls in one transaction (one commit, one fsync of the WAL), each in a
        savepoint of its own: one that raises is rolled back alone and hears its exception.
        A call alone needs no savepoint (the transaction rolls it back): that spares two
        statements and peewee's bookkeeping of them, a step's share here that is not small
        for the upload session steps, most of which arrive alone."""
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self._transaction():
                if len(calls) == 1:
                    outcomes.append((True, calls[0][0]()))
                else:
                    for work, _ in calls:
                        try:
                            with self.db.atomic():  # nested: a savepoint
                                outcomes.append((True, work()))
                        except Exception as exc:  # noqa: BLE001 - handed to the caller
                            outcomes.append((False, exc))
        except Exception as exc:  # noqa: BLE001 - the commit failed: every caller hears it
            outcomes = [(False, exc)] * len(calls)
        if not all(ok for ok, _ in outcomes):
            self.cache.clear()  # a rolled-back write may have removed rows the cache names
        for (_, future), (ok, value) in zip(calls, outcomes):
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _commit(self, batch: list, fresh: bool = False) -> None:
        """``fresh``: the hierarchy cache was emptied for this attempt (no retry on failure)."""
        new_rows: list[int] = []
        try:
            with self._transaction():
                results = index_batch([(r, replace) for r, replace, _, _ in batch], self.cache)
                if self.on_indexed is not None:
                    self.on_indexed([(item[0], result) for item, result in zip(batch, results)])
                new_rows = [result.row_id for (_, _, later, _), result in zip(batch, results)
                            if later and result.row_id is not None]
                if new_rows:
                    with self._unsettled_lock:
                        self._unsettled.update(new_rows)
                        lowest = min(self._unsettled)
                    set_meta(UNSETTLED_KEY, str(lowest))
        except Exception as exc:  # noqa: BLE001 - isolate the failing row; others still commit
            self.cache.clear()
            with self._unsettled_lock:
                self._unsettled.difference_update(new_rows)
            if len(batch) > 1:
                for item in batch:
                    self._commit([item], fresh=True)
                return
            if not fresh:  # a remembered series or study may have been deleted since (db.admin)
                self._commit(batch, fresh=True)
                return
            log.exception("catalogue write failed for %s", batch[0][0].sop_instance_uid)
            batch[0][3].set_exception(exc)
            return
        for (_, _, _, future), result in zip(batch, results):
            future.set_result(result)
