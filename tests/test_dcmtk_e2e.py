"""DCMTK echoscu and storescu against ``python -m node serve`` run as a subprocess.

DCMTK is the reference implementation most senders resemble; these tests check the
association policy and that what storescu sends is stored byte for byte.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.helpers import (
    catalogue_rows,
    dataset_bytes,
    dcmtk_env,
    echo_ok,
    free_port,
    make_dataset,
    node_process,
    run_storescu,
    sha256_file,
    successful_files,
    wait_until,
    write_dataset,
    write_node_config,
)

pytestmark = pytest.mark.dcmtk

MAX_ASSOCIATIONS = 2


class RunningNode:
    def __init__(self, port: int, data: Path) -> None:
        self.port = port
        self.data = data


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    """One node for the module: known callers only, at most two associations at once."""
    site = tmp_path_factory.mktemp("e2e-node")
    port = free_port()
    config = write_node_config(site, port=port, max_associations=MAX_ASSOCIATIONS,
                          allowed_callers=["ECHOSCU", "STORESCU", "HOLDER"])
    with node_process(config, port):
        yield RunningNode(port, site / "data")


def echoscu(port: int, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-v", "-to", "5", *options, "127.0.0.1", str(port)],
                          capture_output=True, text=True, env=dcmtk_env(), timeout=20)


def test_echoscu(node: RunningNode) -> None:
    result = echoscu(node.port, "-aec", "PACSNODE")
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stderr


def test_wrong_called_ae_title_is_rejected(node: RunningNode) -> None:
    result = echoscu(node.port, "-aec", "SOMEONE")
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr
    assert "Reason: Called AE Title Not Recognized" in result.stderr


def test_caller_not_allowed_is_rejected(node: RunningNode, tmp_path: Path) -> None:
    result = echoscu(node.port, "-aec", "PACSNODE", "-aet", "INTRUDER")
    assert result.returncode != 0
    assert "Reason: Calling AE Title Not Recognized" in result.stderr
    ds = make_dataset()
    path = write_dataset(ds, tmp_path / "intruder.dcm")
    store = subprocess.run(["storescu", "-v", "-to", "5", "-aec", "PACSNODE", "-aet", "INTRUDER",
                            "127.0.0.1", str(node.port), str(path)],
                           capture_output=True, text=True, env=dcmtk_env(), timeout=20)
    assert store.returncode != 0 and "Association Rejected" in store.stderr
    assert ds.SOPInstanceUID not in catalogue_rows(node.data)


def test_associations_past_the_limit_get_a_transient_rejection(node: RunningNode) -> None:
    """PS3.8 9.3.4: A-ASSOCIATE-RJ, rejected-transient, local-limit-exceeded."""
    ae = AE(ae_title="HOLDER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    held = []
    try:
        for _ in range(MAX_ASSOCIATIONS):
            assoc = ae.associate("127.0.0.1", node.port, ae_title="PACSNODE")
            assert assoc.is_established
            held.append(assoc)
        result = echoscu(node.port, "-aec", "PACSNODE")
        assert result.returncode != 0
        assert "Result: Rejected Transient" in result.stderr
        assert "Reason: Local Limit Exceeded" in result.stderr
        assert held[0].send_c_echo().Status == 0x0000  # the accepted ones are unaffected
        held.pop().release()
        assert wait_until(lambda: echo_ok(node.port), timeout=10)
    finally:
        for assoc in held:
            assoc.release()


def study_rows(data: Path, study_uid: str) -> dict:
    con = sqlite3.connect(f"file:{data / 'catalogue.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        con.row_factory = sqlite3.Row
        study = dict(con.execute("SELECT * FROM study WHERE study_uid = ?", (study_uid,)).fetchone())
        patient = dict(con.execute("SELECT * FROM patient WHERE id = ?", (study["patient_id"],)).fetchone())
        series = {r["series_uid"]: dict(r) for r in con.execute(
            "SELECT * FROM series WHERE study_id = ?", (study["id"],))}
    finally:
        con.close()
    return {"study": study, "patient": patient, "series": series}


@pytest.mark.parametrize("charset,name,encoded", [
    ("ISO_IR 100", "MÜLLER^JÜRGEN", "MÜLLER^JÜRGEN".encode("latin-1")),
    ("ISO_IR 192", "MÜLLER^JÜRGEN", "MÜLLER^JÜRGEN".encode("utf-8")),
], ids=["latin1", "utf8"])
def test_storescu_study_is_stored_and_indexed(node: RunningNode, tmp_path: Path, charset: str,
                                              name: str, encoded: bytes) -> None:
    """A CT and an MR series of one study: every instance Success, stored as sent, indexed
    with its counts, ModalitiesInStudy and the person name decoded from its character set."""
    study_uid = generate_uid()
    patient_id = f"E2E-{charset}"
    series = {m: generate_uid() for m in ("CT", "MR")}
    files = {}
    for modality, count in (("CT", 3), ("MR", 2)):
        for i in range(count):
            ds = make_dataset(patient_id=patient_id, patient_name=name, charset=charset, study_uid=study_uid,
                              series_uid=series[modality], modality=modality, instance_number=i + 1)
            files[ds.SOPInstanceUID] = write_dataset(ds, tmp_path / modality / f"{i}.dcm")
    result = run_storescu(node.port, list(files.values()))
    assert result.returncode == 0, result.stderr
    assert sorted(successful_files(result.stderr)) == sorted(str(p) for p in files.values())

    rows = catalogue_rows(node.data)
    for uid, source in files.items():
        stored = node.data / rows[uid]["path"]
        assert sha256_file(stored) == rows[uid]["sha256"]
        assert dataset_bytes(stored.read_bytes()) == dataset_bytes(source.read_bytes())
        assert encoded in stored.read_bytes()
        assert rows[uid]["source_ae"] == "STORESCU"
    found = study_rows(node.data, study_uid)
    assert (found["study"]["num_series"], found["study"]["num_instances"]) == (2, 5)
    assert found["study"]["modalities_in_study"] == "CT\\MR"
    assert {uid: r["num_instances"] for uid, r in found["series"].items()} == {
        series["CT"]: 3, series["MR"]: 2}
    assert (found["patient"]["patient_id"], found["patient"]["patient_name"]) == (patient_id, name)
    assert found["patient"]["num_instances"] == 5


@pytest.mark.parametrize("file_syntax,option,expected", [
    (ExplicitVRLittleEndian, "-xe", ExplicitVRLittleEndian),
    (ImplicitVRLittleEndian, "-xi", ImplicitVRLittleEndian),
    (DeflatedExplicitVRLittleEndian, "-xd", DeflatedExplicitVRLittleEndian),
], ids=["explicit", "implicit", "deflated"])
def test_stored_bytes_are_the_bytes_sent(node: RunningNode, tmp_path: Path, file_syntax: str, option: str,
                                         expected: str) -> None:
    """No transcoding: the dataset is kept in the transfer syntax it came in, byte for byte
    (DCMTK sends a file in its own transfer syntax when the context allows it)."""
    ds = make_dataset(rows=32, columns=32)
    ds.file_meta.TransferSyntaxUID = file_syntax
    path = write_dataset(ds, tmp_path / "in.dcm")
    result = run_storescu(node.port, [path], option)
    assert result.returncode == 0, result.stderr
    assert successful_files(result.stderr) == [str(path)]
    row = catalogue_rows(node.data)[ds.SOPInstanceUID]
    stored = (node.data / row["path"]).read_bytes()
    assert row["transfer_syntax"] == expected
    assert dataset_bytes(stored) == dataset_bytes(path.read_bytes())
    assert dcmread(node.data / row["path"]).PixelData == ds.PixelData
    if file_syntax != DeflatedExplicitVRLittleEndian:
        assert stored[row["pixel_offset"]:row["pixel_offset"] + row["pixel_length"]] == ds.PixelData


def test_storescu_converting_to_implicit_is_stored_as_negotiated(node: RunningNode, tmp_path: Path) -> None:
    """An explicit VR file sent over an implicit-only association arrives implicit; the node
    stores it so and records that transfer syntax, with the same attribute values."""
    ds = make_dataset(patient_name="MÜLLER^JÜRGEN", charset="ISO_IR 100")
    path = write_dataset(ds, tmp_path / "explicit.dcm")
    result = run_storescu(node.port, [path], "-xi")
    assert result.returncode == 0, result.stderr
    assert "Little Endian Explicit -> Little Endian Implicit" in result.stderr
    row = catalogue_rows(node.data)[ds.SOPInstanceUID]
    assert row["transfer_syntax"] == ImplicitVRLittleEndian
    stored = dcmread(node.data / row["path"])
    assert stored.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert stored.PatientName == "MÜLLER^JÜRGEN"
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "Rows", "WindowCenter", "PixelData"):
        assert stored[keyword].value == ds[keyword].value
