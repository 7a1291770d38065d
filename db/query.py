"""The one query translator: DICOM matching (PS3.4 C.2.2.2) to SQL over the catalogue.

C-FIND, C-MOVE/C-GET, the HTTP listings and DICOMweb build a ``Query`` and call ``find``,
``count_matches`` or ``retrieve_instances``; nothing else turns DICOM keys into SQL. The
table ``KEYS`` says which column answers each keyword; ``db.matching`` holds one function per
matching type. Free of pynetdicom and Starlette (shared/STYLE.md, 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from peewee import Field, PostgresqlDatabase

from db.matching import (
    InvalidQuery,
    UnsupportedQuery,
    combined_datetime_condition,
    condition_for,
    is_universal,
)
from db.models import Instance, Patient, Series, Study, database

__all__ = ["InvalidQuery", "UnsupportedQuery", "Query", "Key", "KEYS", "LEVELS", "StoredInstance",
           "find", "count_matches", "retrieve_instances", "check_hierarchy", "unique_key_of"]

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_LEVEL_MODEL = {"PATIENT": Patient, "STUDY": Study, "SERIES": Series, "IMAGE": Instance}
_UNIQUE_KEYS = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
                "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
_ROOT_LEVELS = {"PATIENT": LEVELS, "STUDY": LEVELS[1:]}


@dataclass(frozen=True)
class Key:
    """One attribute the catalogue answers: its level, VR and column (and folded twin for PN)."""

    level: str
    vr: str
    column: Field
    folded: Field | None = None
    multi: bool = False  # stored backslash-joined; returned as a list


KEYS: dict[str, Key] = {
    # PATIENT (PS3.4 C.6.1.1.2)
    "PatientName": Key("PATIENT", "PN", Patient.patient_name, Patient.patient_name_folded),
    "PatientID": Key("PATIENT", "LO", Patient.patient_id),
    "IssuerOfPatientID": Key("PATIENT", "LO", Patient.issuer_of_patient_id),
    "PatientBirthDate": Key("PATIENT", "DA", Patient.patient_birth_date),
    "PatientSex": Key("PATIENT", "CS", Patient.patient_sex),
    "NumberOfPatientRelatedStudies": Key("PATIENT", "IS", Patient.num_studies),
    "NumberOfPatientRelatedSeries": Key("PATIENT", "IS", Patient.num_series),
    "NumberOfPatientRelatedInstances": Key("PATIENT", "IS", Patient.num_instances),
    # STUDY (C.6.1.1.3)
    "StudyInstanceUID": Key("STUDY", "UI", Study.study_uid),
    "StudyDate": Key("STUDY", "DA", Study.study_date),
    "StudyTime": Key("STUDY", "TM", Study.study_time),
    "AccessionNumber": Key("STUDY", "SH", Study.accession_number),
    "StudyID": Key("STUDY", "SH", Study.study_id),
    "StudyDescription": Key("STUDY", "LO", Study.study_description),
    "ReferringPhysicianName": Key("STUDY", "PN", Study.referring_physician_name,
                                  Study.referring_physician_name_folded),
    "InstitutionName": Key("STUDY", "LO", Study.institution_name),
    "ModalitiesInStudy": Key("STUDY", "CS", Study.modalities_in_study, multi=True),
    "NumberOfStudyRelatedSeries": Key("STUDY", "IS", Study.num_series),
    "NumberOfStudyRelatedInstances": Key("STUDY", "IS", Study.num_instances),
    # SERIES (C.6.1.1.4)
    "SeriesInstanceUID": Key("SERIES", "UI", Series.series_uid),
    "Modality": Key("SERIES", "CS", Series.modality),
    "SeriesNumber": Key("SERIES", "IS", Series.series_number),
    "SeriesDescription": Key("SERIES", "LO", Series.series_description),
    "BodyPartExamined": Key("SERIES", "CS", Series.body_part_examined),
    "SeriesDate": Key("SERIES", "DA", Series.series_date),
    "SeriesTime": Key("SERIES", "TM", Series.series_time),
    "ProtocolName": Key("SERIES", "LO", Series.protocol_name),
    "NumberOfSeriesRelatedInstances": Key("SERIES", "IS", Series.num_instances),
    # IMAGE (C.6.1.1.5)
    "SOPInstanceUID": Key("IMAGE", "UI", Instance.sop_instance_uid),
    "SOPClassUID": Key("IMAGE", "UI", Instance.sop_class_uid),
    "InstanceNumber": Key("IMAGE", "IS", Instance.instance_number),
    "ContentDate": Key("IMAGE", "DA", Instance.content_date),
    "ContentTime": Key("IMAGE", "TM", Instance.content_time),
    "ImageType": Key("IMAGE", "CS", Instance.image_type, multi=True),
    "Rows": Key("IMAGE", "US", Instance.rows),
    "Columns": Key("IMAGE", "US", Instance.columns),
    "NumberOfFrames": Key("IMAGE", "IS", Instance.number_of_frames),
}

# Date and time keys matched together when both are given (PS3.4 C.2.2.2.5.1).
_DATE_TIME_PAIRS = (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"),
                    ("ContentDate", "ContentTime"))


@dataclass(frozen=True)
class Query:
    """What to match and what to return; the contract between the edges and the catalogue.

    ``matchers`` hold values as written in a DICOM identifier (``DOE*``, ``20210101-``,
    ``1.2.3\\1.2.4``); an empty value is universal matching. ``requested`` are the return
    keys; the level's unique key is always returned.
    """

    level: str
    root: str = "STUDY"
    matchers: tuple[tuple[str, str], ...] = ()
    requested: tuple[str, ...] = ()
    case_sensitive_names: bool = False
    limit: int | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        if self.root not in _ROOT_LEVELS:
            raise InvalidQuery(f"unknown information model root {self.root!r}")
        if self.level not in _ROOT_LEVELS[self.root]:
            allowed = ", ".join(_ROOT_LEVELS[self.root])
            raise InvalidQuery(f"QueryRetrieveLevel {self.level!r} is not one of {allowed} "
                               f"for the {self.root.title()} Root model")
        if self.limit is not None and self.limit < 0 or self.offset < 0:
            raise InvalidQuery("limit and offset must not be negative")

    @property
    def unique_key(self) -> str:
        return _UNIQUE_KEYS[self.level]

    def return_keys(self) -> list[str]:
        """Requested keys, unique key first, each once."""
        keys = [self.unique_key]
        for keyword in self.requested:
            if keyword not in keys:
                keys.append(keyword)
        return keys


@dataclass(frozen=True)
class StoredInstance:
    """Where an instance's file is and how it is encoded: what a C-STORE sub-operation needs."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    path: str
    study_uid: str
    series_uid: str


def unique_key_of(level: str) -> str:
    return _UNIQUE_KEYS[level]


def check_hierarchy(query: Query) -> None:
    """Hierarchical queries name the unique key of every level above the queried one
    (PS3.4 C.4.1.2.1); wildcards and ranges are not unique keys."""
    given = dict(query.matchers)
    levels = _ROOT_LEVELS[query.root]
    for level in levels[:levels.index(query.level)]:
        keyword = _UNIQUE_KEYS[level]
        value = given.get(keyword, "").strip()
        if not value or "*" in value or "?" in value:
            raise InvalidQuery(f"a {query.level} level query in the {query.root.title()} Root model "
                               f"needs a {keyword} value")


def find(query: Query) -> Iterator[dict[str, Any]]:
    """The matching entities at the query's level: {keyword: value or None} for the return
    keys the catalogue knows (the caller adds the ones it does not, empty)."""
    keys = [k for k in query.return_keys() if k in KEYS and _level_allowed(query, k)]
    columns = [KEYS[k].column for k in keys]
    select = _filtered(query, _LEVEL_MODEL[query.level].select(*columns))
    select = select.order_by(*_ordering(query.level))
    if query.limit is not None:
        select = select.limit(query.limit)
    if query.offset:
        select = select.offset(query.offset)
    multi = [KEYS[k].multi for k in keys]
    for row in select.tuples().iterator():
        yield {k: (v.split("\\") if m and v else v) for k, v, m in zip(keys, row, multi)}


def count_matches(query: Query) -> int:
    """How many entities match, ignoring limit and offset."""
    model = _LEVEL_MODEL[query.level]
    return _filtered(query, model.select(model.id)).count()


def retrieve_instances(query: Query) -> list[StoredInstance]:
    """Every instance below the matched entities, in series then instance order (C-MOVE, C-GET)."""
    select = Instance.select(Instance.sop_class_uid, Instance.sop_instance_uid,
                             Instance.transfer_syntax, Instance.path, Study.study_uid,
                             Series.series_uid)
    select = _filtered(query, select, as_level="IMAGE")
    select = select.order_by(Study.id, Series.series_number, Series.id, Instance.instance_number,
                             Instance.id)
    return [StoredInstance(*row) for row in select.tuples().iterator()]


def _level_allowed(query: Query, keyword: str) -> bool:
    """Keys of levels below the query level are not answered (PS3.4 C.4.1.1.3.1)."""
    return LEVELS.index(KEYS[keyword].level) <= LEVELS.index(query.level)


def _filtered(query: Query, select: Any, as_level: str | None = None) -> Any:
    """Join up to the patient and add one WHERE condition per matching key."""
    level = as_level or query.level
    if level == "IMAGE":
        select = select.join_from(Instance, Series).join_from(Series, Study)
    elif level == "SERIES":
        select = select.join_from(Series, Study)
    if level != "PATIENT":
        select = select.join_from(Study, Patient)
    conditions = _conditions(query)
    for condition in conditions:
        select = select.where(condition)
    return select


def _conditions(query: Query) -> list[Any]:
    postgres = isinstance(database.obj, PostgresqlDatabase)
    values: dict[str, str] = {}
    for keyword, value in query.matchers:
        if keyword in values:
            raise InvalidQuery(f"{keyword} is given twice")
        values[keyword] = value
    conditions = []
    for date_key, time_key in _DATE_TIME_PAIRS:
        date_value, time_value = values.get(date_key, ""), values.get(time_key, "")
        if not is_universal(date_value) and not is_universal(time_value) and \
                ("-" in date_value or "-" in time_value) and "\\" not in date_value + time_value and \
                _level_allowed(query, date_key):
            conditions.append(combined_datetime_condition(
                KEYS[date_key].column, KEYS[time_key].column, date_value, time_value))
            values.pop(date_key)
            values.pop(time_key)
    for keyword, value in values.items():
        key = KEYS.get(keyword)
        if key is None or is_universal(value) or not _level_allowed(query, keyword):
            continue  # unknown optional keys and lower-level keys only return (C.2.2.1.3)
        if keyword == "ModalitiesInStudy":
            conditions.append(_modalities_condition(value, postgres))
            continue
        column = key.column
        if key.vr == "PN" and not query.case_sensitive_names and key.folded is not None:
            column = key.folded
            value = value.casefold()
        conditions.append(condition_for(column, key.vr, value, keyword, postgres))
    return conditions


def _modalities_condition(value: str, postgres: bool) -> Any:
    """ModalitiesInStudy matches a study holding any series of a listed modality."""
    series = Series.select(Series.study).where(
        condition_for(Series.modality, "CS", value, "ModalitiesInStudy", postgres))
    return Study.id.in_(series)


def _ordering(level: str) -> list[Any]:
    if level == "STUDY":
        return [Study.study_date.desc(nulls="LAST"), Study.study_time.desc(nulls="LAST"),
                Study.id.desc()]
    if level == "SERIES":
        return [Series.series_number.asc(nulls="LAST"), Series.id]
    if level == "IMAGE":
        return [Instance.instance_number.asc(nulls="LAST"), Instance.id]
    return [Patient.id]
