"""The hot C-STORE path, tuned where profiling showed pynetdicom spends its time.

pynetdicom stays the DIMSE engine; for associations this node accepts (DESIGN.md, "Where the
time goes"), and for the DUL and DIMSE of those it opens (``FastRequestorAE``):

- the acceptor reactor waits on its message queue instead of sleeping 1 ms between polls;
- the DUL thread sleeps in select() on the socket and a wake-up socket (written when a
  primitive or event is queued) instead of polling, so it costs nothing while idle and
  reacts at once when busy;
- a P-DATA-TF PDU in the established state is read whole with recv_into and its PDVs go
  straight into the DIMSE message (action DT-2 without PDU/primitive objects or copies);
- the command sets of the messages that come once per image are written and read directly
  (scp.commands) instead of through pydicom Datasets: a plain C-STORE-RSP, C-FIND-RSP and the
  Pending C-MOVE-RSP/C-GET-RSP with the sub-operation counts that follows every C-STORE
  sub-operation of a retrieve are encoded and written to the socket by the thread that
  answers (action DT-1, under the DUL's send lock); a plain C-STORE-RQ received becomes its
  primitive, and so does a plain C-STORE-RSP (a C-GET sub-operation's answer);
- a received dataset stays in memory up to ``SPOOL_LIMIT`` and then spills to an unnamed
  temp file under data_dir/tmp, so a 1 GB object costs disk, not twice its size in memory.

Everything else (negotiation, other services, release, abort, failures, and every PDU when a
handler is bound to a PDU-level event) runs pynetdicom's own code. Tests run the same
exchanges with and without this module (``install_fast_path``).
"""
from __future__ import annotations

import copy
import io
import logging
import mmap
import queue
import tempfile
import threading
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE, DIMSEServiceProvider
from pynetdicom.dimse_messages import _MESSAGE_TYPES, DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_FIND, C_GET, C_MOVE, C_STORE, N_EVENT_REPORT
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import RequestHandler
from pynetdicom.utils import make_target

from scp.fastdul import FastDUL
from scp.commands import (plain_find_response, plain_retrieve_response, plain_store_response,
                          received_primitive, store_response_command)
from scp.faststore import FastStorageServiceClass, is_plain_storage_request

LOGGER = logging.getLogger("pynetdicom.dul")

IDLE_POLL = 0.001
DUL_WAIT = 0.01  # the DUL wakes at least this often (ARTIM timer, anything not queued)
REACTOR_WAIT = 0.002


SPOOL_LIMIT = 32 * 1024 * 1024


def install_fast_path(server: Any, spool_dir: Path) -> None:
    """Make a started pynetdicom AssociationServer create fast-path associations."""
    server.RequestHandlerClass = FastRequestHandler
    server.spool_dir = spool_dir
    server.contexts = SupportedContexts(server.contexts)


class SupportedContexts(list):
    """The server's presentation contexts, copied cheaply for each association.

    pynetdicom deep-copies them for every association it accepts: with every storage SOP
    class and 13 transfer syntaxes that took ~15 ms of CPU, more than the negotiation itself.
    A context holds None, ints, bools and immutable UIDs; a shallow copy with its own
    transfer syntax list is as independent as the deep copy.
    """

    def __deepcopy__(self, memo: dict) -> list:
        copies = []
        for context in self:
            twin = copy.copy(context)
            twin._transfer_syntax = list(context._transfer_syntax)
            copies.append(twin)
        return copies


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


def _speed_up(assoc: Association, spool_dir: Path | None) -> None:
    """The fast DUL and DIMSE for an association whose DUL thread has not started: swapping
    the classes keeps every attribute pynetdicom set up."""
    assoc.dul.__class__ = FastDUL
    assoc.dul._prepare_fast()
    assoc.dimse.__class__ = FastDIMSE
    assoc.dimse.spool_dir = spool_dir


class FastRequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.__class__ = FastAssociation
        _speed_up(assoc, getattr(self.server, "spool_dir", None))
        return assoc


class FastRequestorAE(AE):
    """An AE whose outgoing associations (C-MOVE sub-operations, ``send``, forwarding, a
    retrieval's C-FINDs and C-MOVEs) get the fast DUL and DIMSE as well.

    pynetdicom's DUL thread looks at the socket once a millisecond: each C-STORE-RSP of a
    run of sub-operations, and each of the hundreds of C-FIND answers of an IMAGE level
    query, waited for that look (a pynetdicom C-FIND of 500 instances from Orthanc took
    0.43 s here, findscu 0.10 s); polling faster cost a thread waking 10,000 times a second.
    The association's own reactor stays pynetdicom's: an outgoing one serves no requests.
    """

    def _create_socket(self, assoc: Association, address: Any, tls_args: Any) -> Any:
        sock = super()._create_socket(assoc, address, tls_args)
        _speed_up(assoc, None)  # before associate() starts the DUL thread
        return sock



class FastDIMSE(DIMSEServiceProvider):
    spool_dir: Path | None = None

    def _new_message(self) -> DIMSEMessage:
        message = DIMSEMessage()
        message.data_set = SpooledDataset(self.spool_dir)
        return message

    def receive_primitive(self, primitive: Any) -> None:
        if self.message is None:
            self.message = self._new_message()
        super().receive_primitive(primitive)

    def receive_pdv(self, context_id: int, value: memoryview) -> None:
        """One PDV of a P-DATA-TF (PS3.8 E.2), as DIMSEMessage.decode_msg handles it, but
        without copying the value before it lands in the message's data set."""
        message = self.message
        if message is None:
            message = self.message = self._new_message()
        control = value[0]
        if control & 1:  # command set fragment
            message.encoded_command_set.write(value[1:])
            if not control & 2:
                return
            message.context_id = context_id
            if not self.assoc.get_handlers(evt.EVT_DIMSE_RECV):
                received = received_primitive(message.encoded_command_set.getvalue())
                if received is not None:
                    message.primitive, data_follows = received
                    if not data_follows:  # a C-STORE-RSP, or a Pending C-MOVE/C-GET-RSP
                        self._deliver(message)
                    return
            message.command_set = decode(message.encoded_command_set, True, True)
            message.__class__ = _MESSAGE_TYPES[message.command_set.CommandField][1]
            if message.command_set.CommandDataSetType != 0x0101:
                return  # a data set follows
        else:
            message.data_set.write(value[1:])
            if not control & 2:
                return
        self._deliver(message)

    def _deliver(self, message: DIMSEMessage) -> None:
        """The end of DIMSEServiceProvider.receive_primitive once a message is complete.
        A message whose primitive was made from its command set (scp.commands: a plain
        C-STORE-RQ or -RSP, a C-FIND, C-MOVE or C-GET response) gets its data set here;
        nothing watches its messages (no EVT_DIMSE_RECV handler)."""
        context_id = message.context_id
        primitive = getattr(message, "primitive", None)
        if primitive is not None:
            if isinstance(primitive, C_STORE):
                if primitive.MessageIDBeingRespondedTo is None:
                    primitive.DataSet = message.data_set
            else:
                primitive.Identifier = message.data_set  # empty when none came, as upstream
            primitive._context_id = context_id
            self.msg_queue.put((context_id, primitive))
            self.message = None
            return
        evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": message})
        try:
            primitive = message.message_to_primitive()
        except Exception as exc:  # noqa: BLE001 - as upstream: an invalid message is Evt19
            LOGGER.error("Received an invalid DIMSE message")
            LOGGER.exception(exc)
            self.dul.event_queue.put("Evt19")
            return
        if isinstance(primitive, C_CANCEL) and len(self.cancel_req) < 10:
            self.cancel_req[primitive.MessageIDBeingRespondedTo] = primitive
        elif isinstance(primitive, N_EVENT_REPORT) and primitive.is_valid_request:
            threading.Thread(target=make_target(self.assoc._serve_request),
                             args=(primitive, context_id)).start()
        else:
            self.msg_queue.put((context_id, primitive))
        self.message = None

    def send_msg(self, primitive: Any, context_id: int) -> None:
        encoded = (plain_store_response(primitive) or plain_find_response(primitive)
                   or plain_retrieve_response(primitive))
        if encoded is None or self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            self._send_encoded(primitive, context_id)
            return
        pdvs = [b"\x03" + encoded]
        identifier = getattr(primitive, "Identifier", None)
        if identifier is not None and identifier.getvalue():
            # a C-FIND answer: its identifier in a second PDV of the same PDU (PS3.8 9.3.5)
            pdvs.append(b"\x02" + identifier.getvalue())
        max_pdu = self.maximum_pdu_size
        if max_pdu and sum(len(p) + 6 for p in pdvs) > max_pdu:  # let pynetdicom split it
            self._send_encoded(primitive, context_id)
            return
        # a pending C-FIND answer, or a C-MOVE/C-GET progress report: may leave with what follows
        pending_answer = (isinstance(primitive, (C_FIND, C_MOVE, C_GET))
                          and primitive.Status in (0xFF00, 0xFF01))
        if self.dul.send_pdata_now(context_id, *pdvs, hold=pending_answer):
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.extend((context_id, p) for p in pdvs)
        self.dul.send_pdu(pdata)


    def send_store_response(self, context_id: int, request: C_STORE, status: int) -> bool:
        """Answer a C-STORE request with a plain status, encoded directly (scp.faststore);
        False, with nothing sent, where the response must go through ``send_msg``."""
        if self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            return False
        command = store_response_command(request.MessageID, request.AffectedSOPClassUID,
                                         request.AffectedSOPInstanceUID, status)
        max_pdu = self.maximum_pdu_size
        if max_pdu and len(command) + 7 > max_pdu:
            return False
        return self.dul.send_pdata_now(context_id, b"\x03" + command)

    def _send_encoded(self, primitive: Any, context_id: int) -> None:
        """pynetdicom's send_msg, its P-DATA PDUs written from this thread (DT-1 in Sta6)
        rather than queued one by one for the DUL thread.

        A C-GET sub-operation's C-STORE-RQ of a CT slice is some thirty PDUs at a peer's
        16 kB: queued, each cost a wake-up of the DUL thread, a state machine action and a
        hand-over of the GIL, most of a sub-operation's time. Written here, the PDUs of a
        message leave in writes of up to HOLD_LIMIT bytes. Every P-DATA sent from this
        association's threads takes this path or ``send_pdata_now`` (the same lock), so
        messages keep their order; with PDU-level handlers bound, or outside Sta6, the
        PDUs are queued for the DUL thread as upstream does.
        """
        if self.assoc.get_handlers(evt.EVT_DIMSE_SENT) or not self.dul._pdata_fast():
            super().send_msg(primitive, context_id)
            return
        message_class = (_RQ_TO_MESSAGE if primitive.MessageIDBeingRespondedTo is None
                         else _RSP_TO_MESSAGE)[primitive.__class__]
        message = message_class()
        message.primitive_to_message(primitive)
        message.context_id = context_id
        queued = False
        pdus = message.encode_msg(context_id, self.maximum_pdu_size)
        pdata = next(pdus, None)
        while pdata is not None:
            following = next(pdus, None)
            pdvs = [pdv for _, pdv in pdata.presentation_data_value_list]
            # held back while more of the message follows: it leaves in fewer, larger writes
            if queued or not self.dul.send_pdata_now(context_id, *pdvs, hold=following is not None):
                queued = True  # the association is ending: the rest goes the usual way
                self.dul.send_pdu(pdata)
            pdata = following


class FastAssociation(Association):
    @property
    def accepted_contexts(self) -> list:
        """As upstream, sorted once rather than on every call: a C-GET looks its storage
        contexts up for each sub-operation, and getscu proposes over a hundred. pynetdicom
        replaces the whole ``_accepted_cx`` dict when it negotiates, which renews the cache."""
        accepted = self._accepted_cx
        cached = self.__dict__.get("_sorted_accepted")
        if cached is None or cached[0] is not accepted or cached[1] != len(accepted):
            cached = (accepted, len(accepted), sorted(accepted.values(), key=lambda cx: cx.context_id))
            self.__dict__["_sorted_accepted"] = cached
        return list(cached[2])

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """As upstream, with C-STORE requests on storage contexts served by scp.faststore."""
        context = self._accepted_cx.get(context_id)
        if not is_plain_storage_request(self, msg, context):
            super()._serve_request(msg, context_id)
            return
        try:  # upstream's steps around StorageServiceClass.SCP
            self.dimse.cancel_req = {}
            self._is_paused = True
            FastStorageServiceClass(self).SCP(msg, context)
            self._is_paused = False
            self.dimse.cancel_req = {}
        except Exception as exc:  # noqa: BLE001 - as upstream: log and abort the association
            logging.getLogger("pynetdicom.association").exception(exc)
            self.abort()

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
