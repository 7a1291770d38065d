"""C-FIND SCU and ``node query`` against Orthanc (a config of the test's own, free ports)."""

from __future__ import annotations

import io
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from bench.harness import ORTHANC_BINARY, OrthancPeer, start_orthanc
from scu.association import remote_named
from scu.errors import RemoteStatusError
from scu.find import build_identifier, parse_key, query_remote
from tests.helpers import make_dataset, run_cli, write_config

pytestmark = pytest.mark.skipif(not Path(ORTHANC_BINARY).exists() or not shutil.which("echoscu"),
                                reason="Orthanc or DCMTK not installed")


class OrthancArchive:
    """A running Orthanc used as a remote archive."""

    def __init__(self, peer: OrthancPeer) -> None:
        self.peer = peer
        self.ae_title = peer.ae_title
        self.port = peer.port

    def upload(self, datasets: list) -> None:
        for ds in datasets:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            request = urllib.request.Request(self.peer.base_url + "/instances", data=buf.getvalue(),
                                             method="POST")
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200

    def add_modality(self, ae_title: str, port: int, host: str = "127.0.0.1") -> None:
        """Tell Orthanc where an AE title listens (the C-MOVE destinations it knows)."""
        body = json.dumps({"AET": ae_title, "Host": host, "Port": port}).encode()
        request = urllib.request.Request(f"{self.peer.base_url}/modalities/{ae_title}", data=body,
                                         method="PUT")
        with urllib.request.urlopen(request, timeout=30):
            pass

    def remove_modality(self, ae_title: str) -> None:
        request = urllib.request.Request(f"{self.peer.base_url}/modalities/{ae_title}", method="DELETE")
        with urllib.request.urlopen(request, timeout=30):
            pass

    def remotes(self) -> dict:
        return {self.ae_title: {"host": "127.0.0.1", "port": self.port}}


def orthanc_archive(folder: Path) -> Iterator[OrthancArchive]:
    """Orthanc answering any caller; a C-MOVE destination must still be one of its
    DicomModalities: PACSNODE is known from the start, a test sets its port (``add_modality``)."""
    allow_any = {"DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True, "DicomAlwaysAllowGet": True}
    with start_orthanc(folder, ae_title="ORTHANC", timeout=30, extra_config=allow_any) as peer:
        archive = OrthancArchive(peer)
        archive.add_modality("PACSNODE", 104)
        yield archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Iterator[OrthancArchive]:
    """Orthanc holding two patients: P1 with a CT and an MR study, P2 with one CT study."""
    yield from orthanc_archive(tmp_path_factory.mktemp("orthanc"))


@pytest.fixture(scope="module")
def studies(archive: OrthancArchive) -> dict[str, list]:
    made: dict[str, list] = {}
    for name, patient, date, modality, count in (("ct1", "P1", "20240102", "CT", 3),
                                                 ("mr1", "P1", "20240301", "MR", 2),
                                                 ("ct2", "P2", "20231231", "CT", 1)):
        first = make_dataset(patient_id=patient, patient_name=f"PATIENT^{patient}",
                             study_date=date, modality=modality)
        made[name] = [make_dataset(patient_id=patient, patient_name=f"PATIENT^{patient}",
                                   study_date=date, modality=modality,
                                   study_uid=first.StudyInstanceUID,
                                   series_uid=first.SeriesInstanceUID, instance_number=n)
                      for n in range(1, count + 1)]
        archive.upload(made[name])
    return made


def test_parse_key_and_identifier() -> None:
    assert parse_key("StudyDate=20240101-") == ("StudyDate", "20240101-")
    with pytest.raises(ValueError):
        parse_key("NoSuchKeyword=1")
    with pytest.raises(ValueError):
        parse_key("PatientID")
    ds = build_identifier("STUDY", [("PatientID", "P1")], ["StudyInstanceUID", "NumberOfStudyRelatedInstances"])
    assert ds.QueryRetrieveLevel == "STUDY" and ds.PatientID == "P1"
    assert ds.StudyInstanceUID in (None, "") and "NumberOfStudyRelatedInstances" in ds


def test_query_remote_study_series_image(make_settings, archive, studies) -> None:
    settings = make_settings(remotes=archive.remotes())
    remote = remote_named(settings, "ORTHANC")
    rows = query_remote(settings, remote, "STUDY", [("PatientID", "P1")])
    assert {r["StudyInstanceUID"] for r in rows} == {str(studies["ct1"][0].StudyInstanceUID),
                                                     str(studies["mr1"][0].StudyInstanceUID)}
    ranged = query_remote(settings, remote, "STUDY", [("StudyDate", "20240101-")])
    assert {r["PatientID"] for r in ranged} == {"P1"} and len(ranged) == 2
    series = query_remote(settings, remote, "SERIES",
                          [("StudyInstanceUID", str(studies["ct1"][0].StudyInstanceUID))])
    assert [(r["Modality"], r["NumberOfSeriesRelatedInstances"]) for r in series] == [("CT", "3")]
    images = query_remote(settings, remote, "IMAGE",
                          [("StudyInstanceUID", str(studies["ct1"][0].StudyInstanceUID)),
                           ("SeriesInstanceUID", str(studies["ct1"][0].SeriesInstanceUID))])
    assert sorted(r["SOPInstanceUID"] for r in images) == sorted(
        str(ds.SOPInstanceUID) for ds in studies["ct1"])
    patients = query_remote(settings, remote, "PATIENT", [("PatientID", "P*")])
    assert sorted(r["PatientID"] for r in patients) == ["P1", "P2"]


def test_query_command_table_and_json(tmp_path: Path, archive, studies) -> None:
    config = write_config(tmp_path, extra=f'[remotes.ORTHANC]\nhost = "127.0.0.1"\nport = {archive.port}')
    table = run_cli(config, "query", "--remote", "ORTHANC", "--level", "STUDY", "-k", "PatientID=P2")
    assert table.returncode == 0, table.stderr
    assert str(studies["ct2"][0].StudyInstanceUID) in table.stdout
    assert "1 study match(es) on ORTHANC" in table.stdout
    as_json = run_cli(config, "query", "--remote", "ORTHANC", "--level", "series", "-k",
                      f"StudyInstanceUID={studies['mr1'][0].StudyInstanceUID}", "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert [(r["Modality"], r["SeriesInstanceUID"]) for r in rows] == [
        ("MR", str(studies["mr1"][0].SeriesInstanceUID))]
    bad = run_cli(config, "query", "--remote", "ORTHANC", "-k", "Nonsense=1")
    assert bad.returncode == 2 and "DICOM keyword" in bad.stderr
    unknown = run_cli(config, "query", "--remote", "ELSEWHERE")
    assert unknown.returncode == 2 and "known: ORTHANC" in unknown.stderr


def test_remote_failure_status_raises(make_settings, archive, studies) -> None:
    """Orthanc refuses a Patient Root query at STUDY level without a PatientID (C.4.1.2.1)."""
    settings = make_settings(remotes=archive.remotes())
    remote = remote_named(settings, "ORTHANC")
    try:
        rows = query_remote(settings, remote, "IMAGE", [], root="PATIENT")
    except RemoteStatusError as exc:
        assert exc.status & 0xF000 in (0xA000, 0xC000)
    else:  # an archive may also answer leniently; then it must at least answer
        assert isinstance(rows, list)
