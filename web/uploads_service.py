"""Upload sessions: the state machine, the part bytes, and the hand-over to the one ingest path.

Plain Python, no Starlette: ``web.uploads`` (JSON) and ``web.uploads_tus`` (tus 1.0.0) are its
HTTP edges and map its exceptions (the tree is drawn in ``web.uploads_types``) to statuses there.

Why the order of things: a chunk is durable in its part file before its offset is committed;
the last chunk is checked against the declared SHA-256 and ingested before the session says
SYNCED, so SYNCED always means "stored durably and catalogued".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from db import uploads as db
from db.accounts import utcnow
from db.models import database
from node.config import UploadSettings
from node.errors import DuplicateInstance, IngestError, InvalidDataset, StorageFull
from web.uploads_parts import Part, PartFiles
from web.uploads_types import (  # noqa: F401 - re-exported: the service's vocabulary
    BeyondSize,
    Caller,
    ChunkChecksum,
    ChunkChecksumMismatch,
    IdentityConflict,
    IngestUnavailable,
    InvalidTransition,
    NewSession,
    OffsetMismatch,
    RetriesExhausted,
    SessionExpired,
    SessionNotFound,
    TooLarge,
    UploadError,
)

log = logging.getLogger(__name__)

CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH"
INVALID_DICOM = "INVALID_DICOM"
DUPLICATE_INSTANCE = "DUPLICATE_INSTANCE"
SYSTEM_USER = "system"
# JSON names of the fields fixed at creation (metadata may not restate them differently)
IDENTITY_FIELDS = {"sessionId": "session_id", "fileName": "file_name", "size": "size",
                   "sha256": "sha256", "contentType": "content_type", "orderId": "order_id"}


class UploadSessions:
    """Every operation on sessions; stateless apart from its settings (cheap to build)."""

    def __init__(self, limits: UploadSettings, data_dir: Path, ingestor: Any = None,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.limits = limits
        self.parts = PartFiles(data_dir / "uploads")
        self.ingestor = ingestor  # node.ingest.Ingestor
        self.now = clock
        self._writer = getattr(ingestor, "writer", None)  # db.writer.CatalogueWriter

    # --- the JSON resource ------------------------------------------------------------------

    async def create(self, caller: Caller, new: NewSession) -> tuple[db.SessionRecord, bool]:
        """A new QUEUED session, or (False) the caller's session already carrying this digest
        for this order: one file is never uploaded, nor stored, twice."""
        if new.size > self.limits.max_size:
            raise TooLarge(f"size {new.size} exceeds the node's limit of {self.limits.max_size} bytes")
        for _ in range(2):
            now = self.now()
            record, created = await self._write_soon(lambda: db.create_session(
                session_id=str(uuid.uuid4()), owner=caller.username, file_name=new.file_name,
                size=new.size, sha256=new.sha256, content_type=new.content_type,
                order_id=new.order_id, metadata=new.metadata, now=now, expires_at=self._expiry(now)))
            if created:
                return record, True
            if record.size != new.size:
                raise IdentityConflict(f"session {record.session_id} has this SHA-256 with size "
                                       f"{record.size}, not {new.size}", record.status)
            record = await asyncio.to_thread(self._expire_if_due_now, record)
            if record.status != db.EXPIRED:  # expired just now: its key is free, try again
                return record, False
        raise InvalidTransition("the session for this file keeps expiring; try again")  # pragma: no cover

    def get(self, caller: Caller, session_id: str) -> db.SessionRecord:
        with database.connection_context():
            return self._visible(caller, session_id)

    async def put_metadata(self, caller: Caller, session_id: str, metadata: dict[str, Any]) -> db.SessionRecord:
        """Metadata comes before the bytes; it may be replaced until the first byte arrives."""

        def store(record: db.SessionRecord) -> db.SessionRecord:
            for name, column in IDENTITY_FIELDS.items():
                if name in metadata and metadata[name] != getattr(record, column):
                    raise IdentityConflict(f"{name} is fixed when the session is created", record.status)
            return self._move_here(record, caller, expect=(db.QUEUED, db.METADATA_UPLOADED),
                                   steps=(db.METADATA_UPLOADED,), detail="metadata stored",
                                   what="store metadata", metadata=metadata, expires_at=self._expiry(self.now()))

        return await self._step(caller, session_id, store)

    async def acknowledge(self, caller: Caller, session_id: str, server_image_id: str) -> db.SessionRecord:
        """SYNCED -> ACK_RECEIVED: the client may now delete its copy. Repeating it is harmless."""

        def confirm(record: db.SessionRecord) -> db.SessionRecord:
            if record.status in (db.SYNCED, db.ACK_RECEIVED) and server_image_id != record.server_image_id:
                raise InvalidTransition(f"serverImageId {server_image_id!r} is not this session's "
                                        f"image ({record.server_image_id})", record.status)
            if record.status == db.ACK_RECEIVED:
                return record
            try:
                return self._move_here(record, caller, expect=(db.SYNCED,), steps=(db.ACK_RECEIVED,),
                                       detail="the client confirmed the stored image", what="acknowledge")
            except InvalidTransition:
                current = self._reload(record)  # two clients of one file acknowledged at once
                if current.status == db.ACK_RECEIVED and current.server_image_id == server_image_id:
                    return current
                raise

        return await self._step(caller, session_id, confirm)

    def retry(self, caller: Caller, session_id: str) -> db.SessionRecord:
        """FAILED -> again. Sound kept bytes (the digest matched) are ingested again at once;
        otherwise the session waits for the bytes from offset 0."""
        with database.connection_context():
            record = self._visible(caller, session_id)
            self._check_retry(record)
            with self.parts.locked(session_id) as part:
                record = self._reload(record)
                self._check_retry(record)
                count = record.retry_count + 1
                if record.error_code != CHECKSUM_MISMATCH and part.size == record.size:
                    record = self._move(record, caller, expect=(db.FAILED,), steps=(db.BINARY_UPLOADING,),
                                        detail=f"retry {count}: the kept bytes are stored again",
                                        what="retry", retry_count=count, error_code=None,
                                        error_message=None)
                    return self._store(record, caller, part, record.size, b"")
                part.truncate(0)
                now = self.now()
                return self._move(record, caller, expect=(db.FAILED,), steps=(db.METADATA_UPLOADED,),
                                  detail=f"retry {count}: waiting for the bytes from offset 0",
                                  what="retry", retry_count=count, upload_offset=0, error_code=None,
                                  error_message=None, expires_at=self._expiry(now))

    def events(self, caller: Caller, session_id: str) -> list[db.EventRecord]:
        with database.connection_context():
            self._visible(caller, session_id)
            return db.session_events(session_id)

    def list(self, caller: Caller, statuses: tuple[str, ...] | None, order_id: str | None,
             limit: int, offset: int) -> list[db.SessionRecord]:
        with database.connection_context():
            return db.list_sessions(owner=None if caller.admin else caller.username, statuses=statuses,
                                    order_id=order_id, limit=limit, offset=offset)

    # --- the tus resource -------------------------------------------------------------------

    def append(self, caller: Caller, session_id: str, offset: int, chunk: bytes,
               checksum: ChunkChecksum | None = None) -> db.SessionRecord:
        """Accept one PATCH body at ``offset``: durable before the new offset is committed; the
        last one also verified and ingested. A refused chunk changes nothing."""
        with database.connection_context():
            record = self._visible(caller, session_id)
            self._check_accepts(record, offset, len(chunk))
            whole = offset == 0 and len(chunk) == record.size  # one PATCH: one SHA-256 serves both checks
            chunk_sha256 = hashlib.sha256(chunk).digest() if whole else None
            if checksum is not None and not checksum.matches(chunk, chunk_sha256):
                raise ChunkChecksumMismatch(f"the chunk's {checksum.algorithm} differs from Upload-Checksum; "
                                            "it was discarded")
            with self.parts.locked(session_id) as part:
                record = self._reload(record)
                self._check_accepts(record, offset, len(chunk))
                end = offset + len(chunk)
                if end < record.size:
                    if not chunk:
                        return record
                    part.write_at(offset, chunk)
                    now = self.now()
                    steps = (db.BINARY_UPLOADING,) if record.status == db.METADATA_UPLOADED else ()
                    return self._move(record, caller, expect=(record.status,), steps=steps,
                                      detail="first bytes received", what="append bytes",
                                      expect_offset=offset, upload_offset=end,
                                      expires_at=self._expiry(now))
                return self._store(record, caller, part, offset, chunk,
                                   chunk_sha256.hex() if chunk_sha256 is not None else None)

    def _store(self, record: db.SessionRecord, caller: Caller, part: Part, offset: int,
               chunk: bytes, whole_sha256: str | None = None) -> db.SessionRecord:
        """The last bytes: SHA-256 of the whole file (``whole_sha256`` when the one chunk was
        the file and is hashed already), then the one ingest path (node.ingest)."""
        whole = offset == 0 and len(chunk) == record.size  # one PATCH: never touches the disk twice
        if not whole and chunk:
            part.write_at(offset, chunk, durable=False)  # the store's copy is the durable one
        with _file_bytes(part, chunk if whole else None) as data:
            digest = whole_sha256 if whole and whole_sha256 else hashlib.sha256(data).hexdigest()
            if digest != record.sha256:
                part.remove()  # the bytes are not the file the session declared
                return self._fail(record, caller, offset, CHECKSUM_MISMATCH,
                                  "the received bytes do not have the declared SHA-256")
            try:
                outcome = self._ingestor().ingest_part10(data, sha256=digest)
            except (InvalidDataset, DuplicateInstance) as exc:
                code = INVALID_DICOM if isinstance(exc, InvalidDataset) else DUPLICATE_INSTANCE
                part.write_at(offset, chunk)  # sound bytes are kept (durably) for a retry
                return self._fail(record, caller, offset, code, str(exc))
            except StorageFull:
                part.truncate(offset)
                raise
            except IngestError as exc:
                part.truncate(offset)
                raise IngestUnavailable(f"the node could not store the file now: {exc}") from None
        steps = (db.BINARY_UPLOADING, db.SYNCED) if record.status == db.METADATA_UPLOADED else (db.SYNCED,)
        stored = self._move(record, caller, expect=(record.status,), steps=steps,
                            detail=f"stored as {outcome.sop_instance_uid} ({outcome.outcome})",
                            what="store", expect_offset=offset, upload_offset=record.size,
                            server_image_id=outcome.sop_instance_uid, expires_at=None)
        part.remove()
        return stored

    def _fail(self, record: db.SessionRecord, caller: Caller, offset: int, code: str,
              message: str) -> db.SessionRecord:
        steps = (db.BINARY_UPLOADING, db.FAILED) if record.status == db.METADATA_UPLOADED else (db.FAILED,)
        return self._move(record, caller, expect=(record.status,), steps=steps, detail=f"{code}: {message}",
                          what="fail", expect_offset=offset, upload_offset=record.size,
                          error_code=code, error_message=message, expires_at=None)

    # --- expiry -------------------------------------------------------------------------------

    def expire_abandoned(self, now: dt.datetime | None = None) -> int:
        """Mark unfinished sessions past their expiry EXPIRED and free their bytes; also free the
        kept bytes of long-idle FAILED sessions and part files no session needs. Returns how
        many sessions expired."""
        now = now or self.now()
        expired = 0
        with database.connection_context():
            for session_id in db.abandoned_sessions(now):
                record = db.get_session(session_id)
                if record is not None and self._expire(record, now).status == db.EXPIRED:
                    expired += 1
            idle_since = now - dt.timedelta(seconds=self.limits.expire_after_seconds)
            for session_id in db.idle_failed_sessions(idle_since):
                if self.parts.held_bytes(session_id):
                    with self.parts.locked(session_id) as part:
                        part.remove()
            self._remove_orphans()
        return expired

    def _remove_orphans(self) -> None:
        """Part files left by a stop between a session's last commit and its file's removal."""
        if not self.parts.folder.is_dir():
            return
        for path in self.parts.folder.glob("*.part"):
            record = db.get_session(path.stem)
            if record is None or record.status in (db.SYNCED, db.ACK_RECEIVED, db.EXPIRED):
                with self.parts.locked(path.stem) as part:
                    part.remove()

    def _expire_if_due_now(self, record: db.SessionRecord) -> db.SessionRecord:
        with database.connection_context():
            return self._expire_if_due(record)

    def _expire_if_due(self, record: db.SessionRecord) -> db.SessionRecord:
        now = self.now()
        return self._expire(record, now) if self._due(record, now) else record

    @staticmethod
    def _due(record: db.SessionRecord, now: dt.datetime) -> bool:
        return record.status in db.PENDING and record.expires_at is not None and record.expires_at <= now

    def _expire(self, record: db.SessionRecord, now: dt.datetime) -> db.SessionRecord:
        with self.parts.locked(record.session_id) as part:
            record = self._reload(record)
            if record.status not in db.PENDING or record.expires_at is None or record.expires_at > now:
                return record  # bytes arrived meanwhile
            freed = part.size
            try:
                record = self._write(lambda: db.move(
                    record, expect=(record.status,), steps=(db.EXPIRED,), username=SYSTEM_USER,
                    now=now, expect_offset=record.upload_offset,
                    detail=f"no bytes for {self.limits.expire_after_seconds} s; {freed} bytes freed",
                    dedupe_key=None, expires_at=None))
            except db.StaleSession as exc:  # pragma: no cover - changed under our lock: not ours
                return exc.current
            part.remove()
            log.info("upload session %s of %s expired; %d bytes freed", record.session_id,
                     record.owner, freed)
            return record

    # --- helpers --------------------------------------------------------------------------------

    def _visible(self, caller: Caller, session_id: str) -> db.SessionRecord:
        record = db.get_session(session_id)
        if record is None or (record.owner != caller.username and not caller.admin):
            raise SessionNotFound(f"no upload session {session_id}")
        return self._expire_if_due(record)

    def _reload(self, record: db.SessionRecord) -> db.SessionRecord:
        current = db.get_session(record.session_id)
        assert current is not None  # sessions are never deleted
        return current

    async def _step(self, caller: Caller, session_id: str,
                    step: Callable[[db.SessionRecord], db.SessionRecord]) -> db.SessionRecord:
        """Read the caller's session and apply ``step`` in one catalogue transaction of the
        writer thread, awaited by the event loop: the request holds no worker thread of its
        own, whose hand-overs (loop, worker, writer and back, each waking a thread that then
        waits for the GIL) cost more than the step. A session due to expire (or a server
        without a writer) takes the ordinary way in a worker thread, where it is expired under
        its part file's lock first."""

        def read_and_step() -> db.SessionRecord | None:
            record = db.get_session(session_id)
            if record is None or (record.owner != caller.username and not caller.admin):
                raise SessionNotFound(f"no upload session {session_id}")
            return None if self._due(record, self.now()) else step(record)

        result = await self._write_soon(read_and_step) if self._writer is not None else None
        if result is not None:
            return result

        def step_the_ordinary_way() -> db.SessionRecord:
            with database.connection_context():
                record = self._visible(caller, session_id)  # expired here if due (its own write)
                return self._write(lambda: step(record))

        return await asyncio.to_thread(step_the_ordinary_way)

    def _move_here(self, record: db.SessionRecord, caller: Caller, *, expect: tuple[str, ...],
                   steps: tuple[str, ...], detail: str, what: str, **changes: Any) -> db.SessionRecord:
        """``_move`` inside a transaction already open (the writer's, or a read-only server's)."""
        try:
            return db.move(record, expect=expect, steps=steps, username=caller.username,
                           detail=detail, now=self.now(), **changes)
        except db.StaleSession as exc:
            raise InvalidTransition(f"cannot {what}: the session is {exc.current.status}",
                                    exc.current.status) from None

    def _move(self, record: db.SessionRecord, caller: Caller, *, expect: tuple[str, ...],
              steps: tuple[str, ...], detail: str, what: str, expect_offset: int | None = None,
              **changes: Any) -> db.SessionRecord:
        try:
            now = self.now()
            return self._write(lambda: db.move(record, expect=expect, steps=steps,
                                               username=caller.username, detail=detail, now=now,
                                               expect_offset=expect_offset, **changes))
        except db.StaleSession as exc:
            raise InvalidTransition(f"cannot {what}: the session is {exc.current.status}",
                                    exc.current.status) from None

    def _write(self, work: Callable[[], Any]) -> Any:
        """Catalogue writes go through the ingest path's writer thread when there is one
        (steps arriving together share its commit, db.writer), a read-only server writes
        directly."""
        return self._writer.run(work) if self._writer is not None else work()

    async def _write_soon(self, work: Callable[[], Any]) -> Any:
        """``_write`` awaited by the event loop (no worker thread waits for the writer)."""
        if self._writer is None:
            return await asyncio.to_thread(work)
        return await asyncio.wrap_future(self._writer.submit_call(work))

    def _check_accepts(self, record: db.SessionRecord, offset: int, length: int) -> None:
        if record.status == db.EXPIRED:
            raise SessionExpired(f"upload session {record.session_id} expired; create a new one")
        if record.status == db.QUEUED:
            raise InvalidTransition("send the metadata first (PUT .../metadata)", record.status)
        if record.status not in (db.METADATA_UPLOADED, db.BINARY_UPLOADING):
            raise InvalidTransition(f"the session is {record.status} and takes no more bytes", record.status)
        if offset != record.upload_offset:
            raise OffsetMismatch(record.upload_offset)
        if offset + length > record.size:
            raise BeyondSize(f"the chunk ends at {offset + length}, past the declared size {record.size}")

    def _check_retry(self, record: db.SessionRecord) -> None:
        if record.status != db.FAILED:
            raise InvalidTransition(f"only a FAILED session may be retried; this one is {record.status}",
                                    record.status)
        if record.retry_count >= self.limits.max_retries:
            raise RetriesExhausted(f"retried {record.retry_count} times already (uploads.max_retries)",
                                   record.status)

    def _expiry(self, now: dt.datetime) -> dt.datetime:
        return now + dt.timedelta(seconds=self.limits.expire_after_seconds)

    def _ingestor(self) -> Any:
        if self.ingestor is None:
            raise IngestUnavailable("this server has no ingest path (read-only)")
        return self.ingestor


@contextmanager
def _file_bytes(part: Part, whole: bytes | None) -> Iterator[Any]:
    """The file's bytes: the one chunk itself, or the part file's contents."""
    if whole is not None:
        yield whole
        return
    with part.contents() as data:
        yield data
