"""DICOMweb through Starlette's TestClient: QIDO-RS through the translator, DICOM JSON details,
WADO-RS negotiation and framing, STOW-RS outcomes and bad input, WADO-URI, access."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from db import accounts
from db.models import database
from node.runtime import Node
from tests.helpers import make_dataset
from tests.web_support import FakeClock, WebWorld, part10_bytes
from web.app import create_app

ROOT = "/dicom-web"
JSON = {"Accept": "application/dicom+json"}


def _world(make_settings, **sections: dict):  # noqa: ANN202 - a generator of one WebWorld
    """The HTTP app over a fresh catalogue, with the ingest path STOW-RS stores through."""
    settings = make_settings(**sections)
    node = Node(settings)
    ingestor = node.open_store()
    clock = FakeClock()
    app = create_app(settings, clock=clock, ingestor=ingestor)
    try:
        with TestClient(app) as client:
            yield WebWorld(settings, ingestor, client, clock)
    finally:
        node.stop()


@pytest.fixture
def web(make_settings):  # noqa: ANN201
    yield from _world(make_settings)


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


@pytest.mark.parametrize("separator", ["\\", ","])
def test_uid_lists_match_any_listed_study(web, separator):
    study_a, study_b, _ = _two_studies(web)
    response = web.get(f"{ROOT}/studies", params={"StudyInstanceUID": f"{study_a}{separator}{study_b}"})
    assert {_value(s, "0020000D") for s in response.json()} == {study_a, study_b}
    modalities = web.get(f"{ROOT}/studies", params={"ModalitiesInStudy": f"MR{separator}XA"})
    assert [_value(s, "0020000D") for s in modalities.json()] == [study_a]


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
    for world in _world(make_settings, dicomweb={"max_results": 2}):
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


# --- WADO-RS -----------------------------------------------------------------------------

def _parts(response) -> list[tuple[bytes, bytes]]:  # noqa: ANN001
    """(raw part headers, part bytes) of a multipart/related answer, split by hand."""
    match = re.search(r"boundary=([^;\s]+)", response.headers["content-type"])
    assert match, response.headers["content-type"]
    delimiter = b"--" + match.group(1).strip('"').encode()
    body = response.content
    assert body.startswith(delimiter + b"\r\n") and body.endswith(b"\r\n" + delimiter + b"--\r\n")
    chunks = body[len(delimiter) + 2:-(len(delimiter) + 6)].split(b"\r\n" + delimiter + b"\r\n")
    out = []
    for chunk in chunks:
        head, _, data = chunk.partition(b"\r\n\r\n")
        out.append((head, data))
    return out


def _stored_file(web, sop: str) -> bytes:  # noqa: ANN001
    with database.connection_context():
        from db import lookups

        inst = lookups.instance_pixels(sop)
    return (web.settings.data_dir / inst.path).read_bytes()


def test_retrieve_instance_series_and_study_stream_the_stored_files(web):
    study_a, _, sops = _two_studies(web)
    ct_uid = _value(web.get(f"{ROOT}/studies/{study_a}/series").json()[0], "0020000E")
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    one = web.get(f"{ROOT}/studies/{study_a}/series/{ct_uid}/instances/{sops[0]}", headers=accept)
    assert one.status_code == 200
    assert one.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    [(head, data)] = _parts(one)
    assert head == b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert data == _stored_file(web, sops[0])
    series = _parts(web.get(f"{ROOT}/studies/{study_a}/series/{ct_uid}", headers=accept))
    assert [dcmread(io.BytesIO(d)).SOPInstanceUID for _, d in series] == sops
    assert len(_parts(web.get(f"{ROOT}/studies/{study_a}", headers=accept))) == 4


@pytest.mark.parametrize("accept", [
    'multipart/related; type=application/dicom',
    'multipart/related; type="application/dicom"; transfer-syntax="1.2.840.10008.1.2.1"',
    "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
    "*/*",
])
def test_quoted_and_unquoted_accept_parameters(web, accept):
    study_a, _, _ = _two_studies(web)
    response = web.get(f"{ROOT}/studies/{study_a}", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    assert len(_parts(response)) == 4


def _rle_dataset(**kwargs) -> object:
    ds = make_dataset(**kwargs)
    ds.compress("1.2.840.10008.1.2.5", np.arange(256, dtype=np.uint16).reshape(16, 16))
    return ds


def test_transfer_syntax_negotiation(web):
    ds = _rle_dataset()
    web.ingest(ds)
    url = f"{ROOT}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    stored = _parts(web.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                                   "transfer-syntax=*"}))
    assert stored[0][0].endswith(b"transfer-syntax=1.2.840.10008.1.2.5")
    default = _parts(web.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}))
    assert default[0][0].endswith(b"transfer-syntax=1.2.840.10008.1.2.1")
    decoded = dcmread(io.BytesIO(default[0][1]))
    assert decoded.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(decoded.pixel_array, np.arange(256).reshape(16, 16))
    j2k = web.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                          "transfer-syntax=1.2.840.10008.1.2.4.90"})
    assert j2k.status_code == 406 and "transfer-syntax=*" in j2k.json()["detail"]


@pytest.mark.parametrize("accept", ["image/png", "application/dicom+json", "text/html",
                                    'multipart/related; type="image/jpeg"'])
def test_retrieve_with_an_unsatisfiable_accept_is_406(web, accept):
    study_a, _, _ = _two_studies(web)
    response = web.get(f"{ROOT}/studies/{study_a}", headers={"Accept": accept})
    assert response.status_code == 406


def test_retrieve_paths_naming_nothing_are_404_and_bad_uids_400(web):
    study_a, study_b, sops = _two_studies(web)
    ct = _value(web.get(f"{ROOT}/studies/{study_a}/series").json()[0], "0020000E")
    assert web.get(f"{ROOT}/studies/{generate_uid()}").status_code == 404
    assert web.get(f"{ROOT}/studies/{study_b}/series/{ct}").status_code == 404
    assert web.get(f"{ROOT}/studies/{study_b}/series/{ct}/instances/{sops[0]}/metadata").status_code == 404
    assert web.get(f"{ROOT}/studies/1.2.x3").status_code == 400
    assert web.get(f"{ROOT}/studies/{'1' * 65}/metadata").status_code == 400


def test_retrieve_with_a_stored_file_gone_is_404_before_any_byte(web):
    study_a, _, sops = _two_studies(web)
    ct = _value(web.get(f"{ROOT}/studies/{study_a}/series").json()[0], "0020000E")
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    with database.connection_context():
        from db.models import Instance

        row = Instance.get(Instance.sop_instance_uid == sops[1])
    (web.settings.data_dir / row.path).unlink()
    gone = web.get(f"{ROOT}/studies/{study_a}/series/{ct}", headers=accept)
    assert gone.status_code == 404 and f"1 instance(s) are missing from storage, first {sops[1]}" in gone.text
    assert web.get(f"{ROOT}/studies/{study_a}/series/{ct}/instances/{sops[0]}", headers=accept).status_code == 200
    with database.connection_context():
        Instance.update(path="../" * 6 + "etc/passwd").where(Instance.sop_instance_uid == sops[0]).execute()
    outside = web.get(f"{ROOT}/studies/{study_a}/series/{ct}/instances/{sops[0]}", headers=accept)
    assert outside.status_code == 404 and "not available" in outside.text


def _instance_url(ds) -> str:  # noqa: ANN001
    return f"{ROOT}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def _multiframe(frames: int = 3):  # noqa: ANN202
    ds = make_dataset(rows=8, columns=8)
    ds.NumberOfFrames = frames
    pixels = np.arange(frames * 64, dtype=np.uint16).reshape(frames, 8, 8) * 7
    ds.PixelData = pixels.tobytes()
    return ds, pixels


def test_frames_are_the_recorded_pixel_bytes_in_the_order_asked(web):
    ds, pixels = _multiframe()
    web.ingest(ds)
    response = web.get(f"{_instance_url(ds)}/frames/3,1")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith('multipart/related; type="application/octet-stream"')
    parts = _parts(response)
    assert [h for h, _ in parts] == [b"Content-Type: application/octet-stream; "
                                     b"transfer-syntax=1.2.840.10008.1.2.1"] * 2
    assert [d for _, d in parts] == [pixels[2].tobytes(), pixels[0].tobytes()]


def test_compressed_frames_as_stored_or_decoded(web):
    ds = _rle_dataset()
    web.ingest(ds)
    raw = dcmread(io.BytesIO(part10_bytes(ds)))
    from pydicom.encaps import generate_frames

    fragment = next(generate_frames(raw.PixelData, number_of_frames=1))
    as_stored = web.get(f"{_instance_url(ds)}/frames/1", headers={
        "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"})
    [(head, data)] = _parts(as_stored)
    assert head.endswith(b"transfer-syntax=1.2.840.10008.1.2.5") and data == fragment
    rle = _parts(web.get(f"{_instance_url(ds)}/frames/1",
                         headers={"Accept": 'multipart/related; type="image/dicom-rle"'}))
    assert rle[0][0] == b"Content-Type: image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"
    decoded = _parts(web.get(f"{_instance_url(ds)}/frames/1",
                             headers={"Accept": 'multipart/related; type="application/octet-stream"'}))
    assert decoded[0][1] == np.arange(256, dtype="<u2").tobytes()
    jpeg = web.get(f"{_instance_url(ds)}/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert jpeg.status_code == 406


@pytest.mark.parametrize("frames, status", [("4", 404), ("0", 400), ("1,x", 400), ("", 404)])
def test_bad_frame_lists(web, frames, status):
    ds, _ = _multiframe()
    web.ingest(ds)
    assert web.get(f"{_instance_url(ds)}/frames/{frames}").status_code == status


def test_bulkdata_of_pixel_data_is_the_stored_frames(web):
    ds, pixels = _multiframe(2)
    web.ingest(ds)
    parts = _parts(web.get(f"{_instance_url(ds)}/bulkdata/7FE00010"))
    assert b"".join(d for _, d in parts) == pixels.tobytes()


def test_rendered_and_thumbnails(web):
    from PIL import Image

    ds, _ = _multiframe(3)
    web.ingest(ds)
    url = _instance_url(ds)
    jpeg = web.get(f"{url}/rendered", headers={"Accept": "image/jpeg"})
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (8, 8)
    png = web.get(f"{url}/frames/2/rendered", params={"window": "100,200,LINEAR", "viewport": "4,4"},
                  headers={"Accept": "image/png"})
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (4, 4)
    for thumb in (f"{url}/thumbnail", f"{ROOT}/studies/{ds.StudyInstanceUID}/thumbnail",
                  f"{ROOT}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/thumbnail"):
        response = web.get(thumb)
        assert response.status_code == 200 and response.content[:2] == b"\xff\xd8", thumb
    assert web.get(f"{url}/rendered", params={"window": "40"}).status_code == 400
    assert web.get(f"{url}/rendered", params={"viewport": "0,0"}).status_code == 400
    assert web.get(f"{url}/rendered", headers={"Accept": "image/gif"}).status_code == 406


# --- DICOM JSON ----------------------------------------------------------------------------

def test_metadata_is_dicom_json_in_tag_order_with_bulk_data_uris(web):
    ds, _ = _multiframe(2)
    ds.add_new(0x00091010, "OB", b"\x01\x02\x03\x04")  # private, small: InlineBinary
    ds.add_new(0x00090010, "LO", "ACME")
    ds.IconImageSequence = []
    ds.ImageComments = ""
    web.ingest(ds)
    response = web.get(f"{_instance_url(ds)}/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    [meta] = response.json()
    assert list(meta) == sorted(meta)
    assert all(re.fullmatch(r"[0-9A-F]{8}", k) and "vr" in v for k, v in meta.items())
    assert meta["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]}
    assert meta["00280008"]["Value"] == [2]  # IS as a number
    assert meta["00204000"] == {"vr": "LT"}  # empty: no Value
    assert meta["00091010"] == {"vr": "OB", "InlineBinary": "AQIDBA=="}
    pixel = meta["7FE00010"]
    assert pixel["vr"] == "OW" and pixel["BulkDataURI"].startswith("http")
    assert pixel["BulkDataURI"].endswith(f"{_instance_url(ds)}/bulkdata/7FE00010")
    assert not any(k.startswith("0002") for k in meta)
    series = web.get(f"{ROOT}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata")
    study = web.get(f"{ROOT}/studies/{ds.StudyInstanceUID}/metadata")
    assert series.json() == study.json() == [meta]


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
def test_names_are_decoded_from_their_character_set(web, charset):
    ds = make_dataset(patient_name="MÜLLER^JÜRGEN", charset=charset)
    ds.StudyDescription = "Schädel"
    web.ingest(ds)
    stored = _stored_file(web, ds.SOPInstanceUID)
    encoded = "MÜLLER^JÜRGEN".encode("latin-1" if charset == "ISO_IR 100" else "utf-8")
    assert encoded in stored
    [meta] = web.get(f"{_instance_url(ds)}/metadata").json()
    assert meta["00100010"]["Value"] == [{"Alphabetic": "MÜLLER^JÜRGEN"}]
    assert meta["00081030"]["Value"] == ["Schädel"]
    [found] = web.get(f"{ROOT}/studies", params={"PatientName": "müller*"}).json()
    assert found["00100010"]["Value"] == [{"Alphabetic": "MÜLLER^JÜRGEN"}]
    assert found["00080005"]["Value"] == ["ISO_IR 192"]


def test_person_name_groups(web):
    ds = make_dataset(patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう", charset=["", "ISO 2022 IR 87"])
    ds.SpecificCharacterSet = "ISO_IR 192"
    web.ingest(ds)
    [meta] = web.get(f"{_instance_url(ds)}/metadata").json()
    assert meta["00100010"]["Value"] == [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎",
                                          "Phonetic": "やまだ^たろう"}]


# --- STOW-RS -------------------------------------------------------------------------------

def _multipart(*parts: bytes, boundary: str = "XbOuNdArY", part_type: str = "application/dicom",
               closed: bool = True) -> bytes:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: " + part_type.encode()
                    + b"\r\n\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + boundary.encode() + b"--\r\n" if closed else b"")


def _stow(web, body: bytes, url: str = f"{ROOT}/studies", user: str = "sender", role: str = "uploader",
          content_type: str = 'multipart/related; type="application/dicom"; boundary=XbOuNdArY'):  # noqa: ANN001, ANN202
    headers = {**web.headers(user, role), "Content-Type": content_type, **JSON}
    return web.client.post(url, content=body, headers=headers)


def _stored_count(web) -> int:  # noqa: ANN001
    with database.connection_context():
        from db.models import Instance

        return Instance.select().count()


def _spool_left(web) -> list:  # noqa: ANN001
    return list((web.settings.data_dir / "tmp").glob("stow-*"))


def test_stow_stores_every_part_and_qido_finds_them(web):
    study = generate_uid()
    datasets = [make_dataset(study_uid=study, instance_number=i) for i in (1, 2, 3)]
    response = _stow(web, _multipart(*(part10_bytes(ds) for ds in datasets)))
    assert response.status_code == 200, response.text
    result = response.json()
    assert "00081198" not in result
    referenced = result["00081199"]["Value"]
    assert [_value(r, "00081155") for r in referenced] == [ds.SOPInstanceUID for ds in datasets]
    assert _value(referenced[0], "00081150") == datasets[0].SOPClassUID
    assert _value(result, "00081190").endswith(f"/studies/{study}")
    found = web.get(f"{ROOT}/studies/{study}/instances").json()
    assert {_value(i, "00080018") for i in found} == {ds.SOPInstanceUID for ds in datasets}
    assert _spool_left(web) == []
    with database.connection_context():
        assert any(e.action == "dicomweb-store" for e in accounts.iter_audit(study))


def test_stow_to_a_study_refuses_parts_of_another_study(web):
    study = generate_uid()
    good, other = make_dataset(study_uid=study), make_dataset()
    response = _stow(web, _multipart(part10_bytes(good), part10_bytes(other)),
                     url=f"{ROOT}/studies/{study}")
    assert response.status_code == 202
    [failed] = response.json()["00081198"]["Value"]
    assert _value(failed, "00081155") == other.SOPInstanceUID and _value(failed, "00081197") == 0xA900
    assert [_value(r, "00081155") for r in response.json()["00081199"]["Value"]] == [good.SOPInstanceUID]
    assert web.get(f"{ROOT}/studies/{other.StudyInstanceUID}").status_code == 404


def test_stow_of_non_dicom_parts_only_is_409(web):
    response = _stow(web, _multipart(b"hello, not DICOM", b"\x00" * 200))
    assert response.status_code == 409
    reasons = [_value(f, "00081197") for f in response.json()["00081198"]["Value"]]
    assert reasons == [0xC000, 0xC000] and "DICM" in response.headers["warning"]
    assert _stored_count(web) == 0


def test_stow_of_a_truncated_dicom_part_fails_that_part_only(web):
    good, cut = make_dataset(rows=64, columns=64), make_dataset()
    response = _stow(web, _multipart(part10_bytes(good), part10_bytes(cut)[:300]))
    assert response.status_code == 202
    assert _stored_count(web) == 1


@pytest.mark.parametrize("body, content_type, status", [
    (_multipart(b"x", closed=False), None, 400),                         # no closing delimiter
    (_multipart(b"x", boundary="other"), None, 400),                      # wrong boundary
    (b"--XbOuNdArY\r\nContent-Type: application/dicom\r\nno blank line", None, 400),
    (b"", None, 400),
    (_multipart(b"x", part_type="text/plain"), None, 415),
    (_multipart(b"x"), "application/dicom", 415),
    (_multipart(b"x"), 'multipart/related; type="application/dicom+json"; boundary=XbOuNdArY', 415),
    (_multipart(b"x"), 'multipart/related; type="application/dicom"', 400),  # no boundary
])
def test_malformed_stow_requests_store_nothing(web, body, content_type, status):
    ds = make_dataset()
    good = part10_bytes(ds)
    if body.startswith(b"--XbOuNdArY") and b"x" in body:  # put a storable part in front
        body = body.replace(b"--XbOuNdArY\r\n", b"--XbOuNdArY\r\nContent-Type: application/dicom\r\n\r\n"
                            + good + b"\r\n--XbOuNdArY\r\n", 1)
    kwargs = {"content_type": content_type} if content_type else {}
    response = _stow(web, body, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert _stored_count(web) == 0 and _spool_left(web) == []
    assert web.get(f"{ROOT}/studies").status_code == 200  # still serving


def test_stow_over_the_size_cap_is_413_and_stores_nothing(make_settings):
    for world in _world(make_settings, dicomweb={"max_stow_bytes": 2000}):
        body = _multipart(part10_bytes(make_dataset(rows=64, columns=64)))
        assert len(body) > 2000
        assert _stow(world, body).status_code == 413

        def chunks():  # noqa: ANN202 - no Content-Length: counted while streaming
            yield body[:1500]
            yield body[1500:]

        headers = {**world.headers("sender", "uploader"),
                   "Content-Type": 'multipart/related; type="application/dicom"; boundary=XbOuNdArY'}
        streamed = world.client.post(f"{ROOT}/studies", content=chunks(), headers=headers)
        assert streamed.status_code == 413
        assert _stored_count(world) == 0 and _spool_left(world) == []


def test_stow_needs_the_upload_role(web):
    body = _multipart(part10_bytes(make_dataset()))
    assert _stow(web, body, user="reader", role="viewer").status_code == 403
    anonymous = web.client.post(f"{ROOT}/studies", content=body, headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=XbOuNdArY'})
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    assert _stored_count(web) == 0


# --- WADO-URI, access, capabilities ------------------------------------------------------------

def test_wado_uri_file_and_picture(web):
    from PIL import Image

    ds = make_dataset(rows=32, columns=32)
    web.ingest(ds)
    params = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID,
              "seriesUID": ds.SeriesInstanceUID, "objectUID": ds.SOPInstanceUID}
    file = web.get(f"{ROOT}/wado", params={**params, "contentType": "application/dicom"})
    assert file.status_code == 200 and file.content == _stored_file(web, ds.SOPInstanceUID)
    jpeg = web.get(f"{ROOT}/wado", params={**params, "rows": 16, "windowCenter": 0, "windowWidth": 100})
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (16, 16)
    assert web.get(f"{ROOT}/wado", params={**params, "requestType": "X"}).status_code == 400
    assert web.get(f"{ROOT}/wado", params={**params, "objectUID": "1.2.x"}).status_code == 400
    assert web.get(f"{ROOT}/wado", params={**params, "objectUID": generate_uid()}).status_code == 404
    assert web.get(f"{ROOT}/wado", params={**params, "contentType": "video/mp4"}).status_code == 406


def test_reads_need_a_token_unless_anonymous_reads_are_on(web, make_settings):
    _two_studies(web)
    refused = web.client.get(f"{ROOT}/studies")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert web.get(f"{ROOT}/studies", user="viewer2").status_code == 200
    uploader = web.client.get(f"{ROOT}/studies", headers=web.headers("sender", "uploader"))
    assert uploader.status_code == 403
    bad = web.client.get(f"{ROOT}/studies", headers={"Authorization": "Bearer nonsense"})
    assert bad.status_code == 401


def test_anonymous_reads_when_configured(make_settings):
    for world in _world(make_settings, dicomweb={"anonymous_read": True}):
        study_a, _, _ = _two_studies(world)
        assert len(world.client.get(f"{ROOT}/studies").json()) == 2
        assert world.client.get(f"{ROOT}/studies/{study_a}/metadata").status_code == 200
        with database.connection_context():
            assert [e.username for e in accounts.iter_audit(study_a)] == ["anonymous"]
        stow = world.client.post(f"{ROOT}/studies", content=_multipart(part10_bytes(make_dataset())),
                                 headers={"Content-Type": 'multipart/related; type="application/dicom"; '
                                                          "boundary=XbOuNdArY"})
        assert stow.status_code == 401


def test_reads_are_audited(web):
    study_a, _, sops = _two_studies(web)
    web.get(f"{ROOT}/studies/{study_a}/metadata")
    web.get(f"{ROOT}/studies/{study_a}")
    with database.connection_context():
        actions = {(e.username, e.action) for e in accounts.iter_audit(study_a)}
    assert {("reader", "dicomweb-metadata"), ("reader", "dicomweb-retrieve")} <= actions


def test_capabilities_describe_the_service(web):
    response = web.client.get(f"{ROOT}/")
    assert response.status_code == 200
    caps = response.json()
    assert caps["root"].endswith(ROOT) and "/studies" in caps["qido-rs"]["resources"]
    assert caps["anonymousRead"] is False and "PatientName" in caps["qido-rs"]["keys"]["STUDY"]


def test_frames_carry_a_strong_etag(web):
    ds, _ = _multiframe(2)
    web.ingest(ds)
    first = web.get(f"{_instance_url(ds)}/frames/1")
    again = web.get(f"{_instance_url(ds)}/frames/1", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert web.get(f"{_instance_url(ds)}/frames/2").headers["etag"] != first.headers["etag"]


def test_bulk_data_uris_of_other_elements_read_back(web):
    from pydicom.dataset import Dataset

    ds = make_dataset()
    ds.add_new(0x00091010, "OB", bytes(range(256)) * 8)  # 2 KiB: a BulkDataURI
    ds.add_new(0x00090010, "LO", "ACME")
    item = Dataset()
    item.add_new(0x00091010, "OB", b"\x07" * 1500)
    item.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091011, "SQ", [item])
    web.ingest(ds)
    [meta] = web.get(f"{_instance_url(ds)}/metadata").json()
    top = meta["00091010"]["BulkDataURI"]
    nested = meta["00091011"]["Value"][0]["00091010"]["BulkDataURI"]
    assert nested.endswith("/bulkdata/00091011/0/00091010")
    [(head, data)] = _parts(web.get(top[top.index(ROOT):]))
    assert head.startswith(b"Content-Type: application/octet-stream") and data == bytes(range(256)) * 8
    [(_, data)] = _parts(web.get(nested[nested.index(ROOT):]))
    assert data == b"\x07" * 1500
    assert web.get(f"{_instance_url(ds)}/bulkdata/00100010").status_code == 404  # not binary
    assert web.get(f"{_instance_url(ds)}/bulkdata/00091099").status_code == 404


def test_single_part_instance_and_frame(web):
    ds, pixels = _multiframe(2)
    web.ingest(ds)
    one = web.get(_instance_url(ds), headers={"Accept": "application/dicom"})
    assert one.status_code == 200 and one.headers["content-type"].startswith("application/dicom")
    assert one.content == _stored_file(web, ds.SOPInstanceUID)
    frame = web.get(f"{_instance_url(ds)}/frames/2", headers={"Accept": "application/octet-stream"})
    assert frame.content == pixels[1].tobytes()
    assert web.get(f"{_instance_url(ds)}/frames/1,2",
                   headers={"Accept": "application/octet-stream"}).status_code == 406
    study = web.get(f"{ROOT}/studies/{ds.StudyInstanceUID}", headers={"Accept": "application/dicom"})
    assert study.status_code == 200  # one instance in the study: a single part will do


def test_retrieve_as_stored_announces_its_length(web):
    study_a, _, _ = _two_studies(web)
    ds = _rle_dataset(study_uid=study_a)
    web.ingest(ds)
    stored = web.get(f"{ROOT}/studies/{study_a}", headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert int(stored.headers["content-length"]) == len(stored.content) and len(_parts(stored)) == 5
    converted = web.get(f"{ROOT}/studies/{study_a}", headers={
        "Accept": 'multipart/related; type="application/dicom"'})
    assert "content-length" not in converted.headers and len(_parts(converted)) == 5


@pytest.mark.parametrize("block", [1, 5, 7, 64, 1 << 20])
def test_stored_blocks_are_the_heads_files_and_tail_in_order(tmp_path, block):
    from web.dicomweb.streaming import stored_blocks, stored_length

    contents = [bytes(range(256)) * 3, b"", b"x" * 13, bytes(range(50))]
    paths = []
    for i, data in enumerate(contents):
        (path := tmp_path / f"{i}.dcm").write_bytes(data)
        paths.append(path)
    heads = [b"", b"--b\r\nhead 1\r\n\r\n", b"\r\n--b\r\n\r\n", b"h"]
    sizes = [len(c) for c in contents]
    blocks = list(stored_blocks(heads, paths, sizes, b"\r\n--b--\r\n", block))
    expected = b"".join(h + c for h, c in zip(heads, contents)) + b"\r\n--b--\r\n"
    assert b"".join(blocks) == expected and stored_length(heads, sizes, b"\r\n--b--\r\n") == len(expected)
    assert all(len(b) == block for b in blocks[:-1]) and 0 < len(blocks[-1]) <= block


def test_stored_blocks_fail_when_a_file_changed_size(tmp_path):
    from web.dicomweb.streaming import stored_blocks

    (path := tmp_path / "a.dcm").write_bytes(b"abcdef")
    with pytest.raises(OSError, match="shorter"):
        list(stored_blocks([b"h"], [path], [8], b"t", 4))
    with pytest.raises(OSError, match="longer"):
        list(stored_blocks([b"h"], [path], [4], b"t", 4))
    assert list(stored_blocks([b""], [path], [6], b"")) == [b"abcdef"]
