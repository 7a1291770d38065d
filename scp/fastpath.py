"""The hot C-STORE path, tuned where profiling showed pynetdicom spends its time.

pynetdicom stays the DIMSE engine; three things change for associations this node accepts
(DESIGN.md, "Where the time goes"):

- the acceptor reactor waits on its message queue instead of sleeping 1 ms between polls;
- the DUL thread polls every 0.1 ms while the association is busy (1 ms once idle, so idle
  associations cost no more CPU than stock);
- a plain C-STORE-RSP (no Error Comment or other optional elements) is encoded directly:
  seven elements of implicit VR little endian instead of a pydicom Dataset round trip;
- a received dataset stays in memory up to ``SPOOL_LIMIT`` and then spills to an unnamed
  temp file under data_dir/tmp, so a 1 GB object costs disk, not twice its size in memory.

Everything else (negotiation, other services, failures) runs pynetdicom's own code. Tests run
the same exchanges with and without this module (``install_fast_path``).
"""

from __future__ import annotations

import io
import mmap
import queue
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import RequestHandler

BUSY_POLL = 0.0001
IDLE_POLL = 0.001
BUSY_WINDOW = 0.1  # seconds after the last PDU during which the DUL polls fast
REACTOR_WAIT = 0.002


SPOOL_LIMIT = 32 * 1024 * 1024


def install_fast_path(server: Any, spool_dir: Path) -> None:
    """Make a started pynetdicom AssociationServer create fast-path associations."""
    server.RequestHandlerClass = FastRequestHandler
    server.spool_dir = spool_dir


class SpooledDataset(io.BytesIO):
    """Message data as received: in memory up to SPOOL_LIMIT, then in an unnamed temp file.

    A BytesIO subclass because pynetdicom's primitives accept nothing else.
    """

    def __init__(self, spool_dir: Path | None) -> None:
        super().__init__()
        self._spool_dir = spool_dir
        self._file: Any = None

    def write(self, data: Any) -> int:
        if self._file is not None:
            return self._file.write(data)
        written = super().write(data)
        if self.tell() > SPOOL_LIMIT:
            self._file = tempfile.TemporaryFile(dir=self._spool_dir)
            self._file.write(self.getbuffer())
            self.seek(0)
            self.truncate()
        return written

    def getvalue(self) -> bytes:
        if self._file is None:
            return super().getvalue()
        self._file.seek(0)
        return self._file.read()

    def buffer(self) -> bytes | mmap.mmap:
        """The bytes without copying them: the in-memory value or a read-only map of the file."""
        if self._file is None:
            return super().getvalue()
        self._file.flush()
        return mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


class FastRequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # Not started yet: swapping the classes keeps every attribute pynetdicom set up.
        assoc.__class__ = FastAssociation
        assoc.dul.__class__ = FastDUL
        assoc.dimse.__class__ = FastDIMSE
        assoc.dimse.spool_dir = getattr(self.server, "spool_dir", None)
        return assoc


class FastDUL(DULServiceProvider):
    @property
    def _run_loop_delay(self) -> float:  # type: ignore[override]
        last = getattr(self, "_last_busy", 0.0)
        return BUSY_POLL if time.monotonic() - last < BUSY_WINDOW else IDLE_POLL

    @_run_loop_delay.setter
    def _run_loop_delay(self, value: float) -> None:
        pass  # pynetdicom sets 1 ms in __init__; the getter above decides

    def _is_transport_event(self) -> bool:
        if super()._is_transport_event():
            self._last_busy = time.monotonic()
            return True
        return False

    def send_pdu(self, primitive: Any) -> None:
        self._last_busy = time.monotonic()
        super().send_pdu(primitive)


class FastDIMSE(DIMSEServiceProvider):
    spool_dir: Path | None = None

    def receive_primitive(self, primitive: Any) -> None:
        if self.message is None:
            self.message = DIMSEMessage()
            self.message.data_set = SpooledDataset(self.spool_dir)
        super().receive_primitive(primitive)

    def send_msg(self, primitive: Any, context_id: int) -> None:
        encoded = _plain_store_response(primitive)
        if encoded is None or self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
        self.dul.send_pdu(pdata)


_STORE_RSP_FIELDS = {"MessageIDBeingRespondedTo", "AffectedSOPClassUID",
                     "AffectedSOPInstanceUID", "Status"}


def _plain_store_response(primitive: Any) -> bytes | None:
    """The command set of a C-STORE-RSP with only its required elements, else None."""
    if not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None:
        return None
    for name in ("ErrorComment", "OffendingElement", "MoveOriginatorApplicationEntityTitle",
                 "MoveOriginatorMessageID", "MessageID"):
        if getattr(primitive, name, None):
            return None
    if primitive.Status is None or primitive.AffectedSOPClassUID is None:
        return None
    body = b"".join((
        _ui(0x0002, primitive.AffectedSOPClassUID),
        _us(0x0100, 0x8001),
        _us(0x0120, primitive.MessageIDBeingRespondedTo),
        _us(0x0800, 0x0101),
        _us(0x0900, primitive.Status),
        _ui(0x1000, primitive.AffectedSOPInstanceUID) if primitive.AffectedSOPInstanceUID else b"",
    ))
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _us(element: int, value: int) -> bytes:
    return struct.pack("<HHIH", 0, element, 2, value)


def _ui(element: int, uid: str) -> bytes:
    raw = uid.encode("ascii")
    if len(raw) % 2:
        raw += b"\x00"
    return struct.pack("<HHI", 0, element, len(raw)) + raw


class FastAssociation(Association):
    def _run_reactor(self) -> None:
        """pynetdicom's acceptor loop, waiting on the message queue rather than sleeping."""
        self._is_paused = False
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            try:
                context_id, msg = self.dimse.msg_queue.get(timeout=REACTOR_WAIT)
            except queue.Empty:
                context_id, msg = None, None
            if msg:
                self._serve_request(msg, context_id)
            if self._finished():
                return

    def _finished(self) -> bool:
        """Release, abort, a dead DUL or the network timeout end the loop (as upstream)."""
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return True
        if self.acse.is_aborted():
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return True
        if not self.dul.is_alive():
            self.kill()
            return True
        if self.dul.idle_timer_expired():
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return True
        return False
