"""DICOMweb end to end: the ``dicomweb-client`` library against ``python -m node serve``.

A phantom study (a 16-bit CT series and an 8-bit MR series, UTF-8 names) is stored with
storescu; then the client searches at each level, retrieves studies, series, instances,
metadata, frames (compared with pydicom's PixelData), rendered pictures and bulk data, and
stores a few files with STOW-RS (one RLE-compressed) that QIDO-RS then finds.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless, generate_uid

from tests.helpers import have_dcmtk, make_dataset
from tests.viewer_fixtures import (
    PhantomStudy,
    RunningNode,
    SeriesSpec,
    store_with_storescu,
    viewer_node,
    write_phantom_study,
)

pytestmark = [pytest.mark.dcmtk,
              pytest.mark.skipif(not have_dcmtk(), reason="DCMTK (storescu) is not installed")]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[RunningNode, PhantomStudy]]:
    folder = tmp_path_factory.mktemp("dicomweb-node")
    study = write_phantom_study(folder / "phantom", [
        SeriesSpec(1, "CT AXIAL", slices=4, size=64),
        SeriesSpec(2, "MR T1", modality="MR", slices=2, size=32, bits=8),
    ], patient_name="MÜLLER^JÜRGEN")
    with viewer_node(folder) as node:
        store_with_storescu(node.dimse_port, study.files)
        yield node, study


def _client(node: RunningNode, user: str = "reader") -> DICOMwebClient:
    return DICOMwebClient(url=node.base_url + "dicom-web",
                          headers={"Authorization": f"Bearer {node.token(user)}"})


def _files_by_sop(study: PhantomStudy) -> dict[str, Dataset]:
    return {ds.SOPInstanceUID: ds for ds in (dcmread(path) for path in study.files)}


def test_search_at_each_level(served):
    node, study = served
    client = _client(node)
    [found] = client.search_for_studies(search_filters={"PatientName": "müller*"})
    assert found["0020000D"]["Value"] == [study.study_uid]
    assert found["00100010"]["Value"] == [{"Alphabetic": "MÜLLER^JÜRGEN"}]
    assert found["00201208"]["Value"] == [6] and found["00080061"]["Value"] == ["CT", "MR"]
    assert client.search_for_studies(search_filters={"StudyDate": "19000101-19101231"}) == []
    series = client.search_for_series(study.study_uid)
    assert [s["00080060"]["Value"][0] for s in series] == ["CT", "MR"]
    assert [s["00201209"]["Value"][0] for s in series] == [4, 2]
    [mr] = client.search_for_series(search_filters={"Modality": "MR"}, fields=["SeriesDescription"])
    assert mr["0008103E"]["Value"] == ["MR T1"] and mr["0020000D"]["Value"] == [study.study_uid]
    ct_uid = study.series_uid(1)
    instances = client.search_for_instances(study.study_uid, ct_uid)
    assert [i["00200013"]["Value"][0] for i in instances] == [1, 2, 3, 4]
    assert len(client.search_for_instances(study.study_uid)) == 6
    everywhere = client.search_for_instances(search_filters={"PatientID": study.patient_id}, limit=2, offset=1)
    assert len(everywhere) == 2
    paged = client.search_for_studies(limit=1, get_remaining=True)
    assert len(paged) == 1


def test_retrieve_study_series_and_instance(served):
    node, study = served
    client = _client(node)
    originals = _files_by_sop(study)
    whole = client.retrieve_study(study.study_uid)
    assert {ds.SOPInstanceUID for ds in whole} == set(originals)
    for ds in whole:
        assert ds.PixelData == originals[ds.SOPInstanceUID].PixelData
        assert ds.PatientName == "MÜLLER^JÜRGEN"
    series = client.retrieve_series(study.study_uid, study.series_uid(2))
    assert sorted(ds.InstanceNumber for ds in series) == [1, 2]
    one_uid = series[0].SOPInstanceUID
    one = client.retrieve_instance(study.study_uid, study.series_uid(2), one_uid,
                                   media_types=(("application/dicom", "*"),))
    assert one.SOPInstanceUID == one_uid and one.PixelData == originals[one_uid].PixelData


def test_metadata_at_each_level(served):
    node, study = served
    client = _client(node)
    study_meta = client.retrieve_study_metadata(study.study_uid)
    assert len(study_meta) == 6
    series_meta = client.retrieve_series_metadata(study.study_uid, study.series_uid(1))
    assert len(series_meta) == 4
    sop = series_meta[0]["00080018"]["Value"][0]
    instance_meta = client.retrieve_instance_metadata(study.study_uid, study.series_uid(1), sop)
    ds = Dataset.from_json(instance_meta, bulk_data_uri_handler=lambda *_: b"")
    assert ds.PatientName == "MÜLLER^JÜRGEN" and ds.SOPInstanceUID == sop
    assert list(instance_meta) == sorted(instance_meta)
    assert "BulkDataURI" in instance_meta["7FE00010"], instance_meta["7FE00010"]
    [pixels] = client.retrieve_bulkdata(instance_meta["7FE00010"]["BulkDataURI"])
    assert pixels == _files_by_sop(study)[sop].PixelData


def test_frames_equal_pydicom_pixel_data(served):
    node, study = served
    client = _client(node)
    originals = _files_by_sop(study)
    for sop, ds in originals.items():
        [frame] = client.retrieve_instance_frames(study.study_uid, ds.SeriesInstanceUID, sop, [1])
        assert frame == ds.PixelData
        pixels = np.frombuffer(frame, dtype=ds.pixel_array.dtype).reshape(ds.Rows, ds.Columns)
        assert np.array_equal(pixels, ds.pixel_array)
    typed = client.retrieve_instance_frames(
        study.study_uid, ds.SeriesInstanceUID, sop, [1],
        media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),))
    assert typed == [ds.PixelData]


def test_rendered_pictures(served):
    node, study = served
    client = _client(node)
    ds = next(iter(_files_by_sop(study).values()))
    args = (study.study_uid, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    jpeg = client.retrieve_instance_rendered(*args, media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpeg)).size == (ds.Columns, ds.Rows)
    png = client.retrieve_instance_frames_rendered(*args, [1], media_types=("image/png",),
                                                   params={"window": "40,400", "viewport": "16,16"})
    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert Image.open(io.BytesIO(png)).size == (16, 16)


def test_stow_then_qido_finds_them(served, tmp_path):
    node, _ = served
    study_uid = generate_uid()
    datasets = [make_dataset(study_uid=study_uid, patient_name="STOW^TEST", patient_id="STOW1",
                             instance_number=i, rows=32, columns=32) for i in (1, 2)]
    rle = make_dataset(study_uid=study_uid, patient_name="STOW^TEST", patient_id="STOW1",
                       instance_number=3, rows=32, columns=32)
    values = (np.arange(32 * 32, dtype=np.uint16) % 700).reshape(32, 32)
    rle.compress(RLELossless, values)
    datasets.append(rle)
    sender = _client(node, "sender")
    result = sender.store_instances(datasets)
    referenced = result.ReferencedSOPSequence
    assert [item.ReferencedSOPInstanceUID for item in referenced] == [ds.SOPInstanceUID for ds in datasets]
    assert "FailedSOPSequence" not in result
    reader = _client(node)
    [found] = reader.search_for_studies(search_filters={"PatientID": "STOW1"})
    assert found["00201208"]["Value"] == [3]
    instances = reader.search_for_instances(study_uid)
    assert {i["00080018"]["Value"][0] for i in instances} == {ds.SOPInstanceUID for ds in datasets}
    series_uid = rle.SeriesInstanceUID
    [stored] = reader.retrieve_instance_frames(study_uid, series_uid, rle.SOPInstanceUID, [1],
                                               media_types=(("application/octet-stream", "*"),))
    from pydicom.encaps import generate_frames

    assert stored == next(generate_frames(rle.PixelData, number_of_frames=1))
    [anything] = reader.retrieve_instance_frames(study_uid, series_uid, rle.SOPInstanceUID, [1])
    assert anything == stored  # */*: the stored bytes, no decoding
    [decoded] = reader.retrieve_instance_frames(study_uid, series_uid, rle.SOPInstanceUID, [1],
                                                media_types=("application/octet-stream",))
    assert decoded == values.astype("<u2").tobytes()


def test_stow_with_a_mismatched_study_is_409(served):
    node, _ = served
    sender = _client(node, "sender")
    with pytest.raises(requests.HTTPError) as caught:
        sender.store_instances([make_dataset()], study_instance_uid=generate_uid())
    assert caught.value.response.status_code == 409
    failed = caught.value.response.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xA900]


def test_wado_uri_capabilities_and_tokens(served):
    node, study = served
    ds = next(iter(_files_by_sop(study).values()))
    token = node.token("reader")
    response = requests.get(node.base_url + "dicom-web/wado", timeout=10, params={
        "requestType": "WADO", "studyUID": study.study_uid, "seriesUID": ds.SeriesInstanceUID,
        "objectUID": ds.SOPInstanceUID, "contentType": "application/dicom"},
        headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert dcmread(io.BytesIO(response.content)).PixelData == ds.PixelData
    caps = requests.get(node.base_url + "dicom-web/", timeout=10)
    assert caps.status_code == 200 and "qido-rs" in caps.json()
    anonymous = DICOMwebClient(url=node.base_url + "dicom-web")
    with pytest.raises(requests.HTTPError) as caught:
        anonymous.search_for_studies()
    assert caught.value.response.status_code == 401
    with pytest.raises(requests.HTTPError) as refused:
        _client(node, "sender").search_for_studies()
    assert refused.value.response.status_code == 403


def test_files_are_not_touched_by_retrieval(served):
    """Retrieval streams the stored bytes: the stored files still verify."""
    node, _ = served
    from tests.helpers import run_cli

    result = run_cli(Path(node.config), "verify")
    assert result.returncode == 0, result.stdout + result.stderr
