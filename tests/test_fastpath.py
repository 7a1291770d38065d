"""The hot C-STORE path (scp.fastpath): direct encodings equal pynetdicom's, and live
exchanges give the same results with and without it."""

from __future__ import annotations

import io
import socket
import threading
import time

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage, Verification

from db.models import Instance, database
from node.runtime import Node
from scp import commands, fastpath
from tests.helpers import make_dataset


def _response(status: int = 0x0000, **extra) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageID = 513  # pynetdicom's StorageServiceClass copies it onto the response
    rsp.MessageIDBeingRespondedTo = 513
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rsp.AffectedSOPInstanceUID = "1.2.3.4.55"  # odd length: padded
    rsp.Status = status
    for key, value in extra.items():
        setattr(rsp, key, value)
    return rsp


def _stock_command_bytes(rsp: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = list(message.encode_msg(1, 16384))
    (context_id, pdv), = pdata.presentation_data_value_list
    assert pdv[0] == 0x03
    return pdv[1:]


def _decode(command: bytes):
    return read_dataset(DicomBytesIO(command), True, True)


def test_direct_encoding_matches_pynetdicom():
    for status in (0x0000, 0xB000, 0xA700):
        rsp = _response(status)
        fast = commands.plain_store_response(rsp)
        stock = _stock_command_bytes(rsp)
        assert fast == stock
        assert _decode(fast).Status == status
        assert _decode(fast).CommandGroupLength == len(fast) - 12


def test_responses_with_optional_elements_use_pynetdicom():
    assert commands.plain_store_response(_response(0xC000, ErrorComment="bad")) is None
    request = C_STORE()
    request.MessageID = 1
    assert commands.plain_store_response(request) is None


# --- live exchanges: the same bytes must arrive with and without the fast path ------------



def _associate(node, max_pdu=16382):
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.dimse_address[1], ae_title="PACSNODE")
    assert assoc.is_established
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def _stored_bytes(node, sop_uid):
    with database.connection_context():
        row = Instance.get(Instance.sop_instance_uid == sop_uid)
    return node.storage.absolute(row.path).read_bytes(), row


@pytest.fixture(params=[True, False], ids=["fast-path", "stock-pynetdicom"])
def small_pdu_node(make_settings, request):
    """A node that takes PDUs of at most 4 kB: a 128x128 image arrives in ~10 PDUs."""
    node = Node(make_settings(dicom={"max_pdu_length": 4096}), fast_path=request.param).start()
    yield node
    node.stop()


def test_many_fragments_store_the_exact_bytes(small_pdu_node):
    datasets = [make_dataset(rows=128, columns=128, instance_number=n) for n in range(3)]
    assoc = _associate(small_pdu_node)
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    for ds in datasets:
        stored, row = _stored_bytes(small_pdu_node, ds.SOPInstanceUID)
        assert stored[row.pixel_offset:row.pixel_offset + row.pixel_length] == ds.PixelData
        assert dcmread(io.BytesIO(stored)).PatientName == ds.PatientName


def _send_in_one_pdu(assoc, ds, message_id=3):
    """Command set and data set as two PDVs of a single P-DATA-TF PDU (PS3.8 9.3.5)."""
    from tests.test_store_scp import _encoded

    request = C_STORE_RQ()
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Priority = 2
    primitive.DataSet = io.BytesIO(_encoded(ds))
    request.primitive_to_message(primitive)
    context = assoc._get_valid_context(CTImageStorage, ExplicitVRLittleEndian, "scu")
    combined = P_DATA()
    for pdata in request.encode_msg(context.context_id, 0):
        combined.presentation_data_value_list.extend(pdata.presentation_data_value_list)
    assert len(combined.presentation_data_value_list) == 2
    assoc._reactor_checkpoint.clear()
    try:
        while not assoc._is_paused:
            time.sleep(0.0001)
        assoc.dul.send_pdu(combined)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return response


def test_command_and_dataset_in_one_pdu(running_node):
    ds = make_dataset()
    assoc = _associate(running_node, max_pdu=0)
    try:
        response = _send_in_one_pdu(assoc, ds)
        assert response.Status == 0x0000
        assert response.MessageIDBeingRespondedTo == 3
        assert response.AffectedSOPInstanceUID == ds.SOPInstanceUID
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    stored, row = _stored_bytes(running_node, ds.SOPInstanceUID)
    assert stored[row.pixel_offset:row.pixel_offset + row.pixel_length] == ds.PixelData


def test_concurrent_associations_all_stored(running_node):
    per_assoc, threads, statuses = 15, 4, []

    def send(n):
        assoc = _associate(running_node)
        try:
            for i in range(per_assoc):
                ds = make_dataset(patient_id=f"P{n}", instance_number=i)
                statuses.append((ds.SOPInstanceUID, assoc.send_c_store(ds).Status))
        finally:
            assoc.release()

    workers = [threading.Thread(target=send, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert len(statuses) == per_assoc * threads
    assert {status for _, status in statuses} == {0x0000}
    with database.connection_context():
        assert Instance.select().count() == per_assoc * threads
    assert len(list(running_node.storage.iter_files())) == per_assoc * threads


def _wait_for(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_malformed_pdata_aborts_only_that_association(running_node):
    bad = _associate(running_node)
    # A P-DATA-TF whose PDV item claims more bytes than the PDU holds.
    bad.dul.socket.socket.sendall(b"\x04\x00\x00\x00\x00\x0a" + b"\x00\x00\x01\x00\x01\x03" + b"\x00" * 4)
    assert _wait_for(lambda: not bad.is_established)
    assert _wait_for(lambda: not running_node.ae.active_associations)
    good = _associate(running_node)
    try:
        assert good.send_c_store(make_dataset()).Status == 0x0000
    finally:
        good.release()


def test_peer_vanishing_mid_message_frees_the_association(running_node):
    assoc = _associate(running_node)
    sock = assoc.dul.socket.socket
    # Half a P-DATA-TF PDU, then the connection closes (a sender killed mid-transfer).
    sock.sendall(b"\x04\x00\x00\x00\x10\x00" + b"\x00" * 100)
    assoc.dul.kill_dul()
    sock.close()
    assert _wait_for(lambda: not running_node.ae.active_associations)
    assert not any(running_node.storage.temp.iterdir())
    good = _associate(running_node)
    try:
        assert good.send_c_echo().Status == 0x0000
    finally:
        good.release()


def test_idle_association_answers_promptly(running_node):
    """After idling, the first request is served without waiting for a poll interval."""
    assoc = _associate(running_node)
    try:
        time.sleep(0.3)
        started = time.perf_counter()
        assert assoc.send_c_echo().Status == 0x0000
        assert time.perf_counter() - started < 0.5
    finally:
        assoc.release()


def test_pdu_level_handlers_keep_the_stock_receive_path(make_settings):
    """With a handler bound to PDU-level events, every PDU goes through pynetdicom's FSM."""
    seen = []
    node = Node(make_settings(), fast_path=True).start()
    try:
        node.server.bind(evt.EVT_PDU_RECV, lambda event: seen.append(type(event.pdu).__name__))
        assoc = _associate(node)
        try:
            assert assoc.send_c_store(make_dataset()).Status == 0x0000
        finally:
            assoc.release()
    finally:
        node.stop()
    assert "P_DATA_TF" in seen


def _stock_find_bytes(rsp) -> tuple[bytes, bytes]:
    from pynetdicom.dimse_messages import C_FIND_RSP

    message = C_FIND_RSP()
    message.primitive_to_message(rsp)
    pdvs = [pdv for pdata in message.encode_msg(1, 16384) for _, pdv in pdata.presentation_data_value_list]
    command = b"".join(p[1:] for p in pdvs if p[0] & 1)
    data = b"".join(p[1:] for p in pdvs if not p[0] & 1)
    return command, data


def test_direct_find_response_matches_pynetdicom():
    import io

    from pynetdicom.dimse_primitives import C_FIND

    for status, identifier in ((0xFF00, b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "), (0x0000, None),
                               (0xFE00, None)):
        rsp = C_FIND()
        rsp.MessageID = rsp.MessageIDBeingRespondedTo = 7
        rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
        rsp.Status = status
        rsp.Identifier = io.BytesIO(identifier) if identifier else None
        command, data = _stock_find_bytes(rsp)
        assert commands.plain_find_response(rsp) == command
        assert data == (identifier or b"")
    rsp.ErrorComment = "why"
    assert commands.plain_find_response(rsp) is None


def test_supported_contexts_copy_like_deepcopy_and_stay_independent() -> None:
    """Each association gets its own contexts, equal to what deepcopy would give."""
    import copy

    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts

    from scp.fastpath import SupportedContexts

    ae = AE()
    for context in AllStoragePresentationContexts[:20]:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES[:13], scp_role=True)
    original = ae.supported_contexts
    deep, cheap = copy.deepcopy(original), copy.deepcopy(SupportedContexts(original))
    assert [vars(c) for c in cheap] == [vars(c) for c in deep]
    cheap[0].transfer_syntax.pop()
    cheap[0].context_id = 5
    assert vars(original[0]) == vars(deep[0])


def _retrieve_response(cls, status, counts, **extra):
    rsp = cls()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = 9
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"  # odd length: padded
    rsp.Status = status
    (rsp.NumberOfRemainingSuboperations, rsp.NumberOfCompletedSuboperations,
     rsp.NumberOfFailedSuboperations, rsp.NumberOfWarningSuboperations) = counts
    for key, value in extra.items():
        setattr(rsp, key, value)
    return rsp


def test_direct_retrieve_response_matches_pynetdicom():
    """C-MOVE-RSP and C-GET-RSP without an identifier (the Pending one sent after every
    sub-operation, and a plain final Success): the same bytes as pynetdicom's encoding."""
    from pynetdicom.dimse_messages import C_GET_RSP, C_MOVE_RSP
    from pynetdicom.dimse_primitives import C_GET, C_MOVE

    for cls, message_class, field in ((C_MOVE, C_MOVE_RSP, 0x8021), (C_GET, C_GET_RSP, 0x8010)):
        for status, counts in ((0xFF00, (499, 1, 0, 0)), (0xFF00, (3, 65535, 2, 1)),
                               (0x0000, (None, 500, 0, 0)), (0xFE00, (7, 2, 0, 0))):
            rsp = _retrieve_response(cls, status, counts)
            message = message_class()
            message.primitive_to_message(rsp)
            (pdata,) = list(message.encode_msg(1, 16384))
            ((_, pdv),) = pdata.presentation_data_value_list
            assert pdv[0] == 0x03
            fast = commands.plain_retrieve_response(rsp)
            assert fast == pdv[1:]
            decoded = _decode(fast)
            assert decoded.CommandField == field and decoded.Status == status
            assert decoded.CommandDataSetType == 0x0101
            assert decoded.get("NumberOfRemainingSuboperations") == counts[0]


def test_retrieve_responses_with_identifier_or_comment_use_pynetdicom():
    from pynetdicom.dimse_primitives import C_GET, C_MOVE

    failed_list = io.BytesIO(b"\x08\x00\x58\x00\x06\x00\x00\x001.2.3\x00")
    assert commands.plain_retrieve_response(
        _retrieve_response(C_MOVE, 0xB000, (None, 1, 1, 0), Identifier=failed_list)) is None
    assert commands.plain_retrieve_response(
        _retrieve_response(C_GET, 0xC000, (None, 0, 0, 0), ErrorComment="bad")) is None
    request = C_MOVE()
    request.MessageID = 1
    assert commands.plain_retrieve_response(request) is None
    assert commands.plain_retrieve_response(_response()) is None  # a C-STORE-RSP


def test_accepted_contexts_sorted_once_and_renewed_with_negotiation():
    """FastAssociation.accepted_contexts answers as upstream's property, from a cache that a
    new negotiation (a new ``_accepted_cx`` dict) renews."""
    from pynetdicom.association import Association
    from pynetdicom.presentation import build_context

    assoc = object.__new__(fastpath.FastAssociation)
    contexts = []
    for context_id, sop_class in ((5, CTImageStorage), (1, Verification), (3, CTImageStorage)):
        context = build_context(sop_class)
        context.context_id = context_id
        contexts.append(context)
    assoc._accepted_cx = {cx.context_id: cx for cx in contexts}
    expected = Association.accepted_contexts.fget(assoc)
    assert assoc.accepted_contexts == expected
    assert [cx.context_id for cx in assoc.accepted_contexts] == [1, 3, 5]
    assoc.accepted_contexts.pop()  # callers get their own list
    assert assoc.accepted_contexts == expected
    assoc._accepted_cx = {1: contexts[1]}
    assert [cx.context_id for cx in assoc.accepted_contexts] == [1]


def _stock_received_primitive(command: bytes, context_id: int = 1):
    """What pynetdicom's receiving side builds from a command set (decode_msg's last steps)."""
    from pynetdicom.dimse_messages import _MESSAGE_TYPES
    from pynetdicom.dsutils import decode

    message = C_STORE_RSP()
    message.context_id = context_id
    message.command_set = decode(io.BytesIO(command), True, True)
    message.__class__ = _MESSAGE_TYPES[message.command_set.CommandField][1]
    return message.message_to_primitive()


def test_received_store_response_decoded_as_pynetdicom_does():
    """A plain C-STORE-RSP received on an accepted association (a C-GET sub-operation's
    answer) becomes the same C_STORE primitive as pynetdicom's decode gives."""
    for rsp in (_response(0x0000), _response(0xB007), _response(0xA700)):
        for command in (commands.plain_store_response(rsp), _stock_command_bytes(rsp)):
            fast = commands.store_response_primitive(command)
            assert fast is not None
            fast._context_id = 1
            stock = _stock_received_primitive(command)
            assert vars(fast) == vars(stock)
    without_instance = _response()
    without_instance.AffectedSOPInstanceUID = None
    command = commands.plain_store_response(without_instance)
    fast = commands.store_response_primitive(command)
    fast._context_id = 1
    assert vars(fast) == vars(_stock_received_primitive(command))


def test_received_store_responses_with_more_use_pynetdicom():
    with_comment = _stock_command_bytes(_response(0xC000, ErrorComment="disk full"))
    assert commands.store_response_primitive(with_comment) is None
    find = commands.plain_find_response(_find_rsp())
    assert commands.store_response_primitive(find) is None
    assert commands.store_response_primitive(b"\x00\x00\x00\x00\x04") is None
    assert commands.store_response_primitive(b"") is None


def _find_rsp():
    from pynetdicom.dimse_primitives import C_FIND

    rsp = C_FIND()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    rsp.Status = 0x0000
    return rsp


def test_store_requests_answered_alike_with_and_without_fast_store(running_node, monkeypatch):
    """Success, a failure with an Error Comment (a status Dataset) and a handler that raises
    (0xC211, as pynetdicom's ``attempt``): the same answers whether scp.faststore or pynetdicom's StorageServiceClass serves them; only the stock
    node goes through the latter."""
    from pynetdicom.service_class import StorageServiceClass

    from node.errors import DuplicateInstance

    served_by_stock = []
    stock_scp = StorageServiceClass.SCP
    monkeypatch.setattr(StorageServiceClass, "SCP",
                        lambda self, req, cx: served_by_stock.append(1) or stock_scp(self, req, cx))
    ingest = running_node.ingestor.ingest_received
    outcomes = iter([None, DuplicateInstance("already stored"), RuntimeError("handler bug")])

    def ingest_or_fail(*args, **kwargs):
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome
        return ingest(*args, **kwargs)

    monkeypatch.setattr(running_node.ingestor, "ingest_received", ingest_or_fail)
    assoc = _associate(running_node)
    try:
        answers = [assoc.send_c_store(make_dataset(instance_number=n)) for n in range(3)]
        assert assoc.send_c_echo().Status == 0x0000  # the association is still served
    finally:
        assoc.release()
    assert [a.Status for a in answers] == [0x0000, 0x0111, 0xC211]
    assert answers[1].ErrorComment == "already stored"
    assert len(served_by_stock) == (0 if running_node.fast_path else 3)
