"""The push client's outbox: file copies under UUID names and a small SQLite queue beside them.

Offline first: a file is copied into ``<outbox>/files/<uuid>.dcm`` (hashed while copied, made
durable with fsync) and its row committed before anything goes over the network, so the
original may be gone and the server unreachable without losing the image. The copy is
deleted only once the server has confirmed ``ACK_RECEIVED``; the row stays, as the record.

Local states of an item: ``queued`` (no session yet, or one to create again), ``sending``
(a server session is known), ``done`` (acknowledged, copy deleted), ``failed`` (the server
refused the file for good: not DICOM, a rejected duplicate; the copy is kept).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from node.storage import fsync_dir

QUEUED, SENDING, DONE, FAILED = "queued", "sending", "done", "failed"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    server TEXT NOT NULL,
    order_id TEXT,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    status TEXT NOT NULL,
    session_id TEXT,
    server_image_id TEXT,
    already_present INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    added_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS items_pending ON items (server, status);
"""
_COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class Item:
    item_id: str
    source: str
    server: str
    order_id: str | None
    size: int
    sha256: str
    status: str
    session_id: str | None
    server_image_id: str | None
    already_present: bool
    attempts: int
    last_error: str | None


class Outbox:
    """The folder and its queue; safe to share between the uploading threads."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files = folder / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(folder / "queue.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Only the rows of new copies must survive a power loss (``add`` commits them with
        # FULL): a lost later step (a session id, "done") is found again from the server,
        # which answers the same session for the same file, so those commits skip the fsync.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._remove_unqueued_copies()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def path_of(self, item: Item) -> Path:
        return self.files / f"{item.item_id}.dcm"

    def add(self, sources: Iterable[Path], server: str, order_id: str | None) -> tuple[list[Item], int]:
        """Copy each file in, durably, and queue it; a file whose digest is already waiting for
        this server and order is not queued twice. Returns the new items and the count of such
        repeats."""
        copies: list[tuple[str, Path, int, str]] = []
        buffer = memoryview(bytearray(_COPY_BLOCK))  # one for the batch: no allocation per block
        for source in sources:
            item_id = str(uuid.uuid4())
            size, sha256 = _copy_hashing(source, self.files / f"{item_id}.dcm", buffer)
            copies.append((item_id, source, size, sha256))
        # The copies' fsyncs once all are written: the first one's journal commit carries the
        # others' data and names, so the rest find little left to do (one commit per batch
        # instead of one per file, while the server's fsyncs wait behind the same journal).
        for item_id, *_ in copies:
            _fsync_path(self.files / f"{item_id}.dcm")
        fsync_dir(self.files)  # every name at once, before the rows that point at them
        added, repeats = [], 0
        with self._lock:
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for item_id, source, size, sha256 in copies:
                    waiting = self._db.execute(
                        "SELECT 1 FROM items WHERE server = ? AND sha256 = ? AND IFNULL(order_id, '') = ? "
                        "AND status IN (?, ?)", (server, sha256, order_id or "", QUEUED, SENDING)).fetchone()
                    if waiting:
                        repeats += 1
                        (self.files / f"{item_id}.dcm").unlink()
                        continue
                    self._db.execute(
                        "INSERT INTO items (item_id, source, server, order_id, size, sha256, status, added_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (item_id, str(source), server, order_id, size, sha256, QUEUED, time.time()))
                    added.append(item_id)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._db.execute("PRAGMA synchronous=NORMAL")
        return [self.get(item_id) for item_id in added], repeats

    def pending(self, server: str) -> list[Item]:
        """Items still to deliver to ``server``, oldest first."""
        return self._select("WHERE server = ? AND status IN (?, ?) ORDER BY added_at, rowid",
                            (server, QUEUED, SENDING))

    def get(self, item_id: str) -> Item:
        return self._select("WHERE item_id = ?", (item_id,))[0]

    def update(self, item: Item, **changes: object) -> Item:
        columns = ", ".join(f"{name} = ?" for name in changes)
        with self._lock:
            self._db.execute(f"UPDATE items SET {columns} WHERE item_id = ?", (*changes.values(), item.item_id))
        return self.get(item.item_id)

    def finish(self, item: Item, server_image_id: str, already_present: bool) -> Item:
        """ACK_RECEIVED: record it, then delete the copy (a stop in between leaves a copy the
        next start removes, never a row without its file)."""
        item = self.update(item, status=DONE, server_image_id=server_image_id,
                           already_present=int(already_present), finished_at=time.time(), last_error=None)
        self.path_of(item).unlink(missing_ok=True)
        return item

    def _select(self, where: str, args: tuple) -> list[Item]:
        with self._lock:
            rows = self._db.execute(
                "SELECT item_id, source, server, order_id, size, sha256, status, session_id, server_image_id, "
                f"already_present, attempts, last_error FROM items {where}", args).fetchall()
        return [Item(*row[:9], bool(row[9]), row[10], row[11]) for row in rows]

    def _remove_unqueued_copies(self) -> None:
        """Copies without a waiting row: a stop between copy and commit, or after the ACK."""
        with self._lock:
            keep = {row[0] for row in self._db.execute(
                "SELECT item_id FROM items WHERE status IN (?, ?, ?)", (QUEUED, SENDING, FAILED))}
        for path in self.files.glob("*.dcm"):
            if path.stem not in keep:
                path.unlink(missing_ok=True)


def _copy_hashing(source: Path, target: Path, buffer: memoryview) -> tuple[int, str]:
    """Copy and hash in one read of the source, through ``buffer``; the caller fsyncs."""
    digest = hashlib.sha256()
    size = 0
    with source.open("rb", buffering=0) as src, target.open("wb", buffering=0) as dst:
        while count := src.readinto(buffer):
            digest.update(buffer[:count])
            written = 0
            while written < count:  # a short write only when the disk fills (the next one raises)
                written += dst.write(buffer[written:count])
            size += count
    return size, digest.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
