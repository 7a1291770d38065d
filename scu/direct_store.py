"""C-STORE of a stored file written straight to the association's socket (outgoing fast path).

pynetdicom sends a C-STORE-RQ by encoding its command set through pydicom, cutting the
message into P-DATA primitives and queueing each for its DUL thread, which runs each through
the state machine, encodes it as a PDU and writes it: for a 512x512 CT slice to a peer taking
16 kB PDUs, that is 33 hand-overs between two threads (and the GIL) per instance, and most
of the sending side's time. Here the sending thread writes the PDUs itself: the command set
encoded directly (PS3.7 9.3.1.1, implicit VR little endian, as for the C-STORE-RSP of
scp.fastpath), then the file's dataset bytes as stored, framed as P-DATA-TF PDUs within the
peer's maximum length (PS3.8 9.3.5), a few hundred kilobytes a write. The response still
comes through pynetdicom (DUL thread, DIMSE decode), as does everything else on the
association. The reactor is paused for the exchange as pynetdicom's own ``send_c_store``
does (and stays paused until the association ends: ``pause_reactor``), and the state
machine stays in Sta6 (DT-1 changes no state).

Used only where nothing else watches the PDUs: an outgoing association in the established
state with no PDU-level event handlers bound. Anything else returns None and the caller
falls back to pynetdicom's ``send_c_store``.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

WRITE_SIZE = 262144  # bytes of PDUs gathered into one socket write
_PDU_LEVEL_EVENTS = (evt.EVT_DATA_SENT, evt.EVT_PDU_SENT, evt.EVT_DIMSE_SENT, evt.EVT_FSM_TRANSITION)


def can_send_directly(assoc: Association) -> bool:
    """An established outgoing association whose PDUs nobody else needs to see."""
    if not assoc.is_requestor or not assoc.is_established:
        return False
    if assoc.dul.state_machine.current_state != "Sta6":
        return False
    return not any(assoc.get_handlers(event) for event in _PDU_LEVEL_EVENTS)


def store_command_set(sop_class_uid: str, sop_instance_uid: str, msg_id: int,
                      originator: tuple[str, int] | None = None) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1): elements in tag order, group length first."""
    body = (command_ui(0x0002, sop_class_uid) + command_us(0x0100, 0x0001) + command_us(0x0110, msg_id)
            + command_us(0x0700, 0x0000) + command_us(0x0800, 0x0001) + command_ui(0x1000, sop_instance_uid))
    if originator is not None:
        ae_title, message_id = originator
        raw = ae_title.encode("ascii")
        raw += b" " * (len(raw) % 2)
        body += struct.pack("<HHI", 0, 0x1030, len(raw)) + raw + command_us(0x1031, message_id)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def dataset_offset(fp: Any) -> int:
    """Where the dataset starts in a Part 10 file: after the preamble and the File Meta
    Information, whose group length (PS3.10 7.1) is its first element in every file this
    node writes."""
    fp.seek(128)
    head = fp.read(16)
    if head[:4] != b"DICM" or head[4:8] != b"\x02\x00\x00\x00" or head[8:10] != b"UL":
        raise ValueError("no File Meta Information group length")
    (length,) = struct.unpack("<I", head[12:16])
    return 144 + length


def store_pdvs(path: Path, sop_class_uid: str, sop_instance_uid: str, msg_id: int, max_pdu: int,
               originator: tuple[str, int] | None = None) -> list[tuple[int, Any]]:
    """(message control header, fragment) of each PDV of a C-STORE-RQ of the file's dataset
    bytes, one PDV per PDU within the peer's maximum length (0: no limit). Raises OSError or
    ValueError when the file cannot be read."""
    with open(path, "rb") as fp:
        offset = dataset_offset(fp)
        fp.seek(offset)
        data = fp.read()
    chunk = max(max_pdu - 6, 1024) if max_pdu else max(len(data), 1)
    pdvs: list[tuple[int, Any]] = [(0x03, store_command_set(sop_class_uid, sop_instance_uid, msg_id,
                                                            originator))]
    view = memoryview(data)
    for start in range(0, len(view), chunk) if len(view) else [0]:
        pdvs.append((0x02 if start + chunk >= len(view) else 0x00, view[start:start + chunk]))
    return pdvs


def send_stored_file(assoc: Association, context_id: int, path: Path, sop_class_uid: str,
                     sop_instance_uid: str, msg_id: int,
                     originator: tuple[str, int] | None = None) -> Dataset | None:
    """One C-STORE of the file's dataset bytes; the response's status Dataset (empty when
    none came: the association is then aborted, as pynetdicom does). Raises OSError or
    ValueError when the file cannot be read, before anything was sent."""
    pdvs = store_pdvs(path, sop_class_uid, sop_instance_uid, msg_id, assoc.dimse.maximum_pdu_size,
                      originator)
    pause_reactor(assoc)
    _write(assoc, _framed(context_id, pdvs))
    _, rsp = assoc.dimse.get_msg(block=True)
    return _status(assoc, rsp, msg_id)


def send_stored_file_in_reactor(assoc: Association, context_id: int, path: Path, sop_class_uid: str,
                                sop_instance_uid: str, msg_id: int) -> Dataset | None:
    """A C-GET sub-operation: the same C-STORE-RQ, from the reactor thread of an accepted
    association whose DUL is scp.fastpath's, through its ``send_pdus_now`` (the lock every
    P-DATA of that association takes, so messages keep their order; the whole message in
    one write). None when that DUL is not there or will not send now, before anything was
    sent (the caller goes through pynetdicom)."""
    send_pdus = getattr(assoc.dul, "send_pdus_now", None)
    if send_pdus is None or assoc.get_handlers(evt.EVT_DIMSE_SENT):
        return None
    pdvs = store_pdvs(path, sop_class_uid, sop_instance_uid, msg_id, assoc.dimse.maximum_pdu_size)
    if not send_pdus(_framed(context_id, pdvs)):
        return None  # nothing was sent
    _, rsp = assoc.dimse.get_msg(block=True)
    return _status(assoc, rsp, msg_id)


def _status(assoc: Association, rsp: Any, msg_id: int) -> Dataset:
    """The status Dataset of a C-STORE-RSP, as pynetdicom's ``send_c_store`` returns it."""
    if rsp is None:
        assoc._handle_no_response()
        return Dataset()
    if not isinstance(rsp, C_STORE) or rsp.MessageIDBeingRespondedTo != msg_id:
        assoc.abort()
        return Dataset()
    status = Dataset()
    status.Status = rsp.Status
    for keyword in ("ErrorComment", "OffendingElement"):
        value = getattr(rsp, keyword, None)
        if value is not None:
            setattr(status, keyword, value)
    return status


def pause_reactor(assoc: Association) -> None:
    """Stop the association's reactor thread before a request, as pynetdicom's own
    ``send_c_store`` does, so it cannot take the response off the queue; and leave it stopped.

    pynetdicom resumes it after every response, and the next request then waits for the
    reactor to come round its 1 ms sleep and stop again: about a millisecond per instance
    for nothing, as an outgoing storage association gets no requests to serve. It is
    resumed by what ends the association (``release`` waits for it to be paused, as it is,
    then resumes it; ``abort`` and ``kill`` resume it) or by a C-STORE sent through
    pynetdicom, which pauses and resumes it itself."""
    if not assoc._reactor_checkpoint.is_set():
        return  # paused by the last direct send, and waiting at the checkpoint since
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused and assoc.is_established:
        time.sleep(0.0001)


def _write(assoc: Association, parts: list[Any]) -> None:
    """Framed PDUs (headers and fragments, see ``_framed``) in writes of about WRITE_SIZE,
    each joined once; a failed write ends the association through pynetdicom
    (AssociationSocket.send signals the state machine)."""
    batch: list[Any] = []
    size = 0
    for part in parts:
        batch.append(part)
        size += len(part)
        if size >= WRITE_SIZE:
            assoc.dul.socket.send(memoryview(b"".join(batch)))  # a partial write re-sends a view, not a copy
            batch, size = [], 0
    if batch:
        assoc.dul.socket.send(memoryview(b"".join(batch)))


def _framed(context_id: int, pdvs: list[tuple[int, Any]]) -> list[Any]:
    """Each PDV as a P-DATA-TF PDU holding it alone (PS3.8 9.3.5 and E.2): the PDU and PDV
    headers, then the fragment itself (not copied: the writer joins the pieces once)."""
    parts: list[Any] = []
    for control, fragment in pdvs:
        item_length = len(fragment) + 2
        parts.append(struct.pack(">BBLLBB", 0x04, 0, item_length + 4, item_length, context_id, control))
        parts.append(fragment)
    return parts


def command_us(element: int, value: int) -> bytes:
    """A US element of a command set (group 0000, implicit VR little endian; PS3.7 E.1)."""
    return struct.pack("<HHIH", 0, element, 2, value)


def command_ui(element: int, uid: str) -> bytes:
    """A UI element of a command set, padded to even length with a NUL (PS3.5 9.1)."""
    raw = uid.encode("ascii")
    if len(raw) % 2:
        raw += b"\x00"
    return struct.pack("<HHI", 0, element, len(raw)) + raw
