"""Opening the catalogue and writing instance rows with their counts kept up to date."""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

from peewee import Database, PostgresqlDatabase, fn
from playhouse.pool import PooledDatabase, PooledSqliteDatabase

from db.hierarchy import (Counts, HierarchyCache, fold_name,  # noqa: F401 - HierarchyCache, fold_name re-exported
                          parents_of_series, series_parents)
from db.models import ALL_MODELS, SCHEMA_VERSION, Instance, Meta, Patient, Series, Study, database

log = logging.getLogger(__name__)


class CatalogueError(Exception):
    """The catalogue cannot be opened or does not match this version of the node."""


@dataclass(frozen=True)
class InstanceRecord:
    """Everything the catalogue keeps about one stored instance."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    path: str  # relative to data_dir
    size: int
    sha256: str
    source_ae: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    pixel_offset: int | None = None
    pixel_length: int | None = None
    encapsulated: bool = False
    frame_fragments: tuple[tuple[tuple[int, int], ...], ...] = ()


class Indexed(Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # kept the first copy; the new file is not referenced
    REPLACED = "replaced"  # the new copy replaced the old one


@dataclass(frozen=True)
class IndexResult:
    outcome: Indexed
    stored_path: str  # the path the catalogue points to after the commit
    superseded_path: str | None = None  # a file no row points to any more
    row_id: int | None = None  # the instance row written (STORED, REPLACED)


@dataclass(frozen=True)
class Stats:
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int


def open_database(url: str, data_dir: Path) -> Database:
    """Bind the model proxy to SQLite under data_dir (WAL) or to the PostgreSQL at url."""
    if url.startswith(("postgresql://", "postgres://")):
        parsed = urlparse(url)
        db: Database = PostgresqlDatabase(
            unquote(parsed.path.lstrip("/")) or "postgres",
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 5432,
            user=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
            autoconnect=True,
        )
    else:
        path = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else data_dir / "catalogue.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Connections are kept for the next ``connection_context()``: opening one with its
        # pragmas costs ~0.23 ms here, a quarter of a small HTTP request's whole time. As
        # many as were in use at once are kept (threads bound them: HTTP workers, associations).
        db = PooledSqliteDatabase(
            str(path),
            max_connections=None,
            pragmas={
                "journal_mode": "wal",
                "synchronous": "full",  # an acknowledged row survives power loss, not only a crash
                "foreign_keys": 1,
                "busy_timeout": 30000,
                "cache_size": -32768,
            },
            check_same_thread=False,
        )
    database.initialize(db)
    try:
        with db.connection_context():
            db.create_tables(ALL_MODELS, safe=True)
            _check_schema_version()
    except Exception as exc:  # peewee raises driver-specific errors here
        if isinstance(exc, CatalogueError):
            raise
        raise CatalogueError(f"cannot open the catalogue at {url or path}: {exc}") from exc
    return db


def close_database(db: Database) -> None:
    """Close every connection, the pooled idle ones included (at shutdown)."""
    if isinstance(db, PooledDatabase):
        db.close_all()
    else:
        db.close()


def _check_schema_version() -> None:
    row = Meta.get_or_none(Meta.key == "schema_version")
    if row is None:
        Meta.insert(key="schema_version", value=str(SCHEMA_VERSION)).on_conflict_ignore().execute()
    elif row.value != str(SCHEMA_VERSION):
        raise CatalogueError(
            f"the catalogue has schema {row.value}, this node needs {SCHEMA_VERSION}: "
            "run `python -m node reindex` to rebuild it from the stored files"
        )


def find_instance_path(sop_instance_uid: str) -> str | None:
    row = (Instance.select(Instance.path).where(Instance.sop_instance_uid == sop_instance_uid)
           .tuples().first())
    return row[0] if row else None


def iter_instance_files() -> Iterator[tuple[str, str, str]]:
    """(sop_instance_uid, path, sha256) of every stored instance, for verification."""
    query = Instance.select(Instance.sop_instance_uid, Instance.path, Instance.sha256).order_by(Instance.id)
    yield from query.tuples().iterator()


def catalogue_stats() -> Stats:
    instances, size = Instance.select(fn.COUNT(Instance.id), fn.COALESCE(fn.SUM(Instance.size), 0)).scalar(as_tuple=True)
    return Stats(
        patients=Patient.select().count(),
        studies=Study.select().count(),
        series=Series.select().count(),
        instances=instances,
        bytes=int(size),
    )


def clear_catalogue() -> None:
    """Drop every row (reindex rebuilds them from the files)."""
    with database.atomic():
        for model in (Instance, Series, Study, Patient):
            model.delete().execute()


def index_batch(records: list[tuple[InstanceRecord, bool]], cache: HierarchyCache) -> list[IndexResult]:
    """Insert a batch of instance rows in the current transaction, keeping counts right.

    Each item is (record, replace). A SOP Instance UID that is already stored is kept
    (DUPLICATE) unless replace is true, in which case the new row takes its place. The
    per-instance statements are prepared SQL: building them through peewee cost more than
    executing them.
    """
    db = database.obj
    sql = _statements(db)
    results: list[IndexResult] = []
    touched = Counts()
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    for record, replace in records:
        existing = db.execute_sql(sql.find_instance, (record.sop_instance_uid,)).fetchone()
        superseded = None
        if existing is not None:
            existing_id, existing_path, existing_series = existing
            if not replace:
                results.append(IndexResult(Indexed.DUPLICATE, existing_path))
                continue
            superseded = existing_path if existing_path != record.path else None
            db.execute_sql(sql.delete_instance, (existing_id,))
            touched.add_instance(parents_of_series(existing_series), -1)
        parents = series_parents(record, cache, touched, now)
        row = _instance_row(record, parents[0], now)
        cursor = db.execute_sql(sql.insert_instance, tuple(row[name] for name in sql.instance_columns))
        touched.add_instance(parents)
        outcome = Indexed.REPLACED if existing is not None else Indexed.STORED
        results.append(IndexResult(outcome, record.path, superseded, getattr(cursor, "lastrowid", None)))
    touched.apply(db)
    return results


def unindex_rows(rows: list[tuple[int, str]]) -> list[bool]:
    """Delete instance rows by (row id, path) in the current transaction, keeping counts right.

    Used when a file turned out not to be durable after its row was committed (an fsync
    failed, or a start-up check found it missing or damaged). A row whose path changed in
    the meantime (replaced by a newer copy) is left alone. True for each row deleted.
    """
    db = database.obj
    sql = _statements(db)
    touched = Counts()
    deleted = []
    for row_id, path in rows:
        found = db.execute_sql(sql.find_instance_by_id, (row_id,)).fetchone()
        if found is None or found[0] != path:
            deleted.append(False)
            continue
        db.execute_sql(sql.delete_instance, (row_id,))
        touched.add_instance(parents_of_series(found[1]), -1)
        deleted.append(True)
    touched.apply(db)
    return deleted


def set_meta(key: str, value: str) -> None:
    """Insert or update a catalogue fact, in the current transaction."""
    db = database.obj
    db.execute_sql(_statements(db).set_meta, (key, value))


def get_meta(key: str) -> str | None:
    db = database.obj
    row = db.execute_sql(_statements(db).get_meta, (key,)).fetchone()
    return row[0] if row else None


def instance_rows_from(first_id: int) -> list[tuple[int, str, str, int, str]]:
    """(row id, SOP Instance UID, path, size, sha256) of every instance row from ``first_id`` on."""
    db = database.obj
    return list(db.execute_sql(_statements(db).rows_from, (first_id,)).fetchall())


@dataclass(frozen=True)
class _Statements:
    instance_columns: tuple[str, ...]
    find_instance: str
    find_instance_by_id: str
    rows_from: str
    set_meta: str
    get_meta: str
    delete_instance: str
    insert_instance: str


_STATEMENTS: dict[str, _Statements] = {}


def _statements(db: Database) -> _Statements:
    """SQL text for the hot path, in the placeholder style of the bound database."""
    p = db.param
    cached = _STATEMENTS.get(p)
    if cached is not None:
        return cached
    columns = tuple(f.column_name for f in Instance._meta.sorted_fields if f.name != "id")
    names = tuple(f.name for f in Instance._meta.sorted_fields if f.name != "id")
    inst = Instance._meta.table_name
    meta = Meta._meta.table_name
    statements = _Statements(
        instance_columns=names,
        find_instance=f"SELECT id, path, series_id FROM {inst} WHERE sop_instance_uid = {p}",
        find_instance_by_id=f"SELECT path, series_id FROM {inst} WHERE id = {p}",
        rows_from=f"SELECT id, sop_instance_uid, path, size, sha256 FROM {inst} WHERE id >= {p} ORDER BY id",
        set_meta=(f"INSERT INTO {meta} (key, value) VALUES ({p}, {p}) "
                  "ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
        get_meta=f"SELECT value FROM {meta} WHERE key = {p}",
        delete_instance=f"DELETE FROM {inst} WHERE id = {p}",
        insert_instance=f"INSERT INTO {inst} ({', '.join(columns)}) VALUES ({', '.join([p] * len(columns))})",
    )
    _STATEMENTS[p] = statements
    return statements


def _instance_row(record: InstanceRecord, series_id: int, now: dt.datetime) -> dict[str, Any]:
    a = record.attrs
    return dict(
        sop_instance_uid=record.sop_instance_uid,
        series=series_id,
        sop_class_uid=record.sop_class_uid,
        instance_number=a.get("instance_number"),
        content_date=a.get("content_date"),
        content_time=a.get("content_time"),
        image_type=a.get("image_type"),
        path=record.path,
        transfer_syntax=record.transfer_syntax,
        size=record.size,
        sha256=record.sha256,
        source_ae=record.source_ae,
        received_at=now,
        pixel_offset=record.pixel_offset,
        pixel_length=record.pixel_length,
        encapsulated=int(record.encapsulated),
        frame_fragments=json.dumps(record.frame_fragments) if record.frame_fragments else None,
        rows=a.get("rows"),
        columns=a.get("columns"),
        number_of_frames=a.get("number_of_frames"),
        samples_per_pixel=a.get("samples_per_pixel"),
        photometric_interpretation=a.get("photometric_interpretation"),
        bits_allocated=a.get("bits_allocated"),
        bits_stored=a.get("bits_stored"),
        pixel_representation=a.get("pixel_representation"),
        rescale_slope=a.get("rescale_slope"),
        rescale_intercept=a.get("rescale_intercept"),
        window_center=a.get("window_center"),
        window_width=a.get("window_width"),
        pixel_spacing=a.get("pixel_spacing"),
        image_position_patient=a.get("image_position_patient"),
        image_orientation_patient=a.get("image_orientation_patient"),
        slice_location=a.get("slice_location"),
        specific_character_set=a.get("specific_character_set"),
    )
