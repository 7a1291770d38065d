"""Opening the catalogue and writing instance rows with their counts kept up to date."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

from peewee import Database, IntegrityError, PostgresqlDatabase, SqliteDatabase, fn

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


@dataclass(frozen=True)
class Stats:
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int


def fold_name(value: str | None) -> str | None:
    """Person names are matched case-insensitively by default (PS3.4 C.2.2.2.1)."""
    return value.casefold() if value else value


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
            autorollback=True,
            autoconnect=True,
        )
    else:
        path = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else data_dir / "catalogue.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        db = SqliteDatabase(
            str(path),
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


class HierarchyCache:
    """UID -> row id for patients, studies and series, so a new instance costs one INSERT."""

    def __init__(self, limit: int = 20000) -> None:
        self.limit = limit
        self.patients: dict[str, int] = {}
        self.studies: dict[str, int] = {}
        self.series: dict[str, int] = {}
        self.lock = threading.Lock()

    def clear(self) -> None:
        for table in (self.patients, self.studies, self.series):
            table.clear()

    def remember(self, table: dict[str, int], key: str, value: int) -> None:
        if len(table) >= self.limit:
            table.clear()
        table[key] = value


def index_batch(records: list[tuple[InstanceRecord, bool]], cache: HierarchyCache) -> list[IndexResult]:
    """Insert a batch of instance rows in the current transaction, keeping counts right.

    Each item is (record, replace). A SOP Instance UID that is already stored is kept
    (DUPLICATE) unless replace is true, in which case the new row takes its place.
    """
    results: list[IndexResult] = []
    touched = _Counts()
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    for record, replace in records:
        existing = (Instance.select(Instance.id, Instance.path, Instance.series)
                    .where(Instance.sop_instance_uid == record.sop_instance_uid).first())
        superseded = None
        if existing is not None:
            if not replace:
                results.append(IndexResult(Indexed.DUPLICATE, existing.path))
                continue
            superseded = existing.path if existing.path != record.path else None
            _remove_instance_row(existing, touched)
        series_id = _series_id(record, cache, touched, now)
        Instance.insert(**_instance_row(record, series_id, now)).execute()
        touched.add_instance(series_id)
        outcome = Indexed.REPLACED if existing is not None else Indexed.STORED
        results.append(IndexResult(outcome, record.path, superseded))
    touched.apply()
    return results


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


def _series_id(record: InstanceRecord, cache: HierarchyCache, touched: "_Counts", now: dt.datetime) -> int:
    series_id = cache.series.get(record.series_uid)
    if series_id is not None:
        return series_id
    a = record.attrs
    study_id = _study_id(record, cache, touched, now)
    series_id = _get_or_insert(Series, Series.series_uid, record.series_uid, dict(
        study=study_id,
        modality=a.get("modality"),
        series_number=a.get("series_number"),
        series_description=a.get("series_description"),
        body_part_examined=a.get("body_part_examined"),
        series_date=a.get("series_date"),
        series_time=a.get("series_time"),
        protocol_name=a.get("protocol_name"),
    ), on_insert=lambda: touched.add_series(study_id))
    cache.remember(cache.series, record.series_uid, series_id)
    return series_id


def _study_id(record: InstanceRecord, cache: HierarchyCache, touched: "_Counts", now: dt.datetime) -> int:
    study_id = cache.studies.get(record.study_uid)
    if study_id is not None:
        return study_id
    a = record.attrs
    patient_id = _patient_id(record, cache)
    study_id = _get_or_insert(Study, Study.study_uid, record.study_uid, dict(
        patient=patient_id,
        study_date=a.get("study_date"),
        study_time=a.get("study_time"),
        accession_number=a.get("accession_number"),
        study_id=a.get("study_id"),
        study_description=a.get("study_description"),
        referring_physician_name=a.get("referring_physician_name"),
        referring_physician_name_folded=fold_name(a.get("referring_physician_name")),
        institution_name=a.get("institution_name"),
        specific_character_set=a.get("specific_character_set"),
        created_at=now,
    ), on_insert=lambda: touched.add_study(patient_id))
    cache.remember(cache.studies, record.study_uid, study_id)
    return study_id


def _patient_id(record: InstanceRecord, cache: HierarchyCache) -> int:
    a = record.attrs
    key = a.get("patient_id") or ""
    patient_id = cache.patients.get(key)
    if patient_id is not None:
        return patient_id
    patient_id = _get_or_insert(Patient, Patient.patient_id, key, dict(
        patient_name=a.get("patient_name"),
        patient_name_folded=fold_name(a.get("patient_name")),
        issuer_of_patient_id=a.get("issuer_of_patient_id"),
        patient_birth_date=a.get("patient_birth_date"),
        patient_sex=a.get("patient_sex"),
        specific_character_set=a.get("specific_character_set"),
    ), on_insert=lambda: None)
    cache.remember(cache.patients, key, patient_id)
    return patient_id


def _get_or_insert(model: Any, key_field: Any, key: str, values: dict[str, Any], on_insert: Any) -> int:
    """Select by unique key, else insert; a row inserted by another process in between wins."""
    row = model.select(model.id).where(key_field == key).tuples().first()
    if row is not None:
        return row[0]
    inserted = model.insert(**{key_field.name: key}, **values).on_conflict_ignore().execute()
    row = model.select(model.id).where(key_field == key).tuples().first()
    if row is None:  # pragma: no cover - the insert above or a concurrent one made it
        raise IntegrityError(f"{model.__name__} {key} vanished during insert")
    if inserted:
        on_insert()
    return row[0]


def _remove_instance_row(existing: Instance, touched: "_Counts") -> None:
    Instance.delete().where(Instance.id == existing.id).execute()
    touched.add_instance(existing.series_id, -1)


class _Counts:
    """Count increments gathered over a batch, applied as one UPDATE per touched row."""

    def __init__(self) -> None:
        self.series_instances: dict[int, int] = {}
        self.new_series: dict[int, int] = {}  # study id -> new series
        self.new_studies: dict[int, int] = {}  # patient id -> new studies

    def add_instance(self, series_id: int, n: int = 1) -> None:
        self.series_instances[series_id] = self.series_instances.get(series_id, 0) + n

    def add_series(self, study_id: int) -> None:
        self.new_series[study_id] = self.new_series.get(study_id, 0) + 1

    def add_study(self, patient_id: int) -> None:
        self.new_studies[patient_id] = self.new_studies.get(patient_id, 0) + 1

    def apply(self) -> None:
        study_instances: dict[int, int] = {}
        patient_instances: dict[int, int] = {}
        patient_series: dict[int, int] = {}
        parents = {}
        if self.series_instances or self.new_series:
            series_ids = list(self.series_instances)
            for sid, study_id, patient_id in (
                Series.select(Series.id, Series.study, Study.patient).join(Study)
                .where(Series.id.in_(series_ids)).tuples()
            ):
                parents[sid] = (study_id, patient_id)
        for sid, n in self.series_instances.items():
            if n:
                Series.update(num_instances=Series.num_instances + n).where(Series.id == sid).execute()
                study_id, patient_id = parents[sid]
                study_instances[study_id] = study_instances.get(study_id, 0) + n
                patient_instances[patient_id] = patient_instances.get(patient_id, 0) + n
        study_patients = dict(Study.select(Study.id, Study.patient).where(Study.id.in_(list(self.new_series))).tuples()) if self.new_series else {}
        for study_id, n in self.new_series.items():
            patient_series[study_patients[study_id]] = patient_series.get(study_patients[study_id], 0) + n
        for study_id in set(study_instances) | set(self.new_series):
            Study.update(
                num_instances=Study.num_instances + study_instances.get(study_id, 0),
                num_series=Study.num_series + self.new_series.get(study_id, 0),
            ).where(Study.id == study_id).execute()
        for study_id in self.new_series:
            modalities = sorted({m for (m,) in Series.select(Series.modality).where(
                (Series.study == study_id) & Series.modality.is_null(False)).distinct().tuples()})
            Study.update(modalities_in_study="\\".join(modalities)).where(Study.id == study_id).execute()
        for patient_id in set(patient_instances) | set(patient_series) | set(self.new_studies):
            Patient.update(
                num_instances=Patient.num_instances + patient_instances.get(patient_id, 0),
                num_series=Patient.num_series + patient_series.get(patient_id, 0),
                num_studies=Patient.num_studies + self.new_studies.get(patient_id, 0),
            ).where(Patient.id == patient_id).execute()
