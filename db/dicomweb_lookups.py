"""Catalogue look-ups DICOMweb needs beyond the query translator: the stored files of a study,
series or instance named by UID (WADO-RS retrieve and metadata, PS3.18 10.4), and instance
columns the translator does not answer (BitsAllocated for QIDO-RS, PS3.18 Table 10.6.3-3).

These fetch known entities by UID; DICOM matching stays ``db.query``'s alone. Callers open
the connection in the thread that asks.
"""

from __future__ import annotations

from dataclasses import dataclass

from db.models import Instance, Series, Study


@dataclass(frozen=True)
class InstanceFile:
    """One stored instance: its UIDs, where its file is, how it is encoded, its digest."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    path: str
    transfer_syntax: str
    sha256: str
    size: int


def instance_files(study_uid: str, series_uid: str | None = None,
                   sop_uid: str | None = None) -> list[InstanceFile]:
    """The instances below a study (and series, and instance) in viewing order: series by
    number, instances by number; empty when the path names nothing stored."""
    query = (Instance.select(Study.study_uid, Series.series_uid, Instance.sop_instance_uid,
                             Instance.sop_class_uid, Instance.path, Instance.transfer_syntax,
                             Instance.sha256, Instance.size)
             .join(Series).join(Study)
             .where(Study.study_uid == study_uid))
    if series_uid is not None:
        query = query.where(Series.series_uid == series_uid)
    if sop_uid is not None:
        query = query.where(Instance.sop_instance_uid == sop_uid)
    query = query.order_by(Series.series_number.asc(nulls="LAST"), Series.id,
                           Instance.instance_number.asc(nulls="LAST"), Instance.id)
    return [InstanceFile(*row) for row in query.tuples().iterator()]


def bits_allocated(sop_uids: list[str]) -> dict[str, int | None]:
    """SOP Instance UID -> BitsAllocated, for a page of QIDO-RS instance answers."""
    found: dict[str, int | None] = {}
    for start in range(0, len(sop_uids), 500):  # stay under SQLite's bound-parameter limit
        chunk = sop_uids[start:start + 500]
        rows = (Instance.select(Instance.sop_instance_uid, Instance.bits_allocated)
                .where(Instance.sop_instance_uid.in_(chunk)).tuples())
        found.update(dict(rows))
    return found
