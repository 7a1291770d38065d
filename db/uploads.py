"""Upload sessions and their audit trail in the catalogue.

A session is one file a remote site is sending over HTTP. Its status only moves along
``TRANSITIONS``; every move is one conditional UPDATE (status, and offset where it matters)
plus its event rows in the same transaction, so of two requests racing on one session exactly
one wins and the other learns the state that beat it (``StaleSession``). Rows are never
deleted, and the identity columns are written once, at creation.

Callers open the connection (``database.connection_context()``) in the thread that asks;
nothing here knows about HTTP or tus (shared/STYLE.md, 1).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Iterable

from peewee import (
    AutoField,
    BigIntegerField,
    CharField,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    IntegrityError,
    TextField,
)

from db.models import ALL_MODELS, BaseModel, database

QUEUED = "QUEUED"
METADATA_UPLOADED = "METADATA_UPLOADED"
BINARY_UPLOADING = "BINARY_UPLOADING"
SYNCED = "SYNCED"
ACK_RECEIVED = "ACK_RECEIVED"
FAILED = "FAILED"
EXPIRED = "EXPIRED"

STATUSES = (QUEUED, METADATA_UPLOADED, BINARY_UPLOADING, SYNCED, ACK_RECEIVED, FAILED, EXPIRED)
# still waiting for bytes: these expire when abandoned
PENDING = (QUEUED, METADATA_UPLOADED, BINARY_UPLOADING)

TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({METADATA_UPLOADED, EXPIRED}),
    METADATA_UPLOADED: frozenset({METADATA_UPLOADED, BINARY_UPLOADING, EXPIRED}),
    BINARY_UPLOADING: frozenset({SYNCED, FAILED, EXPIRED}),
    SYNCED: frozenset({ACK_RECEIVED}),
    FAILED: frozenset({METADATA_UPLOADED, BINARY_UPLOADING}),  # retry: from zero, or re-ingest kept bytes
    ACK_RECEIVED: frozenset(),
    EXPIRED: frozenset(),
}


class UploadSession(BaseModel):
    id = AutoField()
    session_id = CharField(max_length=36, unique=True)
    owner = CharField(max_length=64, index=True)
    file_name = CharField(max_length=255)
    size = BigIntegerField()
    sha256 = CharField(max_length=64, index=True)
    content_type = CharField(max_length=128)
    order_id = CharField(max_length=128, null=True, index=True)
    # owner, order and digest while the session can still deliver its file; cleared on expiry so
    # the same file can be sent again. Unique: concurrent creations of one file find one row.
    dedupe_key = CharField(max_length=300, null=True, unique=True)
    metadata = TextField(null=True)  # JSON object
    status = CharField(max_length=20, index=True)
    upload_offset = BigIntegerField(default=0)
    server_image_id = CharField(max_length=64, null=True)
    error_code = CharField(max_length=32, null=True)
    error_message = TextField(null=True)
    retry_count = IntegerField(default=0)
    created_at = DateTimeField()
    updated_at = DateTimeField(index=True)
    expires_at = DateTimeField(null=True, index=True)


class UploadEvent(BaseModel):
    """One transition of a session: when, by whom, from and to which status, and why."""

    id = AutoField()
    session = ForeignKeyField(UploadSession, backref="events", index=True, on_delete="RESTRICT")
    at = DateTimeField()
    username = CharField(max_length=64)
    from_status = CharField(max_length=20, null=True)
    to_status = CharField(max_length=20)
    detail = TextField(null=True)


ALL_MODELS.extend([UploadSession, UploadEvent])


@dataclass(frozen=True)
class SessionRecord:
    """A session row as a value (rows never leave the thread that read them)."""

    session_id: str
    owner: str
    file_name: str
    size: int
    sha256: str
    content_type: str
    order_id: str | None
    metadata: dict[str, Any] | None
    status: str
    upload_offset: int
    server_image_id: str | None
    error_code: str | None
    error_message: str | None
    retry_count: int
    created_at: dt.datetime
    updated_at: dt.datetime
    expires_at: dt.datetime | None


@dataclass(frozen=True)
class EventRecord:
    at: dt.datetime
    username: str
    from_status: str | None
    to_status: str
    detail: str | None


class StaleSession(Exception):
    """The session was not in the expected status (or offset): ``current`` is what it is."""

    def __init__(self, current: SessionRecord) -> None:
        super().__init__(f"session {current.session_id} is {current.status} at {current.upload_offset}")
        self.current = current


class NoSuchSession(Exception):
    """No session has that id."""


def dedupe_key(owner: str, order_id: str | None, sha256: str) -> str:
    return f"{owner}\x1f{order_id or ''}\x1f{sha256}"


def create_session(*, session_id: str, owner: str, file_name: str, size: int, sha256: str,
                   content_type: str, order_id: str | None, metadata: dict[str, Any] | None,
                   now: dt.datetime, expires_at: dt.datetime) -> tuple[SessionRecord, bool]:
    """A new QUEUED session, or (created False) the one already delivering this digest for
    this owner and order."""
    key = dedupe_key(owner, order_id, sha256)
    try:
        with database.atomic():
            row = UploadSession.create(
                session_id=session_id, owner=owner, file_name=file_name, size=size, sha256=sha256,
                content_type=content_type, order_id=order_id, dedupe_key=key,
                metadata=_dump(metadata), status=QUEUED, created_at=now, updated_at=now,
                expires_at=expires_at)
            UploadEvent.create(session=row.id, at=now, username=owner, from_status=None,
                               to_status=QUEUED, detail="session created")
        return _record(row), True
    except IntegrityError:
        existing = UploadSession.get_or_none(UploadSession.dedupe_key == key)
        if existing is None:  # pragma: no cover - a session id collision (uuid4): never in practice
            raise
        return _record(existing), False


def get_session(session_id: str) -> SessionRecord | None:
    row = UploadSession.get_or_none(UploadSession.session_id == session_id)
    return _record(row) if row else None


def move(session_id: str, *, expect: Iterable[str], steps: tuple[str, ...], username: str,
         detail: str | None, now: dt.datetime, expect_offset: int | None = None,
         **changes: Any) -> SessionRecord:
    """Apply ``changes`` if the session is in one of ``expect`` (and at ``expect_offset``),
    recording one event per status in ``steps`` (each a valid transition from the last).

    Raises StaleSession with the current row when the condition does not hold.
    """
    expect = tuple(expect)
    row = UploadSession.get_or_none(UploadSession.session_id == session_id)
    if row is None:
        raise NoSuchSession(session_id)
    if row.status not in expect or (expect_offset is not None and row.upload_offset != expect_offset):
        raise StaleSession(_record(row))
    previous = row.status
    for step in steps:
        if step not in TRANSITIONS[previous]:
            raise ValueError(f"{previous} -> {step} is not a transition of an upload session")
        previous = step
    values = dict(changes, updated_at=now)
    if steps:
        values["status"] = steps[-1]
    if "metadata" in values:
        values["metadata"] = _dump(values["metadata"])
    # The write comes first in the transaction (SQLite: no read lock to upgrade), conditional
    # on the status and offset just read: a request that changed them meanwhile wins.
    unchanged = (UploadSession.id == row.id) & (UploadSession.status == row.status) & \
                (UploadSession.upload_offset == row.upload_offset)
    with database.atomic():
        if UploadSession.update(**values).where(unchanged).execute() != 1:
            raise StaleSession(_record(UploadSession.get_by_id(row.id)))
        before = row.status
        for step in steps:
            UploadEvent.create(session=row.id, at=now, username=username, from_status=before,
                               to_status=step, detail=detail)
            before = step
    return _record(UploadSession.get_by_id(row.id))


def list_sessions(*, owner: str | None, statuses: Iterable[str] | None, order_id: str | None,
                  limit: int, offset: int) -> list[SessionRecord]:
    """Newest first; ``owner`` None lists every user's sessions."""
    query = UploadSession.select()
    if owner is not None:
        query = query.where(UploadSession.owner == owner)
    if statuses is not None:
        query = query.where(UploadSession.status.in_(list(statuses)))
    if order_id is not None:
        query = query.where(UploadSession.order_id == order_id)
    query = query.order_by(UploadSession.created_at.desc(), UploadSession.id.desc())
    return [_record(row) for row in query.limit(limit).offset(offset)]


def session_events(session_id: str) -> list[EventRecord]:
    query = (UploadEvent.select().join(UploadSession)
             .where(UploadSession.session_id == session_id).order_by(UploadEvent.id))
    return [EventRecord(e.at, e.username, e.from_status, e.to_status, e.detail) for e in query]


def abandoned_sessions(now: dt.datetime, limit: int = 500) -> list[str]:
    """Unfinished sessions whose expiry time has passed."""
    query = (UploadSession.select(UploadSession.session_id)
             .where(UploadSession.status.in_(list(PENDING)) & (UploadSession.expires_at < now))
             .order_by(UploadSession.expires_at).limit(limit))
    return [row.session_id for row in query]


def idle_failed_sessions(before: dt.datetime, limit: int = 500) -> list[str]:
    """FAILED sessions untouched since ``before`` (their kept bytes may be freed)."""
    query = (UploadSession.select(UploadSession.session_id)
             .where((UploadSession.status == FAILED) & (UploadSession.updated_at < before))
             .order_by(UploadSession.updated_at).limit(limit))
    return [row.session_id for row in query]


def _dump(metadata: dict[str, Any] | None) -> str | None:
    return None if metadata is None else json.dumps(metadata, separators=(",", ":"), sort_keys=True)


def _record(row: UploadSession) -> SessionRecord:
    return SessionRecord(
        session_id=row.session_id, owner=row.owner, file_name=row.file_name, size=row.size,
        sha256=row.sha256, content_type=row.content_type, order_id=row.order_id,
        metadata=json.loads(row.metadata) if row.metadata else None, status=row.status,
        upload_offset=row.upload_offset, server_image_id=row.server_image_id,
        error_code=row.error_code, error_message=row.error_message, retry_count=row.retry_count,
        created_at=row.created_at, updated_at=row.updated_at, expires_at=row.expires_at)
