"""Import files, folder trees and DICOMDIR media (USB sticks, CDs) through the ingest path.

``collect_files`` also serves ``push``, which reads no DICOM itself: pydicom and the ingest
path are imported only where they are used (they are most of a push's start-up otherwise).
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from node.errors import DuplicateInstance, IngestError, InvalidDataset

if TYPE_CHECKING:
    from node.ingest import Ingestor

log = logging.getLogger(__name__)


@dataclass
class ImportSummary:
    stored: int = 0
    already_present: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # not DICOM: (path, reason)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # DICOM but refused

    @property
    def ok(self) -> bool:
        return not self.rejected


def collect_files(paths: Iterable[Path]) -> list[Path]:
    """Files to import: a DICOMDIR brings the files it references, a folder its tree."""
    found: dict[Path, None] = {}
    for path in paths:
        for file in _expand(Path(path)):
            found.setdefault(file, None)
    return list(found)


def _expand(path: Path) -> Iterator[Path]:
    if path.is_file():
        if path.name.upper() == "DICOMDIR":
            referenced = dicomdir_files(path)
            yield from referenced if referenced is not None else _walk(path.parent)
        else:
            yield path
        return
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    yield from _walk(path)


def _walk(folder: Path) -> Iterator[Path]:
    """The folder's DICOMDIR references first (in media order), then every other file.

    A DICOMDIR anywhere in the tree is a directory of the media, not an instance: a folder
    of copied CDs holds one per disc, and each disc's files are found by the walk.
    """
    dicomdir = next((folder / n for n in os.listdir(folder) if n.upper() == "DICOMDIR"), None)
    referenced: set[Path] = set()
    if dicomdir is not None and dicomdir.is_file():
        for file in dicomdir_files(dicomdir) or []:
            referenced.add(file)
            yield file
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            file = Path(root) / name
            if name.upper() == "DICOMDIR" or file in referenced:
                continue
            yield file


def dicomdir_files(dicomdir: Path) -> list[Path] | None:
    """Files referenced by a DICOMDIR (PS3.10 8.6), found even on media whose case differs;
    None when the DICOMDIR cannot be read (the caller then walks its folder)."""
    from pydicom import dcmread

    try:
        ds = dcmread(dicomdir, force=True)
        records = ds.DirectoryRecordSequence
    except Exception as exc:  # noqa: BLE001 - an unreadable DICOMDIR falls back to the folder walk
        log.warning("cannot read %s (%s); importing its folder as plain files", dicomdir, exc)
        return None
    base = dicomdir.parent
    found: list[Path] = []
    for record in records:
        ref = record.get("ReferencedFileID")
        if not ref:
            continue
        parts = [ref] if isinstance(ref, str) else list(ref)
        resolved = _resolve_case_insensitive(base, parts)
        if resolved is not None:
            found.append(resolved)
        else:
            log.warning("%s references %s, which is not on the media", dicomdir, "/".join(parts))
    return found


def _resolve_case_insensitive(base: Path, parts: list[str]) -> Path | None:
    current = base
    for part in parts:
        candidate = current / part
        if not candidate.exists():
            try:
                match = next((current / n for n in os.listdir(current) if n.upper() == part.upper()), None)
            except OSError:
                return None
            if match is None:
                return None
            candidate = match
        current = candidate
    return current if current.is_file() else None


def import_files(ingestor: Ingestor, files: list[Path],
                 on_progress: Callable[[Path], None] | None = None) -> ImportSummary:
    summary = ImportSummary()
    for file in files:
        try:
            data = file.read_bytes()
        except OSError as exc:
            summary.rejected.append((str(file), f"cannot read: {exc.strerror or exc}"))
        else:
            _import_one(ingestor, file, data, summary)
        if on_progress is not None:
            on_progress(file)
    return summary


def _import_one(ingestor: Ingestor, file: Path, data: bytes, summary: ImportSummary) -> None:
    if not looks_like_dicom(data):
        summary.skipped.append((str(file), "not a DICOM file"))
        return
    try:
        outcome = ingestor.ingest_part10(as_part10(data), source_ae=None)
    except DuplicateInstance:
        summary.already_present += 1
    except InvalidDataset as exc:
        summary.rejected.append((str(file), str(exc)))
    except IngestError as exc:
        summary.rejected.append((str(file), str(exc)))
    else:
        if outcome.outcome == "duplicate":
            summary.already_present += 1
        else:
            summary.stored += 1


def looks_like_dicom(data: bytes) -> bool:
    """Part 10 files carry "DICM" at 128; files without a preamble start with the meta group
    (0002) or, as bare datasets, with a low element of group 0008."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    if len(data) < 8:
        return False
    group, element = struct.unpack_from("<HH", data)
    return group == 0x0002 or (group == 0x0008 and element < 0x1000)


def as_part10(data: bytes) -> bytes:
    """File meta written without its preamble (PS3.10 7.1) gets one, so the meta group is read
    as meta, not stored as part of the dataset."""
    if data[:2] == b"\x02\x00" and data[128:132] != b"DICM":
        return b"\x00" * 128 + b"DICM" + data
    return data
