"""C-STORE requests served without pynetdicom's per-request primitive work (fast path).

pynetdicom's ``StorageServiceClass.SCP`` builds a response primitive (its setters validate
each UID again), runs the handler inside ``attempt``, validates the returned status into the
primitive and encodes it: about a fifth of a small C-STORE's CPU here, on the path every
image waits for. ``FastStorageServiceClass`` does the same steps in the same order, and when
the handler answers with a plain status code it sends the response command set encoded
directly (the seven elements ``scp.fastpath`` encodes for any plain C-STORE-RSP). A status
Dataset (a failure with an Error Comment), a handler exception, PDU-level handlers or an
association that is not plainly established take pynetdicom's own code.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pynetdicom import _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

LOGGER = logging.getLogger("pynetdicom.service_class")
HANDLER_FAILURE = 0xC211  # what pynetdicom answers when the handler raised


def is_plain_storage_request(assoc: Any, msg: Any, context: Any) -> bool:
    """Whether pynetdicom would serve ``msg`` with StorageServiceClass on ``context``
    (Association._serve_request: a valid request, no SOP Class Common Extended
    Negotiation, not the unrestricted storage service)."""
    if type(msg) is not C_STORE or context is None or assoc._sent_release:
        return False
    if _config.UNRESTRICTED_STORAGE_SERVICE or not msg.is_valid_request:
        return False
    class_uid = msg.AffectedSOPClassUID
    if class_uid in assoc.acceptor.accepted_common_extended:
        return False
    known = assoc.__dict__.setdefault("_storage_classes", {})
    if class_uid not in known:
        known[class_uid] = uid_to_service_class(class_uid) is StorageServiceClass
    return known[class_uid]


class FastStorageServiceClass(StorageServiceClass):
    def SCP(self, req: C_STORE, context: Any) -> None:  # noqa: N802 - pynetdicom's name
        assoc = self.assoc
        cx_id = int(context.context_id)
        # as pynetdicom's ``attempt``: a handler that aborts must not wait for the reactor
        assoc.abort = assoc._abort_nonblocking
        try:
            status = evt.trigger(assoc, evt.EVT_C_STORE, {"request": req, "context": context.as_tuple})
        except Exception as exc:  # noqa: BLE001 - as ``attempt``: log, answer 0xC211, stop
            LOGGER.error("Exception in handler bound to 'evt.EVT_C_STORE'")
            LOGGER.exception(exc)
            self._respond(req, cx_id, HANDLER_FAILURE)
            return
        finally:
            assoc.abort = assoc._abort_blocking
        if req._dataset_file:
            req._dataset_file.close()
            try:
                os.unlink(req._dataset_file.name)
            except OSError:
                pass
        if not assoc.is_established:
            return
        if type(status) is int:
            if not self.is_valid_status(status):
                LOGGER.warning(f"Unknown status value returned by callback - 0x{status:04X}")
            self._respond(req, cx_id, status)
            return
        self.dimse.send_msg(self.validate_status(status, _response(req)), cx_id)

    def _respond(self, req: C_STORE, cx_id: int, status: int) -> None:
        send_direct = getattr(self.dimse, "send_store_response", None)
        if send_direct is None or not send_direct(cx_id, req, status):
            rsp = _response(req)
            rsp.Status = status
            self.dimse.send_msg(rsp, cx_id)


def _response(req: C_STORE) -> C_STORE:
    """The response primitive pynetdicom's StorageServiceClass builds for ``req``."""
    rsp = C_STORE()
    rsp.MessageID = req.MessageID
    rsp.MessageIDBeingRespondedTo = req.MessageID
    rsp.AffectedSOPInstanceUID = req.AffectedSOPInstanceUID
    rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
    return rsp
