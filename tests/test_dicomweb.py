"""DICOMweb through Starlette's TestClient: QIDO-RS through the translator, DICOM JSON details,
WADO-RS negotiation and framing, STOW-RS outcomes and bad input, WADO-URI, access."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from db import accounts
from db.models import database
from tests.helpers import make_dataset
from tests.web_support import part10_bytes, web  # noqa: F401 - fixture

ROOT = "/dicom-web"
JSON = {"Accept": "application/dicom+json"}


def _value(item: dict, tag: str):  # noqa: ANN202 - the first value of an attribute, or None
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None


def _two_studies(web) -> tuple[str, str, list[str]]:
    """Study A: CT series of 3 and MR series of 1 (DOE^JOHN); study B: one CT (SMITH^ANNE)."""
    study_a, study_b = generate_uid(), generate_uid()
    ct, mr = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(3)]
    web.ingest(*[make_dataset(study_uid=study_a, series_uid=ct, sop_uid=sop, instance_number=i + 1)
                 for i, sop in enumerate(sops)])
    web.ingest(make_dataset(study_uid=study_a, series_uid=mr, modality="MR", series_number=2))
    web.ingest(make_dataset(study_uid=study_b, patient_name="SMITH^ANNE", patient_id="PID2",
                            study_date="20230505"))
    return study_a, study_b, sops


# --- QIDO-RS -----------------------------------------------------------------------------

def test_study_search_returns_the_default_attributes_with_counts(web):
    study_a, study_b, _ = _two_studies(web)
    response = web.get(f"{ROOT}/studies", headers=JSON)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    studies = {_value(s, "0020000D"): s for s in response.json()}
    assert set(studies) == {study_a, study_b}
    a = studies[study_a]
    assert _value(a, "00100010") == {"Alphabetic": "DOE^JOHN"}
    assert a["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert _value(a, "00201206") == 2 and _value(a, "00201208") == 4
    assert _value(a, "00080056") == "ONLINE"
    assert _value(a, "00081190").endswith(f"{ROOT}/studies/{study_a}")
    for tag in ("00080020", "00080030", "00080050", "00080090", "00100020", "00100030",
                "00100040", "00200010"):
        assert tag in a and a[tag]["vr"]
    assert list(a) == sorted(a)  # tag order (PS3.18 F.2)


@pytest.mark.parametrize("params, expected", [
    ({"PatientName": "doe*"}, "A"),
    ({"00100010": "SMITH^ANNE"}, "B"),
    ({"StudyDate": "20240101-20240131"}, "A"),
    ({"StudyDate": "-20231231"}, "B"),
    ({"ModalitiesInStudy": "MR"}, "A"),
    ({"PatientID": "PID2", "includefield": "00081030,StudyDescription"}, "B"),
])
def test_study_search_matches_as_c_find_does(web, params, expected):
    study_a, study_b, _ = _two_studies(web)
    response = web.get(f"{ROOT}/studies", params=params)
    assert response.status_code == 200, response.text
    assert [_value(s, "0020000D") for s in response.json()] == [study_a if expected == "A" else study_b]


def test_uid_lists_match_any_listed_study(web):
    study_a, study_b, _ = _two_studies(web)
    response = web.get(f"{ROOT}/studies", params={"StudyInstanceUID": f"{study_a}\\{study_b}"})
    assert {_value(s, "0020000D") for s in response.json()} == {study_a, study_b}


def test_no_match_is_200_with_an_empty_array(web):
    _two_studies(web)
    response = web.get(f"{ROOT}/studies", params={"PatientName": "NOBODY"})
    assert response.status_code == 200 and response.json() == []


def test_series_and_instance_searches_at_each_level(web):
    study_a, _, sops = _two_studies(web)
    series = web.get(f"{ROOT}/studies/{study_a}/series").json()
    assert [_value(s, "00080060") for s in series] == ["CT", "MR"]
    assert _value(series[0], "00201209") == 3
    assert "00100010" not in series[0]  # study attributes only when searching all series
    ct = _value(series[0], "0020000E")
    instances = web.get(f"{ROOT}/studies/{study_a}/series/{ct}/instances").json()
    assert [_value(i, "00080018") for i in instances] == sops
    first = instances[0]
    assert _value(first, "00280010") == 16 and _value(first, "00280100") == 16
    assert _value(first, "00081190").endswith(f"/studies/{study_a}/series/{ct}/instances/{sops[0]}")
    everywhere = web.get(f"{ROOT}/instances", params={"PatientName": "DOE^JOHN", "Modality": "CT"})
    assert [_value(i, "00080018") for i in everywhere.json()] == sops
    assert _value(everywhere.json()[0], "00100010") == {"Alphabetic": "DOE^JOHN"}
    all_series = web.get(f"{ROOT}/series", params={"Modality": "MR"}).json()
    assert len(all_series) == 1 and _value(all_series[0], "0020000D") == study_a
    assert "00100010" in all_series[0]
    in_study = web.get(f"{ROOT}/studies/{study_a}/instances").json()
    assert len(in_study) == 4 and "00080060" in in_study[0]


def test_limit_offset_and_includefield_all(web):
    _two_studies(web)
    first = web.get(f"{ROOT}/studies", params={"limit": 1}).json()
    second = web.get(f"{ROOT}/studies", params={"limit": 1, "offset": 1}).json()
    assert len(first) == len(second) == 1 and first != second
    everything = web.get(f"{ROOT}/studies", params={"includefield": "all", "limit": 1}).json()[0]
    assert "00081030" in everything and "00080080" in everything  # StudyDescription, InstitutionName


def test_fuzzymatching_is_accepted_with_a_warning(web):
    _two_studies(web)
    response = web.get(f"{ROOT}/studies", params={"fuzzymatching": "true", "PatientName": "DOE*"})
    assert response.status_code == 200 and len(response.json()) == 1
    assert "fuzzymatching" in response.headers["warning"]


def test_results_are_capped_with_a_warning(make_settings):
    from tests.web_support import build_world

    for world in build_world(make_settings, dicomweb={"max_results": 2}):
        _two_studies(world)
        world.ingest(make_dataset())
        response = world.get(f"{ROOT}/studies")
        assert len(response.json()) == 2 and "max_results" in response.headers["warning"]


@pytest.mark.parametrize("params, reason", [
    ({"NoSuchKey": "x"}, "neither a DICOM keyword"),
    ({"FFFF0000": "x"}, "not a tag"),
    ({"SOPInstanceUID": "1.2"}, "cannot be matched"),
    ({"StudyDate": "2024"}, "StudyDate"),
    ({"limit": "ten"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching"),
    ({"includefield": "NotAKeyword"}, "NotAKeyword"),
    ({"ReferencedSeriesSequence.SeriesInstanceUID": "1.2"}, "sequence"),
])
def test_bad_search_parameters_are_400_with_a_reason(web, params, reason):
    response = web.get(f"{ROOT}/studies", params=params)
    assert response.status_code == 400
    assert reason in response.json()["detail"]


def test_bad_uid_in_a_search_path_is_400(web):
    response = web.get(f"{ROOT}/studies/1.2.abc/series")
    assert response.status_code == 400


def test_search_accept_must_allow_json(web):
    response = web.get(f"{ROOT}/studies", headers={"Accept": "application/dicom+xml"})
    assert response.status_code == 406
