"""verify, reindex and stats: the catalogue can always be checked against, and rebuilt from,
the stored files."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from db.catalogue import clear_catalogue, iter_instance_files
from db.writer import CatalogueWriter
from node.dicomfile import read_header
from node.errors import InvalidDataset
from node.ingest import instance_record
from node.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (sop uid, path)
    corrupt: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt


def verify_files(storage: Storage, on_progress: Callable[[], None] | None = None) -> VerifyReport:
    """Re-read every stored file and compare it with its recorded SHA-256."""
    report = VerifyReport()
    for sop_uid, path, sha256 in iter_instance_files():
        report.checked += 1
        try:
            digest = _sha256_of(storage.absolute(path))
        except FileNotFoundError:
            report.missing.append((sop_uid, path))
        else:
            if digest != sha256:
                report.corrupt.append((sop_uid, path))
        if on_progress:
            on_progress()
    return report


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ReindexReport:
    indexed: int = 0
    duplicates: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def reindex(storage: Storage, writer: CatalogueWriter,
            on_progress: Callable[[], None] | None = None) -> ReindexReport:
    """Drop the catalogue rows and rebuild them by reading each stored file's header."""
    report = ReindexReport()
    clear_catalogue()
    writer.cache.clear()
    for path in storage.iter_files():
        relative = path.relative_to(storage.root).as_posix()
        try:
            data = path.read_bytes()
            header = read_header(data)
        except (OSError, InvalidDataset) as exc:
            report.unreadable.append((relative, str(exc)))
        else:
            sha256 = hashlib.sha256(data).hexdigest()
            result = writer.index(instance_record(header, relative, len(data), sha256, header.source_ae))
            if result.outcome.value == "duplicate":
                report.duplicates.append(relative)
            else:
                report.indexed += 1
        if on_progress:
            on_progress()
    return report

