"""The outgoing C-STORE fast path (scu.direct_store): its command set equals pynetdicom's, and
live exchanges give the same results with it and through pynetdicom."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE

import scu.direct_store as direct_store
import scu.store as store
from scu.association import Remote, associate, client_ae
from scu.direct_store import dataset_offset, store_command_set
from tests.helpers import make_dataset
from tests.test_scu_store import dataset_bytes, part10, store_with  # noqa: F401 - fixture


def stock_command_set(originator: tuple[str, int] | None) -> bytes:
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    request.AffectedSOPInstanceUID = "1.2.3.4.55"  # odd length: padded
    request.Priority = 0
    request.DataSet = io.BytesIO(b"\x08\x00\x16\x00")
    if originator is not None:
        request.MoveOriginatorApplicationEntityTitle, request.MoveOriginatorMessageID = originator
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdata = next(iter(message.encode_msg(1, 16384)))
    (_, pdv), = pdata.presentation_data_value_list[:1]
    assert pdv[0] == 0x03
    return pdv[1:]


@pytest.mark.parametrize("originator", [None, ("MOVER", 513), ("ODD", 1)])
def test_command_set_equals_pynetdicoms(originator: tuple[str, int] | None) -> None:
    direct = store_command_set("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.55", 7, originator)
    assert direct == stock_command_set(originator)


def test_dataset_offset_of_a_part10_file() -> None:
    data = part10(make_dataset())
    assert data[dataset_offset(io.BytesIO(data)):] == dataset_bytes(data)
    with pytest.raises(ValueError):
        dataset_offset(io.BytesIO(b"\0" * 128 + b"DICM" + b"\x02\x00\x01\x00OB"))


class RecordingSCP:
    """A storage SCP in this process that keeps what each C-STORE-RQ carried."""

    def __init__(self, statuses: dict[str, int] | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses = statuses or {}
        ae = AE(ae_title="RECORDER")
        ae.supported_contexts = AllStoragePresentationContexts
        for cx in ae.supported_contexts:
            cx.transfer_syntax = [ExplicitVRLittleEndian, RLELossless]
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.on_store)])
        self.remote = Remote("RECORDER", "127.0.0.1", self.server.server_address[1])

    def on_store(self, event: Any) -> Any:
        request = event.request
        uid = str(request.AffectedSOPInstanceUID)
        self.requests.append({"uid": uid, "data": request.DataSet.getvalue(),
                              "syntax": str(event.context.transfer_syntax),
                              "originator": (request.MoveOriginatorApplicationEntityTitle,
                                             request.MoveOriginatorMessageID)})
        status = self.statuses.get(uid, 0x0000)
        if status == 0x0000:
            return status
        from pydicom.dataset import Dataset

        rsp = Dataset()
        rsp.Status = status
        rsp.ErrorComment = "no room"
        return rsp


@pytest.fixture
def recorder() -> Iterator[type[RecordingSCP]]:
    started: list[RecordingSCP] = []

    def start(**kwargs: Any) -> RecordingSCP:
        scp = RecordingSCP(**kwargs)
        started.append(scp)
        return scp

    yield start  # type: ignore[misc]
    for scp in started:
        scp.server.shutdown()


@pytest.fixture(params=[True, False], ids=["direct", "pynetdicom"])
def direct(request, monkeypatch) -> Iterator[bool]:
    """Both ways, counting the C-STOREs that went through pynetdicom's send_c_store."""
    monkeypatch.setattr(store.direct_sending, "enabled", request.param)
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # restored by conftest
    yield request.param


def test_stored_bytes_and_statuses_either_way(direct: bool, recorder, store_with, monkeypatch) -> None:
    first = make_dataset()
    datasets = [make_dataset(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID,
                             instance_number=n) for n in range(1, 6)]
    datasets[3].compress(RLELossless, generate_instance_uid=False)
    scp = recorder(statuses={str(datasets[1].SOPInstanceUID): 0xA700})
    node, instances = store_with(datasets, {})
    through_pynetdicom: list[Any] = []
    original = Association.send_c_store
    monkeypatch.setattr(Association, "send_c_store",
                        lambda self, *a, **k: through_pynetdicom.append(a) or original(self, *a, **k))
    summary = store.send_instances(node.settings, scp.remote, instances)
    assert len(through_pynetdicom) == (0 if direct else 5)
    results = {r.sop_instance_uid: r for r in summary.results}
    assert results[str(datasets[1].SOPInstanceUID)].status == 0xA700
    assert results[str(datasets[1].SOPInstanceUID)].error == "no room"
    assert summary.count("success") == 4
    by_uid = {r["uid"]: r for r in scp.requests}
    for ds in datasets:
        sent = by_uid[str(ds.SOPInstanceUID)]
        assert sent["data"] == dataset_bytes(part10(ds))  # as stored, RLE included
        assert sent["syntax"] == ds.file_meta.TransferSyntaxUID
        assert sent["originator"] == (None, None)


def test_move_originator_is_sent(direct: bool, recorder, store_with) -> None:
    ds = make_dataset()
    scp = recorder()
    node, (inst,) = store_with([ds], {})
    assoc = associate(client_ae(node.settings), scp.remote, store.contexts_for([inst]))
    try:
        result = store.send_one(assoc, inst, node.settings.data_dir, msg_id=3,
                                move_originator=("MOVER", 513))
    finally:
        assoc.release()
    assert result.status == 0x0000
    assert scp.requests[0]["originator"] == ("MOVER", 513)
    assert scp.requests[0]["data"] == dataset_bytes(part10(ds))


def _pdus(blocks: list[bytes]) -> list[tuple[int, int, bytes]]:
    """(context ID, control header, fragment) of each P-DATA-TF PDU, each PDU checked to hold
    exactly one PDV and to end inside its block."""
    found = []
    for block in blocks:
        pos = 0
        while pos < len(block):
            kind, _, length, item, context, control = struct.unpack_from(">BBLLBB", block, pos)
            assert kind == 0x04 and item == length - 4 and pos + 6 + length <= len(block)
            found.append((context, control, bytes(block[pos + 12:pos + 6 + length])))
            pos += 6 + length
    return found


@pytest.mark.parametrize("max_pdu", [0, 1030, 16384, 1 << 20])
@pytest.mark.parametrize("block", [4 << 20, 5000])
def test_message_blocks_frame_the_dataset_as_stored(tmp_path: Path, max_pdu: int, block: int,
                                                     monkeypatch) -> None:
    monkeypatch.setattr(direct_store, "MESSAGE_BLOCK", block)
    buffer = direct_store.MessageBuffer()
    for rows in (64, 1, 3):  # the buffer reused by smaller and larger messages
        data = part10(make_dataset(rows=rows, columns=rows))
        path = tmp_path / f"{rows}.dcm"
        path.write_bytes(data)
        blocks = [bytes(b) for b in direct_store.store_message_blocks(path, 5, b"COMMAND!", max_pdu, buffer)]
        assert all(len(b) <= max(block, max_pdu) + 64 for b in blocks)
        pdus = _pdus(blocks)
        assert pdus[0] == (5, 0x03, b"COMMAND!")
        assert all(context == 5 for context, _, _ in pdus)
        assert [control for _, control, _ in pdus[1:]] == [0x00] * (len(pdus) - 2) + [0x02]
        assert all(len(fragment) <= max_pdu - 6 for _, _, fragment in pdus[1:]) or not max_pdu
        assert b"".join(fragment for _, _, fragment in pdus[1:]) == dataset_bytes(data)


def test_message_of_an_empty_dataset_has_its_last_pdv(tmp_path: Path) -> None:
    path = tmp_path / "meta-only.dcm"
    data = part10(make_dataset())
    path.write_bytes(data[:dataset_offset(io.BytesIO(data))])
    blocks = list(direct_store.store_message_blocks(path, 1, b"CMD!", 16384, direct_store.MessageBuffer()))
    assert _pdus(blocks) == [(1, 0x03, b"CMD!"), (1, 0x02, b"")]


def _message(path: Path, buffer: direct_store.MessageBuffer, context: int = 3,
             max_pdu: int = 16384) -> list[bytes]:
    return [bytes(b) for b in direct_store.store_message_blocks(path, context, b"COMMAND-2", max_pdu, buffer)]


def test_a_message_read_ahead_is_the_message_read_then(tmp_path: Path) -> None:
    """What ``read_ahead`` prepared while the last message was stored is sent as the same
    bytes, once, and only for the file, context and PDU size it was read for."""
    first, second = tmp_path / "1.dcm", tmp_path / "2.dcm"
    first.write_bytes(part10(make_dataset(rows=64, columns=64)))
    second.write_bytes(part10(make_dataset(rows=32, columns=32)))
    expected = _message(second, direct_store.MessageBuffer())
    buffer = direct_store.MessageBuffer()
    for max_pdu in (16384, 0):
        direct_store.read_ahead(second, 3, max_pdu, buffer)
        assert buffer._ahead is not None
        assert _message(second, buffer, max_pdu=max_pdu) == _message(
            second, direct_store.MessageBuffer(), max_pdu=max_pdu)
        assert buffer._ahead is None  # taken
    direct_store.read_ahead(second, 3, 16384, buffer)
    assert _message(first, buffer) == _message(first, direct_store.MessageBuffer())
    assert _message(second, buffer) == expected  # the read-ahead was dropped, not misused
    direct_store.read_ahead(second, 4, 16384, buffer)  # another context: its PDV headers differ
    assert _pdus(_message(second, buffer))[1][0] == 3
    direct_store.read_ahead(second, 3, 16384, buffer)
    assert _message(second, buffer, max_pdu=1030) == _message(
        second, direct_store.MessageBuffer(), max_pdu=1030)


def test_a_file_changed_or_gone_after_its_read_ahead_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(part10(make_dataset(rows=16, columns=16)))
    buffer = direct_store.MessageBuffer()
    direct_store.read_ahead(path, 3, 16384, buffer)
    replacement = tmp_path / "new.dcm"
    replacement.write_bytes(part10(make_dataset(rows=20, columns=20)))
    os.replace(replacement, path)
    assert _message(path, buffer) == _message(path, direct_store.MessageBuffer())
    direct_store.read_ahead(path, 3, 16384, buffer)
    path.unlink()
    with pytest.raises(FileNotFoundError):  # before anything is sent, as without read-ahead
        _message(path, buffer)
    direct_store.read_ahead(path, 3, 16384, buffer)  # a missing file: left for the send to meet
    assert buffer._ahead is None


def test_only_a_message_of_one_block_is_read_ahead(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(direct_store, "MESSAGE_BLOCK", 4096)
    path = tmp_path / "big.dcm"
    path.write_bytes(part10(make_dataset(rows=64, columns=64)))
    buffer = direct_store.MessageBuffer()
    direct_store.read_ahead(path, 1, 1030, buffer)
    assert buffer._ahead is None
    path.write_bytes(part10(make_dataset(rows=16, columns=16)))
    direct_store.read_ahead(path, 1, 1030, buffer)  # a smaller one fits a block
    assert buffer._ahead is not None


def test_a_file_cut_between_blocks_raises_before_a_short_block(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(direct_store, "MESSAGE_BLOCK", 4096)
    path = tmp_path / "big.dcm"
    path.write_bytes(part10(make_dataset(rows=64, columns=64)))
    blocks = direct_store.store_message_blocks(path, 1, b"CMD!", 1030, direct_store.MessageBuffer())
    first = bytes(next(blocks))
    assert _pdus([first])[0] == (1, 0x03, b"CMD!")
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(OSError, match="got shorter"):
        for _ in blocks:
            pass
    with pytest.raises(ValueError):  # no meta group length: the caller goes through pynetdicom
        path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x01\x00OB\0\0")
        next(direct_store.store_message_blocks(path, 1, b"CMD!", 1030, direct_store.MessageBuffer()))
