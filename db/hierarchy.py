"""The patient, study and series rows above each new instance, and their counts.

Most instances belong to a series the writer has seen (``HierarchyCache``); the others, a
new series, often in a new study of a new patient (a CR or DX room sends one or two images
per study), need rows found or created. Those statements are SQL written once per table and
placeholder style, as the instance rows' are (db.catalogue): built through peewee they cost
the catalogue writer more CPU than executing them, and with four modalities sending small
studies at once the writer's CPU is what every C-STORE waits for.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any

from peewee import Database, Field, IntegrityError

from db.models import Patient, Series, Study, database


def fold_name(value: str | None) -> str | None:
    """Person names are matched case-insensitively by default (PS3.4 C.2.2.2.1)."""
    return value.casefold() if value else value


class HierarchyCache:
    """UID -> row id for patients, studies and series, so a new instance costs one INSERT."""

    def __init__(self, limit: int = 20000) -> None:
        self.limit = limit
        self.patients: dict[str, int] = {}
        self.studies: dict[str, tuple[int, int]] = {}  # uid -> (study id, patient id)
        self.series: dict[str, tuple[int, int, int]] = {}  # uid -> (series, study, patient ids)

    def clear(self) -> None:
        for table in (self.patients, self.studies, self.series):
            table.clear()

    def remember(self, table: dict[str, Any], key: str, value: Any) -> None:
        if len(table) >= self.limit:
            table.clear()
        table[key] = value


@dataclass(frozen=True)
class _Table:
    """One hierarchy table's statements: find by its unique key, insert unless present."""

    key: Field
    fields: tuple[Field, ...]  # every column but id, in insert order
    find: str
    insert: str


@dataclass(frozen=True)
class _Statements:
    patient: _Table
    study: _Table
    series: _Table
    parents_of_series: str
    patient_of_study: str
    modalities_of_study: str
    set_modalities: str
    add_series_counts: str
    add_study_counts: str
    add_patient_counts: str


@functools.lru_cache(maxsize=4)
def _statements(p: str) -> _Statements:
    """The SQL in placeholder style ``p`` (SQLite ``?``, PostgreSQL ``%s``)."""

    def table(model: Any, key: Field) -> _Table:
        fields = tuple(f for f in model._meta.sorted_fields if f.name != "id")
        name = model._meta.table_name
        columns = ", ".join(f.column_name for f in fields)
        # ON CONFLICT (not INSERT OR IGNORE): only a row that exists already is let pass
        return _Table(key, fields, f"SELECT id FROM {name} WHERE {key.column_name} = {p}",
                      f"INSERT INTO {name} ({columns}) VALUES ({', '.join([p] * len(fields))}) "
                      "ON CONFLICT DO NOTHING RETURNING id")

    ser, stu, pat = (m._meta.table_name for m in (Series, Study, Patient))
    series_study, study_patient = Series.study.column_name, Study.patient.column_name
    return _Statements(
        patient=table(Patient, Patient.patient_id),
        study=table(Study, Study.study_uid),
        series=table(Series, Series.series_uid),
        parents_of_series=(f"SELECT s.{series_study}, st.{study_patient} FROM {ser} s "
                           f"JOIN {stu} st ON st.id = s.{series_study} WHERE s.id = {p}"),
        patient_of_study=f"SELECT {study_patient} FROM {stu} WHERE id = {p}",
        modalities_of_study=(f"SELECT DISTINCT modality FROM {ser} WHERE {series_study} = {p} "
                             "AND modality IS NOT NULL"),
        set_modalities=f"UPDATE {stu} SET modalities_in_study = {p} WHERE id = {p}",
        add_series_counts=f"UPDATE {ser} SET num_instances = num_instances + {p} WHERE id = {p}",
        add_study_counts=(f"UPDATE {stu} SET num_instances = num_instances + {p}, "
                          f"num_series = num_series + {p} WHERE id = {p}"),
        add_patient_counts=(f"UPDATE {pat} SET num_instances = num_instances + {p}, "
                            f"num_series = num_series + {p}, num_studies = num_studies + {p} WHERE id = {p}"),
    )


def series_parents(record: Any, cache: HierarchyCache, touched: "Counts",
                   now: dt.datetime) -> tuple[int, int, int]:
    """(series, study, patient) row ids for ``record`` (a db.catalogue.InstanceRecord),
    creating the rows it is the first of."""
    cached = cache.series.get(record.series_uid)
    if cached is not None:
        return cached
    a = record.attrs
    study_id, patient_id = _study_parents(record, cache, touched, now)
    series_id, inserted = _get_or_insert(_statements(database.param).series, record.series_uid, dict(
        study=study_id,
        modality=a.get("modality"),
        series_number=a.get("series_number"),
        series_description=a.get("series_description"),
        body_part_examined=a.get("body_part_examined"),
        series_date=a.get("series_date"),
        series_time=a.get("series_time"),
        protocol_name=a.get("protocol_name"),
    ))
    if inserted:
        touched.add_series(study_id, patient_id)
        parents = (series_id, study_id, patient_id)
    else:  # the series may belong to another study than this instance claims: trust the row
        parents = parents_of_series(series_id)
    cache.remember(cache.series, record.series_uid, parents)
    return parents


def parents_of_series(series_id: int) -> tuple[int, int, int]:
    db = database.obj
    row = db.execute_sql(_statements(db.param).parents_of_series, (series_id,)).fetchone()
    if row is None:
        raise IntegrityError(f"series row {series_id} is gone")
    return series_id, row[0], row[1]


def _study_parents(record: Any, cache: HierarchyCache, touched: "Counts",
                   now: dt.datetime) -> tuple[int, int]:
    cached = cache.studies.get(record.study_uid)
    if cached is not None:
        return cached
    a = record.attrs
    patient_id = _patient_id(record, cache)
    study_id, inserted = _get_or_insert(_statements(database.param).study, record.study_uid, dict(
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
    ))
    if inserted:
        touched.add_study(patient_id)
    else:  # an existing study keeps the patient it has
        db = database.obj
        row = db.execute_sql(_statements(db.param).patient_of_study, (study_id,)).fetchone()
        if row is None:  # pragma: no cover - found just above, in this transaction
            raise IntegrityError(f"study row {study_id} is gone")
        patient_id = row[0]
    parents = (study_id, patient_id)
    cache.remember(cache.studies, record.study_uid, parents)
    return parents


def _patient_id(record: Any, cache: HierarchyCache) -> int:
    a = record.attrs
    key = a.get("patient_id") or ""
    patient_id = cache.patients.get(key)
    if patient_id is not None:
        return patient_id
    patient_id, _ = _get_or_insert(_statements(database.param).patient, key, dict(
        patient_name=a.get("patient_name"),
        patient_name_folded=fold_name(a.get("patient_name")),
        issuer_of_patient_id=a.get("issuer_of_patient_id"),
        patient_birth_date=a.get("patient_birth_date"),
        patient_sex=a.get("patient_sex"),
        specific_character_set=a.get("specific_character_set"),
    ))
    cache.remember(cache.patients, key, patient_id)
    return patient_id


def _get_or_insert(table: _Table, key: str, values: dict[str, Any]) -> tuple[int, bool]:
    """(row id, inserted now) by unique key, inserting the row if there is none (a row another
    process inserted in between wins). Columns not in ``values`` get their model defaults."""
    db = database.obj
    row = db.execute_sql(table.find, (key,)).fetchone()
    if row is not None:
        return row[0], False
    params = [f.db_value(key if f is table.key else values[f.name] if f.name in values else _default(f))
              for f in table.fields]
    row = db.execute_sql(table.insert, params).fetchone()
    if row is not None:
        return row[0], True
    row = db.execute_sql(table.find, (key,)).fetchone()
    if row is None:  # pragma: no cover - the insert above or a concurrent one made it
        raise IntegrityError(f"{table.key.model.__name__} {key} vanished during insert")
    return row[0], False


def _default(f: Field) -> Any:
    return f.default() if callable(f.default) else f.default


class Counts:
    """Count increments gathered over a batch, applied as one UPDATE per touched row."""

    def __init__(self) -> None:
        self.series: dict[int, int] = {}
        self.studies: dict[int, list[int]] = {}  # id -> [instances, new series]
        self.patients: dict[int, list[int]] = {}  # id -> [instances, new series, new studies]
        self.studies_with_new_series: set[int] = set()

    def add_instance(self, parents: tuple[int, int, int], n: int = 1) -> None:
        series_id, study_id, patient_id = parents
        self.series[series_id] = self.series.get(series_id, 0) + n
        self.studies.setdefault(study_id, [0, 0])[0] += n
        self.patients.setdefault(patient_id, [0, 0, 0])[0] += n

    def add_series(self, study_id: int, patient_id: int) -> None:
        self.studies.setdefault(study_id, [0, 0])[1] += 1
        self.patients.setdefault(patient_id, [0, 0, 0])[1] += 1
        self.studies_with_new_series.add(study_id)

    def add_study(self, patient_id: int) -> None:
        self.patients.setdefault(patient_id, [0, 0, 0])[2] += 1

    def apply(self, db: Database) -> None:
        sql = _statements(db.param)
        for series_id, n in self.series.items():
            if n:
                db.execute_sql(sql.add_series_counts, (n, series_id))
        for study_id, (instances, series) in self.studies.items():
            if instances or series:
                db.execute_sql(sql.add_study_counts, (instances, series, study_id))
        for patient_id, (instances, series, studies) in self.patients.items():
            if instances or series or studies:
                db.execute_sql(sql.add_patient_counts, (instances, series, studies, patient_id))
        for study_id in self.studies_with_new_series:
            modalities = sorted({m for (m,) in db.execute_sql(sql.modalities_of_study, (study_id,))})
            db.execute_sql(sql.set_modalities, ("\\".join(modalities), study_id))
