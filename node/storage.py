"""Files under data_dir: temp write, fsync, atomic rename, fsync of the folder.

Layout: ``store/ab/cd/<SOPInstanceUID>.<sha256 prefix>.dcm`` where ``abcd`` starts the
SHA-1 of the SOP Instance UID: 65,536 leaf folders, so even ten million instances put only
about 150 files in one folder. The digest in the name means a replacement never overwrites
the file a committed row points to.
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from pathlib import Path
from typing import Iterable

from node.errors import StorageFull

STORE_DIR = "store"
TEMP_DIR = "tmp"
_TEMP_SUFFIX = ".part"


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
        removed = 0
        for leftover in self.temp.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
                removed += 1
        return removed

    def relative_path_for(self, sop_instance_uid: str, sha256: str) -> str:
        h = hashlib.sha1(sop_instance_uid.encode("ascii", "replace")).hexdigest()
        safe_uid = "".join(c if c.isdigit() or c == "." else "_" for c in sop_instance_uid)
        return f"{STORE_DIR}/{h[:2]}/{h[2:4]}/{safe_uid}.{sha256[:12]}.dcm"

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def write_durably(self, relative: str, chunks: Iterable[bytes | memoryview]) -> None:
        """Write to a temp file, fsync, rename into place and fsync the folder.

        On any failure nothing is left at the final path; a full disk is StorageFull.
        """
        final = self.root / relative
        temp = self.temp / (uuid.uuid4().hex + _TEMP_SUFFIX)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            folder = str(final.parent)
            if folder not in self._known_dirs:
                final.parent.mkdir(parents=True, exist_ok=True)
                self._known_dirs.add(folder)
            os.rename(temp, final)
            _fsync_dir(folder)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(f"no space left to store {relative}") from None
            raise

    def remove(self, relative: str) -> None:
        (self.root / relative).unlink(missing_ok=True)

    def iter_files(self) -> Iterable[Path]:
        """Every stored file, for reindexing."""
        for path in sorted(self.store.rglob("*.dcm")):
            if path.is_file():
                yield path


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
