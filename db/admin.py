"""Deleting a study or a series from the catalogue, with its counts kept right and the act audited.

The rows go in one transaction: instances, series, and a study or patient left with nothing
under it; the parents' counts and ModalitiesInStudy are updated and the audit entry is written
in the same transaction. Files are not touched here: the caller removes them after the commit
(``Deleted.files``), so a crash in between leaves unreferenced files (harmless), never rows
whose files are gone. Upload-session rows and the audit log refer to UIDs by value, not by
foreign key, and are kept.

Callers open the connection (``database.connection_context()``) in the thread that asks;
nothing here knows about HTTP (shared/STYLE.md, 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peewee import SqliteDatabase, fn

from db import accounts
from db.models import Instance, Patient, Series, Study, database


class NothingToDelete(Exception):
    """No such study, or no such series in that study."""


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative to data_dir
    sha256: str
    size: int


@dataclass(frozen=True)
class Deleted:
    """What one deletion removed from the catalogue; ``files`` are for the caller to remove."""

    study_uid: str
    series_uids: tuple[str, ...]
    instances: int
    bytes: int
    study_removed: bool
    patient_removed: bool
    files: tuple[StoredFile, ...]


def delete_study(study_uid: str, username: str, address: str | None) -> Deleted:
    """Remove a study with all its series and instances (and its patient when it had no other)."""
    with database.atomic(**_write_lock()):
        study = _locked(Study.select(Study.id, Study.patient).where(Study.study_uid == study_uid))
        if study is None:
            raise NothingToDelete(f"no study {study_uid}")
        study_id, patient_id = study
        series = list(_locked_all(Series.select(Series.id, Series.series_uid).where(Series.study == study_id)))
        files = _instance_files([sid for sid, _ in series])
        Instance.delete().where(Instance.series.in_([sid for sid, _ in series])).execute()
        Series.delete().where(Series.study == study_id).execute()
        Study.delete().where(Study.id == study_id).execute()
        _add_to_patient(patient_id, instances=-len(files), series=-len(series), studies=-1)
        patient_removed = _remove_patient_if_empty(patient_id)
        accounts.record_access(username, study_uid, "delete-study", address)
    return Deleted(study_uid, tuple(uid for _, uid in series), len(files), sum(f.size for f in files),
                   True, patient_removed, tuple(files))


def delete_series(study_uid: str, series_uid: str, username: str, address: str | None) -> Deleted:
    """Remove one series of a study; the study goes too when this was its last series."""
    with database.atomic(**_write_lock()):
        study = _locked(Study.select(Study.id, Study.patient).where(Study.study_uid == study_uid))
        series = _locked(Series.select(Series.id).where(
            (Series.series_uid == series_uid) & (Series.study == (study[0] if study else -1))))
        if study is None or series is None:
            raise NothingToDelete(f"no series {series_uid} in study {study_uid}")
        (study_id, patient_id), (series_id,) = study, series
        files = _instance_files([series_id])
        Instance.delete().where(Instance.series == series_id).execute()
        Series.delete().where(Series.id == series_id).execute()
        left = Series.select().where(Series.study == study_id).count()
        if left:
            Study.update(num_instances=Study.num_instances - len(files), num_series=Study.num_series - 1,
                         modalities_in_study=_modalities(study_id)).where(Study.id == study_id).execute()
            _add_to_patient(patient_id, instances=-len(files), series=-1, studies=0)
        else:
            Study.delete().where(Study.id == study_id).execute()
            _add_to_patient(patient_id, instances=-len(files), series=-1, studies=-1)
        patient_removed = not left and _remove_patient_if_empty(patient_id)
        accounts.record_access(username, study_uid, "delete-series", address)
    return Deleted(study_uid, (series_uid,), len(files), sum(f.size for f in files), not left,
                   patient_removed, tuple(files))


def still_referenced(paths: list[str]) -> set[str]:
    """Which of these files a catalogue row points to again (the same instance stored anew
    between the commit and the removal): those must stay."""
    if not paths:
        return set()
    return {p for (p,) in Instance.select(Instance.path).where(Instance.path.in_(paths)).tuples()}


def _write_lock() -> dict[str, Any]:
    """SQLite: take the write lock at BEGIN, so the rows read are the rows deleted (a deferred
    transaction that reads first may fail to upgrade when the ingest writer commits between)."""
    return {"lock_type": "IMMEDIATE"} if isinstance(database.obj, SqliteDatabase) else {}


def _locked(query: Any) -> tuple | None:
    return _for_update(query).tuples().first()


def _locked_all(query: Any) -> Any:
    return _for_update(query).tuples()


def _for_update(query: Any) -> Any:
    """PostgreSQL: lock the rows so an instance inserted into them meanwhile waits for the
    commit (and then finds its series gone) instead of slipping in uncounted."""
    return query if isinstance(database.obj, SqliteDatabase) else query.for_update()


def _instance_files(series_ids: list[int]) -> list[StoredFile]:
    if not series_ids:
        return []
    query = (Instance.select(Instance.path, Instance.sha256, Instance.size)
             .where(Instance.series.in_(series_ids)).order_by(Instance.id).tuples())
    return [StoredFile(path, sha256, size) for path, sha256, size in query]


def _add_to_patient(patient_id: int, *, instances: int, series: int, studies: int) -> None:
    (Patient.update(num_instances=Patient.num_instances + instances, num_series=Patient.num_series + series,
                    num_studies=Patient.num_studies + studies)
     .where(Patient.id == patient_id).execute())


def _remove_patient_if_empty(patient_id: int) -> bool:
    """A patient row with no study left goes too, as it would never have been created."""
    if Study.select().where(Study.patient == patient_id).exists():
        return False
    return Patient.delete().where(Patient.id == patient_id).execute() == 1


def _modalities(study_id: int) -> str:
    """ModalitiesInStudy (0008,0061) of the series left, as the ingest writes it."""
    query = (Series.select(fn.DISTINCT(Series.modality))
             .where((Series.study == study_id) & Series.modality.is_null(False)).tuples())
    return "\\".join(sorted(m for (m,) in query))
