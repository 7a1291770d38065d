"""The DUL half of the fast path that scp.fastpath installs: select() on the socket and a
wake-up socket instead of polling, whole P-DATA PDUs read straight into DIMSE, and direct
writes (C-STORE-RSP, batched C-FIND answers) under one send lock.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import struct
import threading
import time
from typing import Any, Iterator, cast

from pynetdicom import _config, evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.utils import make_target

try:
    import ssl

    _HAS_SSL = True
except ImportError:  # pragma: no cover - Python built without OpenSSL
    _HAS_SSL = False

LOGGER = logging.getLogger("pynetdicom.dul")

IDLE_POLL = 0.001
DUL_WAIT = 0.01  # the DUL wakes at least this often (ARTIM timer, anything not queued)
HOLD_LIMIT = 64 * 1024  # C-FIND answers written together, at most this many bytes
HOLD_TIME = 0.002  # ... and held back at most about this long


class _WakingQueue(queue.Queue):
    """A queue.Queue that wakes the DUL thread when something is put in it."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


# Notification events whose handlers see PDUs, raw bytes or FSM transitions: when any is
# bound, P-DATA goes through pynetdicom's own code so they still see every PDU.
_PDU_LEVEL_EVENTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_FSM_TRANSITION,
                     evt.EVT_DATA_SENT, evt.EVT_PDU_SENT)


class FastDUL(DULServiceProvider):
    """pynetdicom's DUL, sleeping in select() on the socket and a wake-up socket instead of
    polling every millisecond, and reading P-DATA-TF PDUs straight into the DIMSE message.

    Everything but P-DATA in the established state (Sta6) still runs through pynetdicom's
    state machine; P-DATA in Sta6 is action DT-2 (hand the PDVs to DIMSE, stay in Sta6), done
    here without building PDU and primitive objects. A C-STORE-RSP from the reactor thread
    is likewise written straight to the socket (DT-1) under a lock shared with the DUL's
    own sends.
    """

    def _prepare_fast(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sleeping = False
        self._send_lock = threading.Lock()
        # Thread.__init__ bound upstream's run_reactor as the target: point it at ours.
        self._target = make_target(self.run_reactor)
        # AssociationSocket already queued Evt5: keep it.
        for name in ("event_queue", "to_provider_queue"):
            fresh = _WakingQueue(self._wake)
            fresh.queue.extend(getattr(self, name).queue)
            setattr(self, name, fresh)

    def _wake(self) -> None:
        if self._sleeping:
            try:
                self._wake_w.send(b"\0")
            except OSError:  # full (a wake-up is pending anyway) or closed (thread ended)
                pass

    def kill_dul(self) -> None:
        super().kill_dul()
        self._sleeping = True
        self._wake()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self._sleeping = True
            self._wake()
            while self.is_alive():
                time.sleep(0.001)
            return True
        return False

    def run_reactor(self) -> None:
        try:
            self._run_fast_reactor()
        finally:
            self._sleeping = False
            self._wake_r.close()
            self._wake_w.close()

    def _run_fast_reactor(self) -> None:
        """pynetdicom's DUL loop (dul.py run_reactor) with the sleep replaced by _wait()."""
        self._idle_timer.start()
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:  # noqa: BLE001 - as upstream: abort, end both reactors
                LOGGER.error("Exception in DUL.run(), aborting association")
                LOGGER.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self._send_bytes(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                self._wait()
                continue
            self.state_machine.do_action(event)

    def _wait(self) -> None:
        """Sleep until the peer sends, a primitive or event is queued, or DUL_WAIT passes."""
        transport = self.socket
        sock = transport.socket if transport is not None and transport._is_connected else None
        if _HAS_SSL and isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        self._sleeping = True
        try:
            if self.event_queue.qsize() or self.to_provider_queue.qsize() or self._kill_thread:
                return
            watched = [self._wake_r] if sock is None else [sock, self._wake_r]
            # answers held back for one write leave within HOLD_TIME (see send_pdata_now)
            timeout = HOLD_TIME if getattr(self, "_held", None) else DUL_WAIT
            try:
                ready, _, _ = select.select(watched, [], [], timeout)
            except (OSError, ValueError):  # the socket closed under us: the loop sees it
                ready = []
                time.sleep(IDLE_POLL)
        finally:
            self._sleeping = False
        if getattr(self, "_held", None):
            with self._send_lock:
                self._flush_held()
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass

    def _read_pdu_data(self) -> None:
        """As upstream, reading whole PDUs with recv_into; P-DATA-TF in Sta6 goes to DIMSE."""
        transport = cast(Any, self.socket)
        sock = transport.socket
        header = _recv_exact(sock, 6)
        if header is None or len(header) < 6:
            self.event_queue.put("Evt17")
            return
        pdu_type, _, pdu_length = struct.unpack(">BBL", header)
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return
        body = _recv_exact(sock, pdu_length)
        if body is None or len(body) != pdu_length:
            LOGGER.error("Connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return
        if pdu_type == 0x04 and self._pdata_fast():
            pdvs = _split_pdvs(body)
            if pdvs is None:
                LOGGER.error("Unable to decode the received P-DATA-TF PDU")
                self.event_queue.put("Evt19")
                return
            dimse = self.assoc.dimse
            for context_id, value in pdvs:
                dimse.receive_pdv(context_id, value)
            return
        try:
            pdu, event = self._decode_pdu(bytearray(header) + body)
        except Exception as exc:  # noqa: BLE001 - as upstream: an invalid PDU is Evt19
            LOGGER.error("Unable to decode the received PDU data")
            LOGGER.exception(exc)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _pdata_fast(self) -> bool:
        if self.state_machine.current_state != "Sta6" or _config.STORE_RECV_CHUNKED_DATASET:
            return False
        handlers = self.assoc._handlers
        return not any(handlers.get(event) for event in _PDU_LEVEL_EVENTS)

    def _send(self, pdu: Any) -> None:
        with self._send_lock:
            self._flush_held()
            super()._send(pdu)

    def _send_bytes(self, data: bytes) -> None:
        with self._send_lock:
            self._flush_held()
            if self.socket is not None:
                self.socket.send(data)

    def _flush_held(self) -> None:
        """Send what ``send_pdata_now(hold=True)`` kept back; the caller holds the send lock."""
        held = getattr(self, "_held", None)
        if held:
            data = b"".join(held)
            held.clear()
            if self.socket is not None and self.socket.socket is not None:
                self.socket.send(data)

    def send_pdata_now(self, context_id: int, *pdvs: bytes, hold: bool = False) -> bool:
        """Send PDVs as one P-DATA-TF PDU from the calling thread (DT-1 in Sta6).

        With ``hold`` the PDU may wait (up to HOLD_LIMIT bytes, and at most HOLD_TIME: the
        DUL thread flushes it) and leave with the next PDUs in one write: a stream of C-FIND
        answers then costs a system call every few milliseconds rather than per answer, and
        a slow stream still reaches the peer at once (so it can cancel). Every other send
        flushes what is held first, so order is kept.
        False when the association is not plainly established or PDU-level handlers are
        bound: the caller then queues the primitive for the DUL thread as usual.
        """
        if not self._pdata_fast():
            with self._send_lock:
                self._flush_held()
            return False
        items = b"".join(struct.pack(">LB", len(pdv) + 1, context_id) + pdv for pdv in pdvs)
        data = struct.pack(">BBL", 0x04, 0, len(items)) + items
        with self._send_lock:
            transport = self.socket
            if transport is None or transport.socket is None or self.state_machine.current_state != "Sta6":
                self._flush_held()
                return False
            held = self.__dict__.setdefault("_held", [])
            held.append(data)
            if not hold or sum(map(len, held)) >= HOLD_LIMIT:
                self._flush_held()
        return True

    def send_message_now(self, blocks: Iterator[Any]) -> bool:
        """A whole message as blocks of framed P-DATA-TF PDUs (``scu.direct_store``), written
        from the calling thread (DT-1 in Sta6) after whatever is held (a C-GET's Pending
        response goes out just before the next sub-operation's C-STORE-RQ). The first block
        is built before anything is written, so its error leaves nothing sent. False, with
        nothing sent, in the cases where ``send_pdata_now`` returns False. A later block that
        cannot be built (OSError) aborts the association: the peer got part of a message."""
        if not self._pdata_fast():
            with self._send_lock:
                self._flush_held()
            return False
        failed: OSError | None = None
        with self._send_lock:
            transport = self.socket
            if transport is None or transport.socket is None or self.state_machine.current_state != "Sta6":
                self._flush_held()
                return False
            first = next(blocks)
            self._flush_held()
            transport.send(first)
            try:
                for block in blocks:
                    transport.send(block)
            except OSError as exc:
                failed = exc
        if failed is not None:
            self.assoc.abort()
            raise failed
        return True


def _recv_exact(sock: Any, n: int) -> bytearray | None:
    """n bytes from the socket (fewer if it closed first); None on a socket error."""
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    try:
        while got < n:
            count = sock.recv_into(view[got:], n - got)
            if not count:
                return buffer[:got]
            got += count
    except (OSError, TimeoutError) as exc:
        LOGGER.error("Connection closed before the entire PDU was received")
        LOGGER.exception(exc)
        return None
    return buffer


def _split_pdvs(body: bytearray) -> list[tuple[int, memoryview]] | None:
    """The (context ID, value) of each PDV item of a P-DATA-TF body (PS3.8 9.3.5.1)."""
    view = memoryview(body)
    end = len(body)
    pdvs = []
    offset = 0
    while offset < end:
        if offset + 6 > end:
            return None
        (length,) = struct.unpack_from(">L", body, offset)
        if length < 2 or offset + 4 + length > end:
            return None
        pdvs.append((body[offset + 4], view[offset + 5:offset + 4 + length]))
        offset += 4 + length
    return pdvs or None
