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

import contextlib
import dataclasses
import datetime as dt
import functools
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
    values = dict(session_id=session_id, owner=owner, file_name=file_name, size=size, sha256=sha256,
                  content_type=content_type, order_id=order_id, dedupe_key=key, metadata=_dump(metadata),
                  status=QUEUED, upload_offset=0, server_image_id=None, error_code=None,
                  error_message=None, retry_count=0, created_at=now, updated_at=now, expires_at=expires_at)
    fields = [f for f in _FIELDS if f.name != "id"]
    with _atomic():
        # ON CONFLICT rather than catching IntegrityError: on PostgreSQL a failed statement
        # aborts the whole transaction, and a savepoint around it costs two more statements
        cursor = database.execute_sql(
            f"INSERT INTO {_q(_SESSIONS)} ({', '.join(_q(f.column_name) for f in fields)}) "
            f"VALUES ({', '.join([database.param] * len(fields))}) ON CONFLICT DO NOTHING",
            [f.db_value(values[f.name]) for f in fields])
        if cursor.rowcount != 1:
            existing = _fetch("dedupe_key", key)
            if existing is None:  # pragma: no cover - a session id collision (uuid4): never in practice
                raise IntegrityError(f"upload session {session_id} exists already")
            return existing[1], False
        _insert_events(session_id, now, owner, [(None, QUEUED)], "session created")
    return _record({**values, "metadata": metadata}), True


def get_session(session_id: str) -> SessionRecord | None:
    found = _fetch("session_id", session_id)
    return found[1] if found else None


def move(current: SessionRecord, *, expect: Iterable[str], steps: tuple[str, ...], username: str,
         detail: str | None, now: dt.datetime, expect_offset: int | None = None,
         **changes: Any) -> SessionRecord:
    """Apply ``changes`` if the session is in one of ``expect`` (and at ``expect_offset``),
    recording one event per status in ``steps`` (each a valid transition from the last).

    ``current`` is the session as the caller read it (in the writer's transaction: as it is);
    the UPDATE is conditional on its status and offset, and a session that moved meanwhile is
    read again once, so a stale ``current`` costs a read, never a wrong move.
    Raises StaleSession with the current row when the condition does not hold.
    """
    expect = tuple(expect)
    for _ in range(2):
        if current.status not in expect or (expect_offset is not None and current.upload_offset != expect_offset):
            raise StaleSession(current)
        moved = _move_from(current, steps, username, detail, now, changes)
        if moved is not None:
            return moved
        latest = _fetch("session_id", current.session_id)
        if latest is None:
            raise NoSuchSession(current.session_id)
        current = latest[1]
    raise StaleSession(current)


def _move_from(current: SessionRecord, steps: tuple[str, ...], username: str, detail: str | None,
               now: dt.datetime, changes: dict[str, Any]) -> SessionRecord | None:
    """The move from ``current``, or None when the row is no longer in its status and offset."""
    previous = current.status
    for step in steps:
        if step not in TRANSITIONS[previous]:
            raise ValueError(f"{previous} -> {step} is not a transition of an upload session")
        previous = step
    values = dict(changes, updated_at=now)
    if steps:
        values["status"] = steps[-1]
    stored = {name: _dump(value) if name == "metadata" else value for name, value in values.items()}
    fields = [_BY_NAME[name] for name in stored]
    p = database.param
    # The write comes first in the transaction (SQLite: no read lock to upgrade), conditional
    # on the status and offset read: a request that changed them meanwhile wins.
    with _atomic():
        cursor = database.execute_sql(
            f"UPDATE {_q(_SESSIONS)} SET {', '.join(f'{_q(f.column_name)} = {p}' for f in fields)} "
            f"WHERE {_q('session_id')} = {p} AND {_q('status')} = {p} AND {_q('upload_offset')} = {p}",
            [f.db_value(stored[f.name]) for f in fields] + [current.session_id, current.status,
                                                              current.upload_offset])
        if cursor.rowcount != 1:
            return None
        chain = list(zip((current.status,) + steps[:-1], steps))
        _insert_events(current.session_id, now, username, chain, detail)
    values.pop("dedupe_key", None)
    return dataclasses.replace(current, **values)


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
    return [_row_record(row) for row in query.limit(limit).offset(offset)]


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


# The hot paths (every upload step reads and moves its session) use SQL written here once per
# statement shape: peewee builds each query's SQL anew, which cost more CPU than the rest of a step.
_SESSIONS = UploadSession._meta.table_name
_FIELDS = UploadSession._meta.sorted_fields
_BY_NAME = {f.name: f for f in _FIELDS}


def _q(name: str) -> str:
    return _quoted(name, database.quote)


@functools.lru_cache(maxsize=256)
def _quoted(name: str, quote: str) -> str:
    """``name`` in the database's quote characters (``quote`` is e.g. '""')."""
    return f"{quote[0]}{name}{quote[-1]}"


@functools.lru_cache(maxsize=64)
def _select_by(column: str, quote: str, param: str) -> str:
    columns = ", ".join(_quoted(f.column_name, quote) for f in _FIELDS)
    return f"SELECT {columns} FROM {_quoted(_SESSIONS, quote)} WHERE {_quoted(column, quote)} = {param}"


@functools.lru_cache(maxsize=8)
def _insert_event_sql(quote: str, param: str) -> str:
    q = functools.partial(_quoted, quote=quote)
    return (f"INSERT INTO {q(UploadEvent._meta.table_name)} ({q('session_id')}, {q('at')}, {q('username')}, "
            f"{q('from_status')}, {q('to_status')}, {q('detail')}) SELECT {q('id')}, {param}, {param}, {param}, "
            f"{param}, {param} FROM {q(_SESSIONS)} WHERE {q('session_id')} = {param}")


def _fetch(column: str, value: Any) -> tuple[int, SessionRecord] | None:
    """(row id, record) of the session whose ``column`` equals ``value`` (a unique column)."""
    cursor = database.execute_sql(_select_by(column, database.quote, database.param), (value,))
    row = cursor.fetchone()
    if row is None:
        return None
    values = {f.name: f.python_value(v) for f, v in zip(_FIELDS, row)}
    return values["id"], _record({**values, "metadata": json.loads(values["metadata"]) if values["metadata"]
                                  else None})


def _atomic() -> Any:
    """A transaction of its own, unless the caller has one open: the catalogue writer runs
    each call in a savepoint already, and a second one costs two statements more."""
    return contextlib.nullcontext() if database.in_transaction() else database.atomic()


def _insert_events(session_id: str, now: dt.datetime, username: str,
                   chain: list[tuple[str | None, str]], detail: str | None) -> None:
    """One event row per (from, to) of ``chain``, for the session by its id."""
    sql = _insert_event_sql(database.quote, database.param)
    at = UploadEvent.at.db_value(now)
    for from_status, to_status in chain:
        database.execute_sql(sql, (at, username, from_status, to_status, detail, session_id))


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(SessionRecord))


def _record(values: dict[str, Any]) -> SessionRecord:
    """A record from column values by field name (``metadata`` already a dict or None)."""
    return SessionRecord(**{name: values[name] for name in _RECORD_FIELDS})


def _row_record(row: UploadSession) -> SessionRecord:
    data = row.__data__
    return _record({**data, "metadata": json.loads(data["metadata"]) if data.get("metadata") else None})
