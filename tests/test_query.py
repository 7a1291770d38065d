"""The query translator alone (no network), on SQLite and on PostgreSQL when reachable.

One small catalogue per back end, built through the real ingest path:
  P1 MÜLLER^JÜRGEN (ISO_IR 100)  study S1 20210115 101010  series CT (2 images), MR (1 image)
  P2 DOE^JOHN                    study S2 20210201 083000  series MR (1)
  P3 doe^jane                    study S3 20201231 235900  series CT (1), accession ACC_3%
  P4 SMITH^ANNA                  study S4 (no date)        series CT (1)
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Iterator

import pytest

from db.models import database
from db.query import (InvalidQuery, Query, UnsupportedQuery, check_hierarchy, count_matches, find,
                      retrieve_instances)
from node.config import settings_from_mapping
from node.runtime import Node
from tests.conftest import fresh_postgres_database
from tests.helpers import make_dataset

UIDS = {name: f"1.2.826.0.1.3680043.10.1583.9.{i}" for i, name in enumerate(
    ["S1", "S2", "S3", "S4", "S1CT", "S1MR", "S2MR", "S3CT", "S4CT"], start=1)}


def _datasets() -> list:
    s = UIDS
    return [
        make_dataset(patient_id="P1", patient_name="MÜLLER^JÜRGEN", charset="ISO_IR 100",
                     study_uid=s["S1"], series_uid=s["S1CT"], modality="CT", series_number=1,
                     instance_number=2, study_date="20210115", StudyTime="101010"),
        make_dataset(patient_id="P1", patient_name="MÜLLER^JÜRGEN", charset="ISO_IR 100",
                     study_uid=s["S1"], series_uid=s["S1CT"], modality="CT", series_number=1,
                     instance_number=1, study_date="20210115", StudyTime="101010"),
        make_dataset(patient_id="P1", patient_name="MÜLLER^JÜRGEN", charset="ISO_IR 100",
                     study_uid=s["S1"], series_uid=s["S1MR"], modality="MR", series_number=2,
                     study_date="20210115", StudyTime="101010"),
        make_dataset(patient_id="P2", patient_name="DOE^JOHN", study_uid=s["S2"],
                     series_uid=s["S2MR"], modality="MR", study_date="20210201",
                     StudyTime="083000"),
        make_dataset(patient_id="P3", patient_name="doe^jane", study_uid=s["S3"],
                     series_uid=s["S3CT"], study_date="20201231", StudyTime="235900",
                     AccessionNumber="ACC_3%"),
        make_dataset(patient_id="P4", patient_name="SMITH^ANNA", study_uid=s["S4"],
                     series_uid=s["S4CT"], study_date="", StudyTime=""),
    ]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def catalogue(request, tmp_path_factory) -> Iterator[Node]:
    folder: Path = tmp_path_factory.mktemp("query")
    if request.param == "postgres":
        with fresh_postgres_database("t_query_translator") as url:
            yield from _loaded_node(folder, url)
    else:
        yield from _loaded_node(folder, "")


def _loaded_node(folder: Path, url: str) -> Iterator[Node]:
    settings = settings_from_mapping({"node": {"data_dir": "data"}, "database": {"url": url}},
                                     base_dir=folder)
    node = Node(settings)
    ingestor = node.open_store()
    try:
        for ds in _datasets():
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            assert ingestor.ingest_part10(buffer.getvalue()).outcome == "stored"
        with database.connection_context():
            yield node
    finally:
        node.stop()


def studies(catalogue, case_sensitive=False, **matchers) -> list[str]:
    query = Query(level="STUDY", matchers=tuple(matchers.items()), case_sensitive_names=case_sensitive)
    names = {v: k for k, v in UIDS.items()}
    return sorted(names[row["StudyInstanceUID"]] for row in find(query))


def test_db_package_does_not_import_network_or_web_code():
    import subprocess

    code = "import db.query, sys; print('pynetdicom' in sys.modules, 'starlette' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_universal_matching(catalogue):
    assert studies(catalogue) == ["S1", "S2", "S3", "S4"]
    assert studies(catalogue, PatientName="*") == ["S1", "S2", "S3", "S4"]


def test_single_value(catalogue):
    assert studies(catalogue, PatientID="P2") == ["S2"]
    assert studies(catalogue, PatientID="p2") == []  # LO is case-sensitive
    assert studies(catalogue, PatientName="doe^john") == ["S2"]  # PN is not, by default


def test_person_name_wildcards_are_case_insensitive_by_default(catalogue):
    assert studies(catalogue, PatientName="DOE*") == ["S2", "S3"]
    assert studies(catalogue, PatientName="DOE*", case_sensitive=True) == ["S2"]
    assert studies(catalogue, PatientName="DOE^J?HN") == ["S2"]
    assert studies(catalogue, PatientName="*ANNA") == ["S4"]


def test_non_ascii_names(catalogue):
    assert studies(catalogue, PatientName="MÜLLER*") == ["S1"]
    assert studies(catalogue, PatientName="müller^jürgen") == ["S1"]
    assert studies(catalogue, PatientName="M?LLER*") == ["S1"]  # ? is one character, not one byte


def test_wildcards_only_where_given_and_sql_metacharacters_are_literal(catalogue):
    assert studies(catalogue, AccessionNumber="ACC_3%") == ["S3"]
    assert studies(catalogue, AccessionNumber="ACC_*") == ["S3"]  # not ACC1: _ is no wildcard
    assert studies(catalogue, AccessionNumber="ACC%") == []
    assert studies(catalogue, StudyDescription="test*") == []  # LO wildcards are case-sensitive
    assert studies(catalogue, StudyDescription="TEST*") == ["S1", "S2", "S3", "S4"]


def test_date_single_range_open_ranges_and_lists(catalogue):
    assert studies(catalogue, StudyDate="20210201") == ["S2"]
    assert studies(catalogue, StudyDate="20210101-20210131") == ["S1"]
    assert studies(catalogue, StudyDate="-20201231") == ["S3"]
    assert studies(catalogue, StudyDate="20210115-") == ["S1", "S2"]
    assert studies(catalogue, StudyDate="20210115\\20201231") == ["S1", "S3"]


@pytest.mark.parametrize("value", ["2021-01-01-2021", "2021013", "20210131-20210101", "-", "abcdefgh"])
def test_bad_dates_are_invalid(catalogue, value):
    with pytest.raises(InvalidQuery):
        studies(catalogue, StudyDate=value)


def test_time_ranges(catalogue):
    assert studies(catalogue, StudyTime="0800-0900") == ["S2"]
    assert studies(catalogue, StudyTime="-10") == ["S1", "S2"]  # -10 includes 10:10:10
    assert studies(catalogue, StudyTime="1010") == ["S1"]  # at minute precision
    with pytest.raises(InvalidQuery):
        studies(catalogue, StudyTime="25x")


def test_combined_date_and_time_range(catalogue):
    # from 31 Dec 23:00 to 15 Jan 11:00: S3 (31 Dec 23:59) and S1 (15 Jan 10:10), not S2
    assert studies(catalogue, StudyDate="20201231-20210115", StudyTime="2300-1100") == ["S1", "S3"]
    assert studies(catalogue, StudyDate="20210115-", StudyTime="1100-") == ["S2"]


def test_uid_list(catalogue):
    assert studies(catalogue, StudyInstanceUID=f"{UIDS['S2']}\\{UIDS['S4']}") == ["S2", "S4"]
    assert studies(catalogue, StudyInstanceUID="1.2.3*") == []  # no wildcards on UIDs


def test_modalities_in_study_matches_any_series(catalogue):
    assert studies(catalogue, ModalitiesInStudy="MR") == ["S1", "S2"]
    assert studies(catalogue, ModalitiesInStudy="MR\\CT") == ["S1", "S2", "S3", "S4"]
    rows = list(find(Query(level="STUDY", matchers=(("StudyInstanceUID", UIDS["S1"]),),
                           requested=("ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                                      "NumberOfStudyRelatedInstances", "PatientName"))))
    assert rows == [{"StudyInstanceUID": UIDS["S1"], "ModalitiesInStudy": ["CT", "MR"],
                     "NumberOfStudyRelatedSeries": 2, "NumberOfStudyRelatedInstances": 3,
                     "PatientName": "MÜLLER^JÜRGEN"}]


def test_patient_level_counts(catalogue):
    query = Query(level="PATIENT", root="PATIENT", matchers=(("PatientID", "P1"),),
                  requested=("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                             "NumberOfPatientRelatedInstances", "PatientSex", "Unknown"))
    assert list(find(query)) == [{"PatientID": "P1", "NumberOfPatientRelatedStudies": 1,
                                  "NumberOfPatientRelatedSeries": 2,
                                  "NumberOfPatientRelatedInstances": 3, "PatientSex": "O"}]


def test_series_and_image_levels_in_order(catalogue):
    series = Query(level="SERIES", matchers=(("StudyInstanceUID", UIDS["S1"]),),
                   requested=("Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances"))
    assert [(r["Modality"], r["SeriesNumber"], r["NumberOfSeriesRelatedInstances"])
            for r in find(series)] == [("CT", 1, 2), ("MR", 2, 1)]
    images = Query(level="IMAGE", matchers=(("StudyInstanceUID", UIDS["S1"]),
                                            ("SeriesInstanceUID", UIDS["S1CT"])),
                   requested=("InstanceNumber", "SOPClassUID", "Rows"))
    rows = list(find(images))
    assert [r["InstanceNumber"] for r in rows] == [1, 2]
    assert rows[0]["Rows"] == 16 and rows[0]["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2"
    assert count_matches(images) == 2


def test_number_matching(catalogue):
    query = Query(level="SERIES", matchers=(("StudyInstanceUID", UIDS["S1"]), ("SeriesNumber", "2")))
    assert [r["SeriesInstanceUID"] for r in find(query)] == [UIDS["S1MR"]]
    with pytest.raises(InvalidQuery):
        list(find(Query(level="SERIES", matchers=(("SeriesNumber", "two"),))))


def test_lower_level_keys_neither_match_nor_answer(catalogue):
    query = Query(level="STUDY", matchers=(("Modality", "XX"), ("PatientID", "P2")),
                  requested=("Modality",))
    assert list(find(query)) == [{"StudyInstanceUID": UIDS["S2"]}]


def test_limit_offset_and_newest_first(catalogue):
    everything = [r["StudyInstanceUID"] for r in find(Query(level="STUDY"))]
    assert everything[:3] == [UIDS["S2"], UIDS["S1"], UIDS["S3"]]  # undated last
    page = [r["StudyInstanceUID"] for r in find(Query(level="STUDY", limit=2, offset=1))]
    assert page == everything[1:3]
    assert count_matches(Query(level="STUDY", limit=1)) == 4


def test_hierarchy_rules():
    check_hierarchy(Query(level="STUDY"))
    check_hierarchy(Query(level="SERIES", matchers=(("StudyInstanceUID", "1.2"),)))
    with pytest.raises(InvalidQuery, match="StudyInstanceUID"):
        check_hierarchy(Query(level="SERIES"))
    with pytest.raises(InvalidQuery, match="SeriesInstanceUID"):
        check_hierarchy(Query(level="IMAGE", matchers=(("StudyInstanceUID", "1.2"),)))
    with pytest.raises(InvalidQuery, match="PatientID"):
        check_hierarchy(Query(level="STUDY", root="PATIENT"))
    with pytest.raises(InvalidQuery):
        check_hierarchy(Query(level="SERIES", matchers=(("StudyInstanceUID", "1.2*"),)))


@pytest.mark.parametrize("level,root", [("FOO", "STUDY"), ("PATIENT", "STUDY"), ("STUDY", "WORKLIST")])
def test_unknown_level_or_model(level, root):
    with pytest.raises(InvalidQuery):
        Query(level=level, root=root)


def test_datetime_keys_are_reported_unsupported_not_misanswered():
    from db.matching import condition_for
    from db.models import Study

    with pytest.raises(UnsupportedQuery):
        condition_for(Study.study_date, "DT", "20210101-", "AcquisitionDateTime", False)


def test_retrieve_instances_lists_files_below_the_match(catalogue):
    found = retrieve_instances(Query(level="STUDY", matchers=(("StudyInstanceUID", UIDS["S1"]),)))
    assert len(found) == 3
    assert [f.series_uid for f in found] == [UIDS["S1CT"], UIDS["S1CT"], UIDS["S1MR"]]
    for item in found:
        assert (catalogue.storage.absolute(item.path)).is_file()
        assert item.transfer_syntax == "1.2.840.10008.1.2.1"
    by_patient = retrieve_instances(Query(level="PATIENT", root="PATIENT",
                                          matchers=(("PatientID", "P2"),)))
    assert [f.study_uid for f in by_patient] == [UIDS["S2"]]
