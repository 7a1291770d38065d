"""C-MOVE and C-GET SCP: DCMTK movescu/getscu against the node with storescp as the Move
Destination, and a pynetdicom SCU for counts, failures, refusals and C-CANCEL."""

from __future__ import annotations

import io
import logging
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from db.models import Instance, database
from node.runtime import Node
from tests.helpers import dcmtk_env, make_dataset
from tests.test_scu_store import StoreSCP, dataset_bytes, part10, storescp  # noqa: F401 - fixture

pytestmark = pytest.mark.dcmtk


def load_series(node: Node, count: int, syntax: str = ExplicitVRLittleEndian, **kwargs) -> list:
    first = make_dataset(**kwargs)
    datasets = []
    for n in range(1, count + 1):
        ds = make_dataset(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID,
                          instance_number=n, **kwargs)
        if syntax == RLELossless:
            ds.compress(RLELossless, generate_instance_uid=False)
        node.ingestor.ingest_part10(part10(ds))
        datasets.append(ds)
    return datasets


@pytest.fixture
def move_setup(make_settings, storescp, request) -> Iterator[tuple[Node, StoreSCP]]:  # noqa: F811
    scp = storescp()
    fast = getattr(request, "param", True)
    node = Node(make_settings(remotes={"STORESCP": {"host": "127.0.0.1", "port": scp.port}}),
                fast_path=fast).start()
    try:
        yield node, scp
    finally:
        node.stop()


def dcmtk(tool: str, node: Node, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool, "-v", "-aet", "QRSCU", "-aec", "PACSNODE", *args, "127.0.0.1",
                           str(node.dimse_address[1])],
                          capture_output=True, text=True, env=dcmtk_env(), timeout=60)


def stored_bytes(node: Node, sop_uid: str) -> bytes:
    with database.connection_context():
        path = Instance.get(Instance.sop_instance_uid == sop_uid).path
    return (node.settings.data_dir / path).read_bytes()


@pytest.mark.parametrize("move_setup", [True, False], ids=["fast-path", "stock-pynetdicom"],
                         indirect=True)
def test_movescu_study_root_levels(move_setup) -> None:
    node, scp = move_setup
    a = load_series(node, 3)
    b = load_series(node, 2, patient_id="PID2")
    study_a = str(a[0].StudyInstanceUID)
    result = dcmtk("movescu", node, "-S", "-aem", "STORESCP", "-k", "QueryRetrieveLevel=SERIES",
                   "-k", f"StudyInstanceUID={study_a}", "-k", f"SeriesInstanceUID={a[0].SeriesInstanceUID}")
    assert "Received Final Move Response (Success)" in result.stderr, result.stderr
    assert result.stderr.count("Received Move Response") == 3  # one Pending per sub-operation
    received = scp.received()  # all there when movescu has its final response
    assert set(received) == {str(ds.SOPInstanceUID) for ds in a}
    for uid, data in received.items():
        assert dataset_bytes(data) == dataset_bytes(stored_bytes(node, uid))
    uid_list = "\\".join(str(ds.SOPInstanceUID) for ds in b)
    image = dcmtk("movescu", node, "-S", "-aem", "STORESCP", "-k", "QueryRetrieveLevel=IMAGE",
                  "-k", f"StudyInstanceUID={b[0].StudyInstanceUID}",
                  "-k", f"SeriesInstanceUID={b[0].SeriesInstanceUID}", "-k", f"SOPInstanceUID={uid_list}")
    assert "Received Final Move Response (Success)" in image.stderr, image.stderr
    assert set(scp.received()) == {str(ds.SOPInstanceUID) for ds in a + b}


def test_movescu_patient_root_and_unknown_destination(move_setup, caplog) -> None:
    node, scp = move_setup
    a = load_series(node, 2, patient_id="PATIENT-A")
    load_series(node, 1, patient_id="PATIENT-B")
    result = dcmtk("movescu", node, "-P", "-aem", "STORESCP", "-k", "QueryRetrieveLevel=PATIENT",
                   "-k", "PatientID=PATIENT-A")
    assert "Received Final Move Response (Success)" in result.stderr, result.stderr
    assert set(scp.received()) == {str(ds.SOPInstanceUID) for ds in a}
    with caplog.at_level(logging.WARNING, logger="scp.retrieve"):
        unknown = dcmtk("movescu", node, "-P", "-aem", "NOBODY", "-k", "QueryRetrieveLevel=PATIENT",
                        "-k", "PatientID=PATIENT-A")
    assert "MoveDestinationUnknown" in unknown.stderr
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "'NOBODY' is unknown" in message and "known destinations: STORESCP" in message


def test_getscu_study_level(move_setup, tmp_path: Path) -> None:
    node, _ = move_setup
    a = load_series(node, 3)
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk("getscu", node, "-S", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                   "-k", f"StudyInstanceUID={a[0].StudyInstanceUID}")
    assert "Number of Completed Suboperations : 3" in result.stderr, result.stderr
    got = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p.read_bytes() for p in out.iterdir()}
    assert set(got) == {str(ds.SOPInstanceUID) for ds in a}
    for uid, data in got.items():
        assert dataset_bytes(data) == dataset_bytes(stored_bytes(node, uid))


def _scu(*models: str) -> AE:
    ae = AE(ae_title="QRSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for model in models:
        ae.add_requested_context(model)
    return ae


def _identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key, value in keys.items():
        setattr(ds, key, value)
    return ds


def test_move_counts_and_failed_instance_list(move_setup) -> None:
    node, scp = move_setup
    a = load_series(node, 3)
    missing = str(a[1].SOPInstanceUID)
    with database.connection_context():
        (node.settings.data_dir / Instance.get(Instance.sop_instance_uid == missing).path).unlink()
    assoc = _scu(StudyRootQueryRetrieveInformationModelMove).associate(
        "127.0.0.1", node.dimse_address[1], ae_title="PACSNODE")
    try:
        responses = list(assoc.send_c_move(
            _identifier("SERIES", StudyInstanceUID=str(a[0].StudyInstanceUID),
                        SeriesInstanceUID=str(a[0].SeriesInstanceUID)),
            "STORESCP", StudyRootQueryRetrieveInformationModelMove))
    finally:
        assoc.release()
    pending = [(s.NumberOfRemainingSuboperations, s.NumberOfCompletedSuboperations,
                s.NumberOfFailedSuboperations, s.NumberOfWarningSuboperations)
               for s, _ in responses if s.Status == 0xFF00]
    assert pending == [(2, 1, 0, 0), (1, 1, 1, 0), (0, 2, 1, 0)]
    final, identifier = responses[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
    assert identifier.FailedSOPInstanceUIDList == missing
    assert set(scp.received()) == {str(a[0].SOPInstanceUID), str(a[2].SOPInstanceUID)}


def test_move_refusals(move_setup) -> None:
    node, _ = move_setup
    load_series(node, 1, patient_id="P-REF")
    assoc = _scu(StudyRootQueryRetrieveInformationModelMove, PatientRootQueryRetrieveInformationModelMove
                 ).associate("127.0.0.1", node.dimse_address[1], ae_title="PACSNODE")
    try:
        no_key = list(assoc.send_c_move(_identifier("STUDY", PatientID="P-REF"), "STORESCP",
                                        StudyRootQueryRetrieveInformationModelMove))
        wildcard = list(assoc.send_c_move(_identifier("PATIENT", PatientID="P-*"), "STORESCP",
                                          PatientRootQueryRetrieveInformationModelMove))
        nothing = list(assoc.send_c_move(_identifier("STUDY", StudyInstanceUID="1.2.3.4"), "STORESCP",
                                         StudyRootQueryRetrieveInformationModelMove))
    finally:
        assoc.release()
    assert no_key[-1][0].Status == 0xA900 and "StudyInstanceUID" in no_key[-1][0].ErrorComment
    assert wildcard[-1][0].Status == 0xA900
    assert nothing[-1][0].Status == 0x0000 and nothing[-1][0].NumberOfCompletedSuboperations == 0


def _get_association(node: Node, handler, syntaxes=(ExplicitVRLittleEndian,)):  # noqa: ANN001, ANN202
    ae = _scu(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, list(syntaxes))
    return ae.associate("127.0.0.1", node.dimse_address[1], ae_title="PACSNODE",
                        ext_neg=[build_role(CTImageStorage, scp_role=True)],
                        evt_handlers=[(evt.EVT_C_STORE, handler)])


def test_get_cancel_between_sub_operations(move_setup) -> None:
    node, _ = move_setup
    a = load_series(node, 12)
    received: list[str] = []

    def on_store(event) -> int:  # noqa: ANN001
        received.append(event.request.AffectedSOPInstanceUID)
        if len(received) == 1:  # the node sees the cancel before its next sub-operation
            event.assoc.send_c_cancel(1, query_model=StudyRootQueryRetrieveInformationModelGet)
        return 0x0000

    assoc = _get_association(node, on_store)
    try:
        responses = list(assoc.send_c_get(_identifier("STUDY", StudyInstanceUID=str(a[0].StudyInstanceUID)),
                                          StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    final = responses[-1][0]
    assert final.Status == 0xFE00
    assert final.NumberOfCompletedSuboperations == len(received) < 12
    assert final.NumberOfRemainingSuboperations == 12 - len(received)


def test_each_retrieve_logs_one_summary_with_each_failure(move_setup, caplog) -> None:
    node, _ = move_setup
    a = load_series(node, 3)
    answers = iter([0x0000, 0xA700, 0xB000, 0x0000, 0x0000, 0x0000])

    def on_store(event) -> int:  # noqa: ANN001
        return next(answers)

    assoc = _get_association(node, on_store)
    identifier = _identifier("STUDY", StudyInstanceUID=str(a[0].StudyInstanceUID))
    with caplog.at_level(logging.INFO, logger="scp.retrieve"):
        try:  # two C-GETs on one association: each its own counts
            first = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
            second = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
        finally:
            assoc.release()
        move = _scu(StudyRootQueryRetrieveInformationModelMove).associate(
            "127.0.0.1", node.dimse_address[1], ae_title="PACSNODE")
        try:
            moved = list(move.send_c_move(identifier, "STORESCP", StudyRootQueryRetrieveInformationModelMove))
        finally:
            move.release()
    assert (first[-1][0].Status, second[-1][0].Status, moved[-1][0].Status) == (0xB000, 0x0000, 0x0000)
    lines = [r.getMessage() for r in caplog.records if r.name == "scp.retrieve"]
    assert [line for line in lines if "failed:" in line] == [
        f"C-STORE sub-operation of {a[1].SOPInstanceUID} to QRSCU failed: status 0xA700"]
    assert "C-GET from QRSCU: 1 of 3 sub-operation(s) completed, 1 with a warning, 1 failed" in lines
    assert "C-GET from QRSCU: 3 of 3 sub-operation(s) completed, 0 with a warning, 0 failed" in lines
    assert "C-MOVE from QRSCU to STORESCP: 3 of 3 sub-operation(s) completed, 0 with a warning, 0 failed" in lines


def test_get_decompresses_for_a_requestor_taking_explicit_only(move_setup) -> None:
    node, _ = move_setup
    a = load_series(node, 2, syntax=RLELossless)
    got: dict[str, Dataset] = {}

    def on_store(event) -> int:  # noqa: ANN001
        ds = event.dataset
        ds.file_meta = event.file_meta
        got[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    assoc = _get_association(node, on_store)
    try:
        responses = list(assoc.send_c_get(_identifier("STUDY", StudyInstanceUID=str(a[0].StudyInstanceUID)),
                                          StudyRootQueryRetrieveInformationModelGet))
        refused = list(assoc.send_c_get(_identifier("SERIES", StudyInstanceUID=str(a[0].StudyInstanceUID)),
                                        StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert responses[-1][0].Status == 0x0000
    for ds in a:
        sent = got[str(ds.SOPInstanceUID)]
        assert sent.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert (sent.pixel_array == ds.pixel_array).all()
    assert refused[-1][0].Status == 0xA900  # SERIES level without a SeriesInstanceUID


@pytest.mark.parametrize("move_setup", [True, False], ids=["fast-path", "stock-pynetdicom"],
                         indirect=True)
def test_accepted_syntax_is_sent_from_the_stored_file(move_setup, tmp_path: Path, monkeypatch) -> None:
    """A peer that takes the stored syntax gets the file's bytes as stored: no dataset is read
    and re-encoded (scp.retrieve.StoredFile), by C-MOVE and by C-GET alike; they are framed
    by scu.direct_store, not pynetdicom's send_c_store (for C-GET, with the fast path)."""
    import scp.retrieve as retrieve_scp
    from pynetdicom.association import Association

    node, scp = move_setup
    read = []
    decode = retrieve_scp.dataset_to_send
    monkeypatch.setattr(retrieve_scp, "dataset_to_send", lambda *args: read.append(args) or decode(*args))
    through_pynetdicom: list = []
    send_c_store = Association.send_c_store
    monkeypatch.setattr(Association, "send_c_store",
                        lambda self, *a, **k: through_pynetdicom.append(a) or send_c_store(self, *a, **k))
    a = load_series(node, 3)
    moved = dcmtk("movescu", node, "-S", "-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={a[0].StudyInstanceUID}")
    assert "Received Final Move Response (Success)" in moved.stderr, moved.stderr
    out = tmp_path / "got"
    out.mkdir()
    got = dcmtk("getscu", node, "-S", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={a[0].StudyInstanceUID}")
    assert "Number of Completed Suboperations : 3" in got.stderr, got.stderr
    assert not read
    assert len(through_pynetdicom) == (0 if node.fast_path else 3)  # C-GET without the fast path
    received = [*scp.received().items(),
                *((str(dcmread(p, stop_before_pixels=True).SOPInstanceUID), p.read_bytes())
                  for p in out.iterdir())]
    assert len(received) == 6
    for uid, data in received:
        assert dataset_bytes(data) == dataset_bytes(stored_bytes(node, uid))
