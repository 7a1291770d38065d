"""C-STORE of a stored file written straight to the association's socket (outgoing fast path).

pynetdicom sends a C-STORE-RQ by encoding its command set through pydicom, cutting the
message into P-DATA primitives and queueing each for its DUL thread, which runs each through
the state machine, encodes it as a PDU and writes it: for a 512x512 CT slice to a peer taking
16 kB PDUs, that is 33 hand-overs between two threads (and the GIL) per instance, and most
of the sending side's time. Here the sending thread writes the PDUs itself: the command set
encoded directly (PS3.7 9.3.1.1, implicit VR little endian, as for the C-STORE-RSP of
scp.fastpath), then the file's dataset bytes as stored, framed as P-DATA-TF PDUs within the
peer's maximum length (PS3.8 9.3.5), built in one buffer the association reuses and written
up to MESSAGE_BLOCK bytes at a time (a CT slice in one write). The response still
comes through pynetdicom (DUL thread, DIMSE decode), as does everything else on the
association. The reactor is paused for the exchange as pynetdicom's own ``send_c_store``
does (and stays paused until the association ends: ``pause_reactor``), and the state
machine stays in Sta6 (DT-1 changes no state).

Used only where nothing else watches the PDUs: an outgoing association in the established
state with no PDU-level event handlers bound. Anything else returns None and the caller
falls back to pynetdicom's ``send_c_store``.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from scp.commands import command_set, command_ui, command_us

MESSAGE_BLOCK = 4 << 20  # bytes of framed PDUs built and written at a time (a CT slice: all of it)
_MAX_FRAGMENTS = 512  # PDVs a block holds: one preadv, under IOV_MAX
_PDV_HEAD = 12  # P-DATA-TF PDU header (6), PDV item length (4), context ID, control header
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
    elements = [command_ui(0x0002, sop_class_uid), command_us(0x0100, 0x0001), command_us(0x0110, msg_id),
                command_us(0x0700, 0x0000), command_us(0x0800, 0x0001), command_ui(0x1000, sop_instance_uid)]
    if originator is not None:
        ae_title, message_id = originator
        raw = ae_title.encode("ascii")
        raw += b" " * (len(raw) % 2)
        elements += [struct.pack("<HHI", 0, 0x1030, len(raw)) + raw, command_us(0x1031, message_id)]
    return command_set(*elements)


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


class MessageBuffer:
    """One association's memory for its outgoing C-STORE messages, reused from one to the
    next: a 512 KiB slice read into fresh memory, then joined with its PDU headers into more
    fresh memory, cost more in page faults and copies than its socket write (a third of a
    C-GET sub-operation's time here). Every block of a message is written before the next
    is built, so one buffer serves them all; between two messages it may hold the next
    one's data, read while the peer was still storing the last (``read_ahead``)."""

    def __init__(self) -> None:
        self._memory = bytearray(0)
        self._ahead: tuple[tuple, int] | None = None  # (what was read, where its data ends)

    def at_least(self, size: int) -> memoryview:
        self._ahead = None
        if len(self._memory) < size:
            self._memory = bytearray(size)  # replaced, not resized: old views stay valid
        return memoryview(self._memory)

    @property
    def holds_ahead(self) -> bool:
        return self._ahead is not None

    def keep_ahead(self, key: tuple, end: int) -> None:
        self._ahead = (key, end)

    def take_ahead(self, key: tuple | None) -> tuple[memoryview, int] | None:
        """The buffer and where the data ends, if it holds what ``key`` names; whatever it
        held is forgotten."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] != key:
            return None
        return memoryview(self._memory), ahead[1]


def buffer_of(assoc: Association) -> MessageBuffer:
    buffer = getattr(assoc, "_store_message_buffer", None)
    if buffer is None:
        buffer = assoc._store_message_buffer = MessageBuffer()  # type: ignore[attr-defined]
    return buffer


_COMMAND_ROOM = 512  # bytes kept before a message's data for its command PDV (~250 at most)


def _file_identity(path: Path, fd: int | None = None) -> tuple:
    st = os.fstat(fd) if fd is not None else os.stat(path)
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def store_message_blocks(path: Path, context_id: int, command: bytes, max_pdu: int,
                         buffer: MessageBuffer) -> Iterator[memoryview]:
    """A C-STORE-RQ of the file's dataset bytes as stored: the command PDV, then the data in
    fragments within the peer's maximum PDU length (0: no limit), one PDV per P-DATA-TF PDU
    (PS3.8 9.3.5 and E.2), built straight into ``buffer`` up to MESSAGE_BLOCK bytes at a time
    (the fragments read into their places with one preadv; or already there, read ahead).
    Each view is valid until the next is asked for. The first block is built when it is
    asked for, so a file that cannot be read (OSError, or ValueError without a meta group
    length) fails before anything is sent; one that gets shorter later raises OSError
    between blocks."""
    command_size = _PDV_HEAD + len(command)
    room = max(_COMMAND_ROOM, command_size)
    key = None
    if buffer.holds_ahead and room == _COMMAND_ROOM:  # else no stat: most sends read no ahead
        try:
            key = (_file_identity(path), context_id, max_pdu)
        except OSError:
            pass  # opening it says what is wrong
    ahead = buffer.take_ahead(key)
    if ahead is not None:
        view, end = ahead
        _put_pdv(view, room - command_size, context_id, 0x03, command)
        yield view[room - command_size:end]
        return
    with open(path, "rb", buffering=0) as fp:
        blocks = _data_blocks(fp, context_id, max_pdu, buffer, room)
        view, end = next(blocks)
        _put_pdv(view, room - command_size, context_id, 0x03, command)
        yield view[room - command_size:end]
        for view, end in blocks:
            yield view[:end]


def read_ahead(path: Path, context_id: int, max_pdu: int, buffer: MessageBuffer) -> None:
    """Read the next message's data into ``buffer`` now (while the peer stores the last
    one): copying a CT slice out of the page cache costs about as much as writing it to
    the socket. Only a file whose message is one block; any failure is left for the send
    to meet and report."""
    buffer.take_ahead(None)
    try:
        with open(path, "rb", buffering=0) as fp:
            length = os.fstat(fp.fileno()).st_size - dataset_offset(fp)
            _, fragments, per_block = _layout(length, max_pdu)
            if fragments > per_block:
                return
            _, end = next(_data_blocks(fp, context_id, max_pdu, buffer, _COMMAND_ROOM))
            buffer.keep_ahead((_file_identity(path, fp.fileno()), context_id, max_pdu), end)
    except (OSError, ValueError):
        pass


def _layout(length: int, max_pdu: int) -> tuple[int, int, int]:
    """(bytes per fragment, fragments, fragments per block) of a dataset of ``length``."""
    chunk = max(max_pdu - 6, 1024) if max_pdu else MESSAGE_BLOCK
    fragments = max(-(-length // chunk), 1)  # an empty dataset still gets its last PDV
    return chunk, fragments, max(1, min(MESSAGE_BLOCK // chunk, _MAX_FRAGMENTS))


def _data_blocks(fp: Any, context_id: int, max_pdu: int, buffer: MessageBuffer,
                 room: int) -> Iterator[tuple[memoryview, int]]:
    """The data PDVs of the file's dataset, block by block: (buffer, where the block ends);
    the first block starts ``room`` bytes in, the others at 0."""
    start = dataset_offset(fp)
    length = os.fstat(fp.fileno()).st_size - start
    if length < 0:
        raise OSError(f"{fp.name} ends inside its File Meta Information")
    chunk, fragments, per_block = _layout(length, max_pdu)
    view = buffer.at_least(room + min(fragments, per_block) * (_PDV_HEAD + min(chunk, length)))
    pos, index, placed = room, 0, 0
    while True:
        slots, first_byte = [], start + placed
        for index in range(index, min(index + per_block, fragments)):
            size = min(chunk, length - placed)
            pos = _pdv_head(view, pos, context_id, 0x02 if index == fragments - 1 else 0x00, size)
            slots.append(view[pos:pos + size])
            pos, placed = pos + size, placed + size
        index += 1
        if _read_into(fp, slots, first_byte) != sum(map(len, slots)):
            raise OSError(f"{fp.name} got shorter while it was being sent")
        yield view, pos
        if index >= fragments:
            return
        pos = 0


def _pdv_head(view: memoryview, pos: int, context_id: int, control: int, size: int) -> int:
    """The P-DATA-TF PDU and PDV item headers of a PDU holding one PDV of ``size`` bytes."""
    struct.pack_into(">BBLLBB", view, pos, 0x04, 0, size + 6, size + 2, context_id, control)
    return pos + _PDV_HEAD


def _put_pdv(view: memoryview, pos: int, context_id: int, control: int, data: bytes) -> int:
    pos = _pdv_head(view, pos, context_id, control, len(data))
    view[pos:pos + len(data)] = data
    return pos + len(data)


def _read_into(fp: Any, slots: list[memoryview], offset: int) -> int:
    if not slots:
        return 0
    if hasattr(os, "preadv"):
        return os.preadv(fp.fileno(), slots, offset)
    fp.seek(offset)
    return sum(fp.readinto(slot) or 0 for slot in slots)


def send_message(assoc: Association, send: Callable[[memoryview], None], blocks: Iterator[memoryview]) -> None:
    """The blocks after the first: one that cannot be built leaves the peer with part of a
    message, so the association is aborted (after whole PDUs: nothing is cut mid-PDU)."""
    try:
        for block in blocks:
            send(block)
    except OSError:
        assoc.abort()
        raise


def send_stored_file(assoc: Association, context_id: int, path: Path, sop_class_uid: str,
                     sop_instance_uid: str, msg_id: int,
                     originator: tuple[str, int] | None = None,
                     then: tuple[Path, int] | None = None) -> Dataset | None:
    """One C-STORE of the file's dataset bytes; the response's status Dataset (empty when
    none came: the association is then aborted, as pynetdicom does). Raises OSError or
    ValueError when the file cannot be read, before anything was sent. ``then``: the file
    to send next and its context, read ahead while the peer stores this one."""
    command = store_command_set(sop_class_uid, sop_instance_uid, msg_id, originator)
    blocks = store_message_blocks(path, context_id, command, assoc.dimse.maximum_pdu_size, buffer_of(assoc))
    first = next(blocks)
    pause_reactor(assoc)
    send = assoc.dul.socket.send  # a failed write ends the association (pynetdicom signals Evt17)
    send(first)
    send_message(assoc, send, blocks)
    if then is not None:
        read_ahead(*then, assoc.dimse.maximum_pdu_size, buffer_of(assoc))
    _, rsp = assoc.dimse.get_msg(block=True)
    return _status(assoc, rsp, msg_id)


def send_stored_file_in_reactor(assoc: Association, context_id: int, path: Path, sop_class_uid: str,
                                sop_instance_uid: str, msg_id: int,
                                then: tuple[Path, int] | None = None) -> Dataset | None:
    """A C-GET sub-operation: the same C-STORE-RQ, from the reactor thread of an accepted
    association whose DUL is scp.fastpath's, through its ``send_message_now`` (the lock every
    P-DATA of that association takes, so messages keep their order). None when that DUL is
    not there or will not send now, before anything was sent (the caller goes through
    pynetdicom)."""
    send_now = getattr(assoc.dul, "send_message_now", None)
    if send_now is None or assoc.get_handlers(evt.EVT_DIMSE_SENT):
        return None
    command = store_command_set(sop_class_uid, sop_instance_uid, msg_id)
    blocks = store_message_blocks(path, context_id, command, assoc.dimse.maximum_pdu_size, buffer_of(assoc))
    if not send_now(blocks):
        return None  # nothing was sent
    if then is not None:
        read_ahead(*then, assoc.dimse.maximum_pdu_size, buffer_of(assoc))
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
