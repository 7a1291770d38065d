"""Files under data_dir: written to a temp file, linked into place, made durable with fsync.

Layout: ``store/ab/cd/<SOPInstanceUID>.<sha256 prefix>.dcm`` where ``abcd`` starts the
SHA-1 of the Series Instance UID: the instances of a series share one of 65,536 leaf
folders, so a folder is created (and made durable) once per series rather than once per
instance, and reading a series back stays in one folder. The digest in the name means a
replacement never overwrites the file a committed row points to.

A file is durable once its data, its folder entry and every folder created for it are
fsynced. ``place`` puts the bytes at their final name without replacing anything there
(link, not rename); ``sync_file`` and ``sync_folder`` then make it durable, and may run at
the same time as each other and as the catalogue commit (node.ingest decides the order).
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from node.errors import StorageFull

STORE_DIR = "store"
TEMP_DIR = "tmp"
_TEMP_SUFFIX = ".part"


@dataclass
class Placed:
    """A file at its final name, not yet known to be durable."""

    relative: str
    folder: str
    fd: int  # open on the final file, for its fsync
    created: bool  # this call put it there (else identical bytes were there already)


class Storage:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir
        self.store = data_dir / STORE_DIR
        self.temp = data_dir / TEMP_DIR
        self._known_dirs: set[str] = set()

    def prepare(self) -> int:
        """Create the folders and delete temp leftovers of an earlier crash; returns how many."""
        self.store.mkdir(parents=True, exist_ok=True)
        self.temp.mkdir(parents=True, exist_ok=True)
        fsync_dir(str(self.root))
        removed = 0
        for leftover in self.temp.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
                removed += 1
        return removed

    def relative_path_for(self, sop_instance_uid: str, sha256: str, series_uid: str | None = None) -> str:
        h = hashlib.sha1((series_uid or sop_instance_uid).encode("ascii", "replace")).hexdigest()
        safe_uid = "".join(c if c.isdigit() or c == "." else "_" for c in sop_instance_uid)
        return f"{STORE_DIR}/{h[:2]}/{h[2:4]}/{safe_uid}.{sha256[:12]}.dcm"

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def write_durably(self, relative: str, chunks: Sequence[bytes | memoryview]) -> None:
        """Write, fsync, put in place and fsync the folder, in that order.

        On any failure nothing is left at the final path; a full disk is StorageFull.
        """
        placed = self.place(relative, chunks, sync_first=True)
        try:
            self.sync_folder(placed)
        except OSError as exc:
            if placed.created:
                self.remove(relative)
            raise _storage_error(exc, relative) from None
        finally:
            self.release(placed)

    def place(self, relative: str, chunks: Sequence[bytes | memoryview], sync_first: bool = False) -> Placed:
        """Write the bytes to a temp file and link it to its final name.

        With ``sync_first`` the data is fsynced before it gets its name (so the name never
        shows bytes that a power loss could take back); otherwise the caller fsyncs later.
        An existing file at the name is kept when it holds the same bytes (a duplicate),
        and replaced when it does not (a damaged leftover: the name carries the digest).
        Nothing is left behind on failure; a full disk is StorageFull.
        """
        final = self.root / relative
        temp = self.temp / (uuid.uuid4().hex + _TEMP_SUFFIX)
        fd = -1
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            if sync_first:
                os.fsync(fd)
            folder = self._ensure_folder(final.parent)
            created = True
            try:
                os.link(temp, final)
            except FileExistsError:
                if _same_bytes(final, chunks):
                    os.close(fd)
                    fd = os.open(final, os.O_RDONLY)
                    created = False
                else:
                    os.replace(temp, final)
            temp.unlink(missing_ok=True)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            temp.unlink(missing_ok=True)
            raise _storage_error(exc, relative) from None
        return Placed(relative, folder, fd, created)

    def sync_file(self, placed: Placed) -> None:
        os.fsync(placed.fd)

    def sync_folder(self, placed: Placed) -> None:
        fsync_dir(placed.folder)

    def release(self, placed: Placed) -> None:
        if placed.fd >= 0:
            os.close(placed.fd)
            placed.fd = -1

    def _ensure_folder(self, folder: Path) -> str:
        """Create the leaf folder (and its parent) if needed; the first time this process
        uses a folder, fsync its parent so its entry is durable even if an earlier run
        created it and stopped before doing so (the parent's own entry likewise, once).

        No lock: mkdir is atomic and an fsync twice is harmless, so associations storing
        into different new folders (a new series each) do not wait for each other."""
        key = str(folder)
        if key in self._known_dirs:
            return key
        parent = str(folder.parent)
        if parent not in self._known_dirs:
            _make_dir(parent)
            fsync_dir(str(folder.parent.parent))
            self._known_dirs.add(parent)
        _make_dir(key)
        fsync_dir(parent)
        self._known_dirs.add(key)
        return key

    def remove(self, relative: str) -> None:
        (self.root / relative).unlink(missing_ok=True)

    def intact(self, relative: str, size: int, sha256: str) -> bool:
        """Whether the file is there with the recorded size and digest; made durable if so."""
        path = self.root / relative
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            if os.fstat(fd).st_size != size:
                return False
            digest = hashlib.sha256()
            with open(fd, "rb", closefd=False) as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
            if digest.hexdigest() != sha256:
                return False
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(str(path.parent))
        return True

    def iter_files(self) -> Iterable[Path]:
        """Every stored file, for reindexing."""
        for path in sorted(self.store.rglob("*.dcm")):
            if path.is_file():
                yield path


def _same_bytes(path: Path, chunks: Sequence[bytes | memoryview]) -> bool:
    try:
        with open(path, "rb") as fh:
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                if fh.read(len(view)) != view:
                    return False
            return fh.read(1) == b""
    except OSError:
        return False


def _storage_error(exc: OSError, relative: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left to store {relative}")
    return exc


def fsync_dir(folder: str | Path) -> None:
    """Make a folder's entries (new, renamed or removed names) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dir(path: str) -> None:
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
