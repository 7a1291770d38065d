"""The bytes of unfinished uploads: ``data_dir/uploads/<sessionId>.part``, never in the store.

A part file holds exactly the bytes acknowledged so far (the catalogue row's offset is the
truth: a chunk is written at that offset after truncating to it, made durable with fsync,
and only then is the new offset committed). The file is also the session's lock: ``locked``
takes an exclusive ``flock`` on it, so two requests (threads or processes) on one session
take turns, and a part file is only ever removed under its lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from node.errors import StorageFull
from node.storage import fsync_dir

PART_SUFFIX = ".part"
_READ_BLOCK = 1 << 20
_IN_MEMORY = 64 << 20  # bytes: larger part files are mapped, not read


class Part:
    """An open, locked part file."""

    def __init__(self, path: Path, fd: int, created: bool, folder: Path) -> None:
        self.path = path
        self.fd = fd
        self._created = created
        self._folder = folder

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def write_at(self, offset: int, data: bytes | memoryview, *, durable: bool = True) -> None:
        """Put ``data`` at ``offset`` and drop anything after it; durable before returning.

        On any failure the file is cut back to ``offset`` (what was acknowledged before); a
        full disk is StorageFull.
        """
        try:
            os.ftruncate(self.fd, offset)
            view = memoryview(data).cast("B")
            position = offset
            while view:
                written = os.pwrite(self.fd, view, position)
                view, position = view[written:], position + written
            if durable:
                os.fsync(self.fd)
                if self._created:  # the name itself must survive a crash, once
                    fsync_dir(self._folder)
                    self._created = False
        except OSError as exc:
            self.truncate(offset)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(f"no space left for the upload's bytes ({self.path.name})") from None
            raise

    def truncate(self, offset: int) -> None:
        try:
            os.ftruncate(self.fd, offset)
        except OSError:  # pragma: no cover - the offset in the catalogue still rules
            pass

    @contextmanager
    def contents(self) -> Iterator[bytes | mmap.mmap]:
        """The whole file: bytes when small, a read-only map when large (never copied)."""
        size = self.size
        if size <= _IN_MEMORY:
            chunks, position = [], 0
            while block := os.pread(self.fd, _READ_BLOCK * 16, position):
                chunks.append(block)
                position += len(block)
            yield b"".join(chunks)
            return
        mapped = mmap.mmap(self.fd, size, access=mmap.ACCESS_READ)
        try:
            yield mapped
        finally:
            try:
                mapped.close()
            except BufferError:  # pragma: no cover - a view is still alive; the GC closes it
                pass

    def sha256(self, length: int) -> str:
        digest = hashlib.sha256()
        position = 0
        while position < length:
            block = os.pread(self.fd, min(_READ_BLOCK, length - position), position)
            if not block:
                break
            digest.update(block)
            position += len(block)
        return digest.hexdigest()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class PartFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, session_id: str) -> Path:
        return self.folder / f"{session_id}{PART_SUFFIX}"

    @contextmanager
    def locked(self, session_id: str) -> Iterator[Part]:
        """The session's part file, created empty if missing, held under an exclusive lock.

        After the lock is granted the name is checked to still be the file locked (another
        holder may have removed it meanwhile); if not, the new file is locked instead.
        """
        path = self.path(session_id)
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.folder.parent)
        while True:
            created = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    same = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)
        try:
            yield Part(path, fd, created, self.folder)
        finally:
            os.close(fd)  # releases the lock

    def held_bytes(self, session_id: str) -> int:
        try:
            return self.path(session_id).stat().st_size
        except FileNotFoundError:
            return 0
