"""HTTP API listings, instance metadata, frames and files, against datasets ingested in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread, examples
from pydicom.encaps import generate_frames
from pydicom.uid import RLELossless, generate_uid

from db import accounts
from db.models import database
from tests.helpers import make_dataset
from tests.web_support import web  # noqa: F401 - fixture

STUDY = generate_uid()
CT_SERIES, MR_SERIES = generate_uid(), generate_uid()


def _study(world) -> dict[str, list]:
    """A CT series (number 2, five images stored out of order) and an MR series (number 1)."""
    ct = [make_dataset(study_uid=STUDY, series_uid=CT_SERIES, series_number=2, instance_number=n)
          for n in (3, 1, 5, 2, 4)]
    mr = [make_dataset(study_uid=STUDY, series_uid=MR_SERIES, series_number=1, modality="MR",
                       instance_number=n) for n in (2, 1, 3)]
    world.ingest(*ct, *mr)
    by_number = lambda items: sorted(items, key=lambda ds: ds.InstanceNumber)  # noqa: E731
    return {"ct": by_number(ct), "mr": by_number(mr)}


def _multiframe(frames: int = 3, **kwargs) -> object:
    ds = make_dataset(rows=8, columns=8, **kwargs)
    ds.NumberOfFrames = frames
    ds.PixelData = (np.arange(frames * 64, dtype=np.uint16) * 7).tobytes()
    return ds


# --- listings --------------------------------------------------------------------------------

def test_study_listing_filters_through_the_translator(web):
    _study(web)
    web.ingest(make_dataset(patient_id="P2", patient_name="SMITH^ANNA", study_date="20210115"),
               make_dataset(patient_id="P3", patient_name="SMYTHE^BOB", study_date="20220101"))
    everything = web.get("/api/pacs/studies/").json()
    assert everything["total"] == 3 and len(everything["studies"]) == 3
    found = web.get("/api/pacs/studies/", params={"PatientName": "smi*",
                                                  "StudyDate": "20210101-20210131"}).json()
    assert [s["patientName"] for s in found["studies"]] == ["SMITH^ANNA"]
    ours = web.get("/api/pacs/studies/", params={"ModalitiesInStudy": "MR"}).json()["studies"]
    assert [s["studyUid"] for s in ours] == [STUDY]
    assert ours[0]["modalitiesInStudy"] == ["CT", "MR"]
    assert ours[0]["numberOfSeries"] == 2 and ours[0]["numberOfInstances"] == 8
    assert ours[0]["seriesUrl"] == f"/api/pacs/studies/{STUDY}/series/"


def test_study_listing_pages_with_limit_and_offset(web):
    web.ingest(*[make_dataset(patient_id=f"P{i}", study_date=f"2020010{i}") for i in range(1, 6)])
    first = web.get("/api/pacs/studies/", params={"limit": 2}).json()
    second = web.get("/api/pacs/studies/", params={"limit": 2, "offset": 2}).json()
    assert first["total"] == second["total"] == 5
    dates = [s["studyDate"] for s in first["studies"] + second["studies"]]
    assert dates == ["20200105", "20200104", "20200103", "20200102"]


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "100000"}, {"limit": "x"},
                                    {"offset": "-1"}, {"Nonsense": "1"}, {"StudyDate": "2021"},
                                    {"SeriesInstanceUID": "1.2"}])
def test_study_listing_rejects_bad_parameters(web, params):
    response = web.get("/api/pacs/studies/", params=params)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"


def test_series_listing_is_the_thumbnail_strip(web):
    images = _study(web)
    body = web.get(f"/api/pacs/studies/{STUDY}/series/").json()
    assert [s["seriesUid"] for s in body["series"]] == [MR_SERIES, CT_SERIES]  # series number order
    mr, ct = body["series"]
    assert set(ct) == {"seriesUid", "seriesNumber", "seriesDescription", "modality", "imageCount",
                       "firstImageUrl", "thumbnailUrl"}
    assert (ct["seriesNumber"], ct["modality"], ct["imageCount"]) == (2, "CT", 5)
    assert ct["firstImageUrl"] == f"/api/pacs/instances/{images['ct'][0].SOPInstanceUID}/frames/1"
    assert ct["thumbnailUrl"] == f"/api/pacs/instances/{images['ct'][2].SOPInstanceUID}/thumbnail"
    assert mr["thumbnailUrl"] == f"/api/pacs/instances/{images['mr'][1].SOPInstanceUID}/thumbnail"
    thumb = web.get(ct["thumbnailUrl"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def test_series_listing_of_an_unknown_study_is_404(web):
    assert web.get(f"/api/pacs/studies/{generate_uid()}/series/").status_code == 404


def test_bulk_images_page_in_instance_number_order(web):
    images = _study(web)
    url = f"/api/pacs/studies/{STUDY}/series/{CT_SERIES}/images/bulk"
    first = web.get(url, params={"start": 0, "count": 2}).json()
    assert first["totalImages"] == 5 and first["hasMore"] is True
    assert first["images"][0] == {
        "imageNumber": 1, "instanceUid": images["ct"][0].SOPInstanceUID, "frameNumber": 1,
        "imageUrl": f"/api/pacs/instances/{images['ct'][0].SOPInstanceUID}/frames/1"}
    rest = web.get(url, params={"start": 2, "count": 50}).json()
    assert rest["hasMore"] is False
    uids = [i["instanceUid"] for i in first["images"] + rest["images"]]
    assert uids == [ds.SOPInstanceUID for ds in images["ct"]]
    assert [i["imageNumber"] for i in rest["images"]] == [3, 4, 5]


def test_bulk_images_order_by_slice_position_when_numbers_tie(web):
    series = generate_uid()
    datasets = [make_dataset(study_uid=STUDY, series_uid=series, instance_number=1, SliceLocation=z)
                for z in (30.0, 10.0, 20.0)]
    web.ingest(*datasets)
    body = web.get(f"/api/pacs/studies/{STUDY}/series/{series}/images/bulk").json()
    by_z = sorted(datasets, key=lambda ds: ds.SliceLocation)
    assert [i["instanceUid"] for i in body["images"]] == [ds.SOPInstanceUID for ds in by_z]


def test_bulk_images_list_every_frame_of_a_multiframe_instance(web):
    ds = _multiframe(3, study_uid=STUDY, series_uid=CT_SERIES)
    web.ingest(ds)
    body = web.get(f"/api/pacs/studies/{STUDY}/series/{CT_SERIES}/images/bulk").json()
    assert [(i["instanceUid"], i["frameNumber"]) for i in body["images"]] == \
        [(ds.SOPInstanceUID, n) for n in (1, 2, 3)]


@pytest.mark.parametrize("params", [{"count": "0"}, {"count": "501"}, {"start": "-1"}, {"count": "ten"}])
def test_bulk_images_rejects_bad_paging(web, params):
    _study(web)
    url = f"/api/pacs/studies/{STUDY}/series/{CT_SERIES}/images/bulk"
    assert web.get(url, params=params).status_code == 400


def test_bulk_images_of_a_series_in_another_study_is_404(web):
    _study(web)
    url = f"/api/pacs/studies/{generate_uid()}/series/{CT_SERIES}/images/bulk"
    assert web.get(url).status_code == 404


def test_image_ids_cover_the_study_series_by_series(web):
    images = _study(web)
    body = web.get(f"/api/pacs/studies/{STUDY}/image-ids/").json()
    expected = [f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1" for ds in images["mr"] + images["ct"]]
    assert body == {"imageIds": expected, "total": 8}


def test_study_reads_are_audited(web):
    _study(web)
    web.get(f"/api/pacs/studies/{STUDY}/series/")
    web.get(f"/api/pacs/studies/{STUDY}/image-ids/")
    with database.connection_context():
        entries = [(e.username, e.action, e.address) for e in accounts.iter_audit(STUDY)]
    assert entries == [("reader", "series", "testclient"), ("reader", "image-ids", "testclient")]


# --- instances and frames --------------------------------------------------------------------

def test_instance_metadata_has_what_rendering_needs(web):
    ds = make_dataset(WindowCenter=[40, 400], WindowWidth=[400, 2000], PixelSpacing=[0.5, 0.5])
    web.ingest(ds)
    body = web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/").json()
    assert body["rows"] == 16 and body["columns"] == 16 and body["samplesPerPixel"] == 1
    assert body["photometricInterpretation"] == "MONOCHROME2"
    assert (body["bitsAllocated"], body["bitsStored"], body["pixelRepresentation"]) == (16, 12, 0)
    assert (body["rescaleSlope"], body["rescaleIntercept"]) == (1.0, -1024.0)
    assert body["windowCenter"] == [40.0, 400.0] and body["windowWidth"] == [400.0, 2000.0]
    assert body["pixelSpacing"] == [0.5, 0.5] and body["numberOfFrames"] == 1
    assert body["transferSyntaxUid"] == "1.2.840.10008.1.2.1"


def _stored_path(web, sop_uid: str) -> Path:
    from db.lookups import instance_pixels

    with database.connection_context():
        return web.settings.data_dir / instance_pixels(sop_uid).path


def test_native_frame_is_the_stored_pixel_data(web):
    ds = make_dataset()
    web.ingest(ds)
    response = web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert response.content == dcmread(_stored_path(web, ds.SOPInstanceUID)).PixelData


@pytest.mark.parametrize("source", ["generated", "rt_dose"])
def test_native_multiframe_frames_are_slices_of_pixel_data(web, source):
    if source == "generated":
        ds = _multiframe(4)
        web.ingest(ds)
    else:
        ds = examples.rt_dose
        web.ingestor.ingest_part10(Path(ds.filename).read_bytes())
    stored = dcmread(_stored_path(web, ds.SOPInstanceUID))
    frames = int(stored.NumberOfFrames)
    length = len(stored.PixelData) // frames
    for n in range(1, frames + 1):
        response = web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/{n}")
        assert response.status_code == 200
        assert response.content == stored.PixelData[(n - 1) * length:n * length], f"frame {n}"
    assert web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/{frames + 1}").status_code == 404
    assert web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/0").status_code == 400


def test_encapsulated_frames_are_returned_as_stored(web):
    ds = _multiframe(3)
    ds.compress(RLELossless)
    web.ingest(ds)
    expected = list(generate_frames(ds.PixelData, number_of_frames=3))
    for n, frame in enumerate(expected, start=1):
        response = web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/{n}")
        assert response.headers["content-type"] == "image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"
        assert response.content == frame


def test_encapsulated_jpeg2000_frame_and_its_media_type(web):
    path = Path(examples.jpeg2k.filename)
    web.ingestor.ingest_part10(path.read_bytes())
    ds = dcmread(path)
    response = web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1")
    assert response.headers["content-type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
    assert response.content == next(generate_frames(ds.PixelData, number_of_frames=1))


def test_decode_returns_little_endian_pixels(web):
    ds = _multiframe(3)
    raw = ds.PixelData
    ds.compress(RLELossless)
    web.ingest(ds)
    response = web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/2", params={"decode": 1})
    assert response.headers["content-type"].endswith("transfer-syntax=1.2.840.10008.1.2.1")
    assert response.content == raw[128:256]


def test_frames_carry_a_strong_etag_and_answer_304(web):
    ds = make_dataset()
    web.ingest(ds)
    url = f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1"
    first = web.get(url)
    etag = first.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert first.headers["cache-control"] == "private, max-age=86400, immutable"
    again = web.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert web.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    other_frame = web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1", params={"decode": 1})
    assert other_frame.headers["etag"] != etag


def test_the_stored_file_is_returned_byte_for_byte(web):
    ds = make_dataset()
    web.ingest(ds)
    url = f"/api/pacs/instances/{ds.SOPInstanceUID}/file"
    response = web.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
    assert response.content == _stored_path(web, ds.SOPInstanceUID).read_bytes()
    assert web.get(url, headers={"If-None-Match": response.headers["etag"]}).status_code == 304
    with database.connection_context():
        assert [e.action for e in accounts.iter_audit(ds.StudyInstanceUID)] == ["file", "file"]


def test_instance_without_pixels_has_no_frames(web):
    ds = make_dataset()
    del ds.PixelData
    web.ingest(ds)
    assert web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1").status_code == 404
    assert web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/thumbnail").status_code == 404


@pytest.mark.parametrize("url", [
    "/api/pacs/instances/..%2F..%2F..%2Fetc%2Fpasswd/file",
    "/api/pacs/instances/..%2F..%2Fjwt-secret/file",
    "/api/pacs/instances/%2E%2E/file",
    "/api/pacs/instances/1.2.3%2F..%2F..%2Fcatalogue.sqlite/frames/1",
    "/api/pacs/instances/..%5C..%5Cjwt-secret/file",
    "/api/pacs/instances/1.2.abc/frames/1",
    "/api/pacs/instances/" + "1." * 40 + "1/frames/1",
    "/api/pacs/studies/1.2.3;rm/series/",
])
def test_path_traversal_and_malformed_uids_never_reach_the_disk(web, url):
    response = web.get(url)
    assert response.status_code in (400, 404), response.text
    assert b"DICM" not in response.content and b"root:" not in response.content
    if response.status_code == 400:
        assert response.headers["content-type"] == "application/problem+json"


def test_unknown_instance_is_404(web):
    assert web.get(f"/api/pacs/instances/{generate_uid()}/").status_code == 404


def test_deflated_files_have_their_frames_decoded(web):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _multiframe(2)
    raw = ds.PixelData
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    web.ingest(ds)
    response = web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/2")
    assert response.status_code == 200
    assert response.headers["content-type"].endswith("transfer-syntax=1.2.840.10008.1.2.1")
    assert response.content == raw[128:]


def test_a_replaced_instance_is_served_from_its_new_file(make_settings):
    from tests.web_support import build_world

    for world in build_world(make_settings, dicom={"duplicate_policy": "overwrite"}):
        ds = make_dataset()
        world.ingest(ds)
        url = f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1"
        first = world.get(url)
        ds.PixelData = bytes(len(ds.PixelData))
        world.ingest(ds)
        second = world.get(url)
        assert second.status_code == 200 and second.content == ds.PixelData
        assert second.headers["etag"] != first.headers["etag"]


def test_large_files_are_streamed_with_range_support(web, monkeypatch):
    monkeypatch.setattr("web.instances.SMALL_FILE", 0)
    ds = make_dataset()
    web.ingest(ds)
    url = f"/api/pacs/instances/{ds.SOPInstanceUID}/file"
    stored = _stored_path(web, ds.SOPInstanceUID).read_bytes()
    assert web.get(url).content == stored
    part = web.get(url, headers={"Range": "bytes=128-131"})
    assert part.status_code == 206 and part.content == b"DICM"
