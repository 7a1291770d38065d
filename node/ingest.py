"""The one ingest path: every instance, however it arrives, is stored here.

Durable file first (temp, fsync, rename), then its catalogue row through the group-commit
writer; the caller hears "stored" only after both. C-STORE, folder import, HTTP uploads and
retrievals all call ``ingest_received`` or ``ingest_part10``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
from dataclasses import dataclass
from typing import Any, Literal

from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from db.catalogue import Indexed, IndexResult, InstanceRecord
from db.writer import CatalogueWriter
from node.dicomfile import (
    _PARSE_ERRORS,
    InstanceHeader,
    encode_file_meta,
    read_dataset_header,
    read_header,
)
from node.errors import DuplicateInstance, IngestError, InvalidDataset, StorageFull
from node.storage import Placed, Storage

log = logging.getLogger(__name__)

Outcome = Literal["stored", "duplicate", "replaced"]
Buffer = Any  # bytes-like: bytes, memoryview, mmap


@dataclass(frozen=True)
class IngestOutcome:
    outcome: Outcome
    sop_instance_uid: str
    study_uid: str
    series_uid: str


class MismatchedDataset(InvalidDataset):
    """The dataset's SOP Class or Instance UID differs from the one the request named."""


class Ingestor:
    def __init__(self, storage: Storage, writer: CatalogueWriter, duplicate_policy: str) -> None:
        self.storage = storage
        self.writer = writer
        self.duplicate_policy = duplicate_policy
        # Rows may be committed while their files are being fsynced (db.writer): after a
        # power loss, check those against their files before storing anything new.
        for sop_uid, path in writer.recover(storage.intact):
            log.warning("instance %s was not stored durably before the last stop "
                        "(%s missing or incomplete): its row is removed", sop_uid, path)
            storage.remove(path)

    def ingest_received(self, dataset: bytes | Buffer, transfer_syntax: str, sop_class_uid: str,
                        sop_instance_uid: str, source_ae: str | None = None) -> IngestOutcome:
        """Store a dataset as received over DIMSE (no meta), in its transfer syntax.

        ``dataset`` may be any buffer (an mmap of a spilled large dataset): it is parsed,
        hashed and written without being copied into memory.
        """
        if not dataset:
            raise InvalidDataset("the C-STORE request carried an empty dataset")
        meta = encode_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax, source_ae or "")
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            header = read_header(meta + bytes(dataset))
        else:
            header = read_dataset_header(dataset, transfer_syntax, len(meta))
        if header.sop_instance_uid != sop_instance_uid:
            raise MismatchedDataset(
                f"SOP Instance UID {header.sop_instance_uid} in the dataset, "
                f"{sop_instance_uid} in the request"
            )
        if header.sop_class_uid != sop_class_uid:
            raise MismatchedDataset(
                f"SOP Class UID {header.sop_class_uid} in the dataset, {sop_class_uid} in the request"
            )
        return self._store(header, (meta, dataset), source_ae)

    def ingest_part10(self, data: bytes, source_ae: str | None = None,
                      sha256: str | None = None) -> IngestOutcome:
        """Store a file's bytes (import, HTTP upload); a bare dataset gets a meta header.
        ``sha256``: the bytes' digest, when the caller has just computed it (an upload checks
        it against the declared one) and the file is stored as it is."""
        if len(data) >= 132 and data[128:132] == b"DICM":
            return self._store(read_header(data), (data,), source_ae, sha256)
        sop_class, sop_instance, ts = _identify_bare_dataset(data)
        return self.ingest_received(data, ts, sop_class, sop_instance, source_ae)

    def _store(self, header: InstanceHeader, chunks: tuple[Buffer, ...], source_ae: str | None,
               sha256: str | None = None) -> IngestOutcome:
        size = sum(len(chunk) for chunk in chunks)
        if sha256 is None:
            digest = hashlib.sha256()
            for chunk in chunks:
                digest.update(chunk)
            sha256 = digest.hexdigest()
        relative = self.storage.relative_path_for(header.sop_instance_uid, sha256, header.series_uid)
        record = instance_record(header, relative, size, sha256, source_ae)
        replace = self.duplicate_policy == "overwrite"
        if self.writer.overlaps_durability and not replace:
            result, created = self._store_overlapped(record, chunks)
        else:
            result, created = self._store_in_order(record, chunks, replace)
        if result.superseded_path:
            self.storage.remove(result.superseded_path)
        if result.outcome is Indexed.DUPLICATE:
            if result.stored_path != relative and created:
                self.storage.remove(relative)
            if self.duplicate_policy == "reject":
                raise DuplicateInstance(f"SOP Instance {header.sop_instance_uid} is already stored")
        return IngestOutcome(result.outcome.value, header.sop_instance_uid, header.study_uid, header.series_uid)

    def _store_in_order(self, record: InstanceRecord, chunks: tuple[Buffer, ...],
                        replace: bool) -> tuple[IndexResult, bool]:
        """File durable (data, then name, then folder), then the row: for PostgreSQL, where
        other processes read the rows, and for replacements, which delete the old row."""
        placed = self.storage.place(record.path, chunks, sync_first=True)
        try:
            try:
                self.storage.sync_folder(placed)
            except OSError as exc:
                self._discard(placed)
                raise _durability_error(exc, record.path) from None
            try:
                result = self.writer.index(record, replace=replace)
            except Exception as exc:  # noqa: BLE001 - the catalogue failed: keep no unreferenced file
                self._discard(placed)
                raise IngestError(f"the catalogue could not record the instance: {exc}") from exc
        finally:
            self.storage.release(placed)
        return result, placed.created

    def _store_overlapped(self, record: InstanceRecord,
                          chunks: tuple[Buffer, ...]) -> tuple[IndexResult, bool]:
        """The file's fsync and its folder's while the catalogue commits.

        The file gets its final name (fully written) before the row is committed, so a
        process crash never leaves a row without its file; a power loss before all three
        are done can, and the writer's start-up ``recover`` deletes such rows (never
        acknowledged: the caller hears "stored" only after all three). The folder's fsync
        follows the file's in this thread: the file's journal commit carries the new name
        already, so it is short, and a helper thread to overlap it cost more than it saved.
        """
        placed = self.storage.place(record.path, chunks)
        try:
            pending = self.writer.submit(record, settle_later=True)
            failure: OSError | None = None
            try:
                self.storage.sync_file(placed)
                self.storage.sync_folder(placed)
            except OSError as exc:
                failure = exc
            try:
                result = pending.result()
            except Exception as exc:  # noqa: BLE001 - the catalogue failed: keep no unreferenced file
                self._discard(placed)
                raise IngestError(f"the catalogue could not record the instance: {exc}") from exc
            if failure is not None:
                if result.row_id is not None:
                    self.writer.unindex([(result.row_id, record.path)])
                if result.row_id is not None or result.stored_path != record.path:
                    self._discard(placed)
                raise _durability_error(failure, record.path) from None
            if result.row_id is not None:
                self.writer.settle(result.row_id)
        finally:
            self.storage.release(placed)
        return result, placed.created

    def _discard(self, placed: Placed) -> None:
        if placed.created:
            self.storage.remove(placed.relative)


def _durability_error(exc: OSError, relative: str) -> IngestError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left to store {relative}")
    return IngestError(f"could not store {relative} durably: {exc}")


def instance_record(header: InstanceHeader, relative: str, size: int, sha256: str,
                    source_ae: str | None) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        study_uid=header.study_uid,
        series_uid=header.series_uid,
        transfer_syntax=header.transfer_syntax,
        path=relative,
        size=size,
        sha256=sha256,
        source_ae=source_ae.strip() if source_ae else None,
        attrs=header.attrs,
        pixel_offset=header.pixels.offset,
        pixel_length=header.pixels.length,
        encapsulated=header.pixels.encapsulated,
        frame_fragments=header.pixels.frames,
    )


def _identify_bare_dataset(data: bytes) -> tuple[str, str, str]:
    """SOP Class/Instance and transfer syntax of a dataset written without a meta header."""
    try:
        ds = dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        sop_class = str(ds.get("SOPClassUID", "") or "")
        sop_instance = str(ds.get("SOPInstanceUID", "") or "")
        implicit = ds.original_encoding[0] if ds.original_encoding else True
    except _PARSE_ERRORS as exc:
        raise InvalidDataset(f"not a DICOM file: {exc}") from None
    if not sop_class or not sop_instance:
        raise InvalidDataset("not a DICOM file: no SOP Class UID or SOP Instance UID")
    return sop_class, sop_instance, ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
