"""The DIMSE application entity: contexts, limits and the handlers bound to events."""

from __future__ import annotations

import logging
import socket
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from node.config import Settings
from node.ingest import Ingestor
from scp.fastpath import FastRequestorAE
from scp.find import handle_find
from scp.retrieve import handle_get, handle_move
from scp.storage import handle_echo, handle_store

log = logging.getLogger(__name__)

STORAGE_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]


QUERY_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def build_ae(settings: Settings, fast_path: bool = True) -> AE:
    """An AE that accepts Verification and every storage SOP class pynetdicom knows; with
    ``fast_path``, its outgoing associations (C-MOVE sub-operations) are scp.fastpath's."""
    ae = (FastRequestorAE if fast_path else AE)(ae_title=settings.node.ae_title)
    ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for find_model in (PatientRootQueryRetrieveInformationModelFind,
                       StudyRootQueryRetrieveInformationModelFind):
        ae.add_supported_context(find_model, QUERY_TRANSFER_SYNTAXES)
    for retrieve_model in (PatientRootQueryRetrieveInformationModelMove,
                           StudyRootQueryRetrieveInformationModelMove,
                           PatientRootQueryRetrieveInformationModelGet,
                           StudyRootQueryRetrieveInformationModelGet):
        ae.add_supported_context(retrieve_model, QUERY_TRANSFER_SYNTAXES)
    for cx in AllStoragePresentationContexts:
        # A C-GET requestor proposes the SCP role for storage (PS3.4 C.4.3, PS3.7 D.3.3.4).
        ae.add_supported_context(cx.abstract_syntax, STORAGE_TRANSFER_SYNTAXES,
                                 scu_role=True, scp_role=True)
    ae.require_called_aet = True
    if settings.dicom.allowed_callers:
        ae.require_calling_aet = list(settings.dicom.allowed_callers)
    ae.maximum_associations = settings.dicom.max_associations
    ae.maximum_pdu_size = settings.dicom.max_pdu_length
    ae.network_timeout = settings.dicom.network_timeout
    ae.acse_timeout = 30
    ae.dimse_timeout = settings.dicom.network_timeout
    return ae


def set_no_delay(event: Any) -> None:
    """Nagle plus delayed ACK stalls each DIMSE message ~40 ms on loopback (DESIGN.md)."""
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def event_handlers(ingestor: Ingestor, settings: Settings,
                   encode_directly: bool = False) -> list[tuple[Any, ...]]:
    return [
        (evt.EVT_CONN_OPEN, set_no_delay),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [ingestor]),
        (evt.EVT_C_FIND, handle_find, [settings, encode_directly]),
        (evt.EVT_C_MOVE, handle_move, [settings]),
        (evt.EVT_C_GET, handle_get, [settings]),
    ]
