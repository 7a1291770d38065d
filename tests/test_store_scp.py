"""C-ECHO and C-STORE against the in-process node with a pynetdicom SCU."""

from __future__ import annotations

import io
import socket
import time

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage, Verification

from db.catalogue import catalogue_stats
from db.models import Instance, Patient, Study, database
from tests.helpers import make_dataset


def _associate(node, ae_title="TESTSCU", called="PACSNODE", contexts=None):
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    for cx in contexts or [(Verification, None), (CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]:
        ae.add_requested_context(*cx) if cx[1] else ae.add_requested_context(cx[0])
    host, port = node.dimse_address
    return ae.associate("127.0.0.1", port, ae_title=called)


def test_echo(running_node):
    assoc = _associate(running_node)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_store_indexes_and_file_matches(running_node):
    ds = make_dataset(patient_name="MÜLLER^JÜRGEN", charset="ISO_IR 100")
    assoc = _associate(running_node)
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0000
    with database.connection_context():
        row = Instance.get(Instance.sop_instance_uid == ds.SOPInstanceUID)
        assert Patient.get().patient_name == "MÜLLER^JÜRGEN"
        assert Study.get().num_instances == 1
        stats = catalogue_stats()
    assert (stats.patients, stats.studies, stats.series, stats.instances) == (1, 1, 1, 1)
    stored = running_node.storage.absolute(row.path).read_bytes()
    assert stats.bytes == len(stored) == row.size
    stored_ds = dcmread(io.BytesIO(stored))
    assert stored_ds.SOPInstanceUID == ds.SOPInstanceUID
    assert stored_ds.file_meta.SourceApplicationEntityTitle == "TESTSCU"
    assert stored[row.pixel_offset:row.pixel_offset + row.pixel_length] == ds.PixelData


def test_wrong_called_ae_is_rejected(running_node):
    assoc = _associate(running_node, called="NOTME")
    assert assoc.is_rejected


def test_allowed_callers(make_settings):
    from node.runtime import Node

    node = Node(make_settings(dicom={"allowed_callers": ["GOODSCU"]})).start()
    try:
        assert _associate(node, ae_title="BADSCU").is_rejected
        good = _associate(node, ae_title="GOODSCU")
        assert good.is_established
        good.release()
    finally:
        node.stop()


def test_max_associations_rejects_extra(make_settings):
    from node.runtime import Node

    node = Node(make_settings(dicom={"max_associations": 1})).start()
    try:
        first = _associate(node)
        assert first.is_established
        second = _associate(node)
        assert second.is_rejected
        first.release()
    finally:
        node.stop()


def test_association_socket_has_nodelay(running_node):
    assoc = _associate(running_node)
    try:
        server_assoc = running_node.ae.active_associations[0]
        sock = server_assoc.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()


@pytest.mark.parametrize("policy,second_status,kept", [
    ("ignore", 0x0000, "first"),
    ("reject", 0x0111, "first"),
    ("overwrite", 0x0000, "second"),
])
def test_duplicate_policy(make_settings, policy, second_status, kept):
    from node.runtime import Node

    node = Node(make_settings(dicom={"duplicate_policy": policy})).start()
    try:
        first = make_dataset(patient_name="FIRST^COPY")
        second = make_dataset(patient_name="FIRST^COPY", sop_uid=first.SOPInstanceUID,
                              study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID,
                              StudyDescription="SECOND COPY")
        assoc = _associate(node)
        assert assoc.send_c_store(first).Status == 0x0000
        assert assoc.send_c_store(second).Status == second_status
        assoc.release()
        with database.connection_context():
            rows = list(Instance.select())
            assert len(rows) == 1
            assert Study.get().num_instances == 1
        stored = dcmread(node.storage.absolute(rows[0].path))
        expected = first if kept == "first" else second
        assert stored.get("StudyDescription") == expected.StudyDescription
        files = list(node.storage.iter_files())
        assert len(files) == 1, files
    finally:
        node.stop()


def send_raw_store(assoc, sop_class, sop_uid, encoded: bytes, message_id=7):
    """Send encoded bytes as a C-STORE dataset exactly as given (the way a broken sender
    would), pausing the association's reactor as pynetdicom's own send_c_store does."""
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_uid
    request.Priority = 2
    request.DataSet = io.BytesIO(encoded)
    context = assoc._get_valid_context(sop_class, ExplicitVRLittleEndian, "scu")
    assoc._reactor_checkpoint.clear()
    try:
        while not assoc._is_paused:
            time.sleep(0.0001)
        assoc.dimse.send_msg(request, context.context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return response.Status


def _encoded(ds) -> bytes:
    """The dataset alone (no preamble or meta), explicit VR little endian."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "uid_mismatch", "no_study_uid"])
def test_bad_dataset_gets_failure_and_node_keeps_serving(running_node, damage, tmp_path):
    ds = make_dataset()
    encoded = _encoded(ds)
    sop_uid = ds.SOPInstanceUID
    expected = 0xC000
    if damage == "truncated":
        encoded = encoded[:-40]
    elif damage == "garbage":
        encoded = b"\x08\x00\x16\x00UI\xff\xff" + b"garbage" * 20
    elif damage == "uid_mismatch":
        sop_uid = "1.2.3.4.5"
        expected = 0xA900
    elif damage == "no_study_uid":
        del ds.StudyInstanceUID
        encoded = _encoded(ds)
    assoc = _associate(running_node)
    try:
        assert send_raw_store(assoc, CTImageStorage, sop_uid, encoded) == expected
        assert assoc.send_c_store(make_dataset()).Status == 0x0000
    finally:
        assoc.release()
    with database.connection_context():
        assert Instance.select().count() == 1
    assert len(list(running_node.storage.iter_files())) == 1
    assert not any(running_node.storage.temp.iterdir())


def test_disk_full_gets_out_of_resources_and_nothing_half_stored(running_node, monkeypatch):
    import errno

    import node.storage

    real_write = node.storage.os.write

    def full_disk(fd, data):
        if len(data) > 1000:  # the dataset, after a first small write succeeded
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(node.storage.os, "write", full_disk)
    assoc = _associate(running_node)
    try:
        assert assoc.send_c_store(make_dataset(rows=64, columns=64)).Status == 0xA700
        monkeypatch.setattr(node.storage.os, "write", real_write)
        assert assoc.send_c_store(make_dataset()).Status == 0x0000
    finally:
        assoc.release()
    with database.connection_context():
        assert Instance.select().count() == 1
    assert len(list(running_node.storage.iter_files())) == 1
    assert not any(running_node.storage.temp.iterdir())


def test_catalogue_failure_gets_out_of_resources_and_no_file(running_node, monkeypatch):
    import db.writer

    def broken_index(batch, cache):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(db.writer, "index_batch", broken_index)
    assoc = _associate(running_node)
    try:
        assert assoc.send_c_store(make_dataset()).Status == 0xA700
    finally:
        assoc.release()
    assert list(running_node.storage.iter_files()) == []


def test_large_dataset_spills_to_disk_and_is_stored_intact(running_node, monkeypatch):
    """Past the spool limit the received bytes live in a temp file, mapped, never copied."""
    import scp.fastpath

    monkeypatch.setattr(scp.fastpath, "SPOOL_LIMIT", 64 * 1024)
    ds = make_dataset(rows=512, columns=512, NumberOfFrames=1)
    assoc = _associate(running_node)
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    with database.connection_context():
        row = Instance.get(Instance.sop_instance_uid == ds.SOPInstanceUID)
    stored = running_node.storage.absolute(row.path).read_bytes()
    assert stored[row.pixel_offset:row.pixel_offset + row.pixel_length] == ds.PixelData
    assert dcmread(io.BytesIO(stored)).PatientName == ds.PatientName
    assert not any(running_node.storage.temp.iterdir())
