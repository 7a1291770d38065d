"""Opening associations to configured remotes: one place for AE title, timeouts and TCP_NODELAY."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from node.config import Settings
from scp.fastpath import FastRequestorAE
from scu.errors import AssociationFailed, UnknownRemote


@dataclass(frozen=True)
class Remote:
    """A peer by AE title, as configured under [remotes]."""

    ae_title: str
    host: str
    port: int


def remote_named(settings: Settings, ae_title: str) -> Remote:
    """The [remotes.AE] entry; the error lists the known ones so the config can be fixed."""
    remote = settings.remotes.get(ae_title.strip())
    if remote is None:
        known = ", ".join(sorted(settings.remotes)) or "none"
        raise UnknownRemote(f"{ae_title} is not under [remotes] in the config (known: {known})")
    return Remote(ae_title.strip(), remote.host, remote.port)


def own_address(settings: Settings) -> Remote:
    """This node's own DIMSE listener, as a client on this machine reaches it."""
    host = settings.dicom.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return Remote(settings.node.ae_title, host, settings.dicom.port)


def set_no_delay(event: Any) -> None:
    """Nagle plus delayed ACK stalls each DIMSE message ~40 ms on loopback (DESIGN.md)."""
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def client_ae(settings: Settings, calling_ae: str | None = None, timeout: float | None = None) -> AE:
    """An AE for outgoing associations with the node's title (or ``calling_ae``) and limits."""
    ae = FastRequestorAE(ae_title=calling_ae or settings.node.ae_title)
    seconds = timeout if timeout is not None else settings.dicom.network_timeout
    ae.acse_timeout = min(30.0, seconds)
    ae.dimse_timeout = seconds
    ae.network_timeout = seconds
    ae.connection_timeout = min(10.0, seconds)
    ae.maximum_pdu_size = settings.dicom.max_pdu_length
    return ae


def associate(ae: AE, remote: Remote, contexts: Sequence[PresentationContext],
              handlers: Sequence[tuple[Any, ...]] = (), **kwargs: Any) -> Association:
    """An established association with TCP_NODELAY on its socket, or AssociationFailed."""
    assoc = ae.associate(remote.host, remote.port, contexts=list(contexts), ae_title=remote.ae_title,
                         evt_handlers=[(evt.EVT_CONN_OPEN, set_no_delay), *handlers], **kwargs)
    if assoc.is_established:
        return assoc
    _close_socket(assoc)
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        detail = f"result {rj.result}, source {rj.result_source}, reason {rj.diagnostic}" if rj else ""
        raise AssociationFailed(f"{remote.ae_title} at {remote.host}:{remote.port} rejected the "
                                f"association ({detail})")
    if assoc.is_aborted:
        raise AssociationFailed(f"{remote.ae_title} at {remote.host}:{remote.port} aborted the "
                                "association request")
    raise AssociationFailed(f"no association with {remote.ae_title} at {remote.host}:{remote.port} "
                            "(not listening or no answer)")


def end_association(assoc: Association) -> None:
    """Release an association that is still up; abort one the peer has already aborted or
    dropped. A release then would wait the whole ACSE timeout for an answer that cannot come:
    pynetdicom's DUL closes the socket, queues the abort indication and wakes the waiting
    request (AA-3, AA-4) before the association's ``is_established`` turns false."""
    if not assoc.is_established:
        return
    transport = assoc.dul.socket
    if transport is not None and transport._is_connected and not assoc.acse.is_aborted():
        assoc.release()
    else:
        assoc.abort()


def _close_socket(assoc: Association) -> None:
    """Close what pynetdicom leaves open after a rejection or abort. (After a refused
    connection it drops the socket unclosed, as its shutdown raises first; the garbage
    collector closes it, with a ResourceWarning.)"""
    transport = assoc.dul.socket
    raw = getattr(transport, "socket", None) if transport is not None else None
    if raw is not None:
        raw.close()


def let_reactor_resume(assoc: Association, timeout: float = 1.0) -> None:
    """Call between requests sent back to back on one association (C-STOREs of a series,
    the C-FINDs of a retrieval plan, its C-MOVEs).

    pynetdicom pauses the association's reactor thread for a request by clearing an event
    and waiting for its ``_is_paused`` flag, and resumes it when the response is in. If the
    next request comes before the reactor thread has woken up, the flag still says "paused"
    from the last one, the request goes out, and the reactor, waking, takes the response off
    the queue as an "unexpected C-STORE service message": the sender then waits the whole
    DIMSE timeout and aborts (or, for a C-FIND, silently misses that answer). Seen with files sent by path (nothing to encode between two
    requests) on a loaded machine. Waiting here until the reactor has woken closes that
    window. Not needed, and skipped, when called from the reactor's own thread (C-GET).
    """
    if threading.current_thread() is assoc or not assoc._reactor_checkpoint.is_set():
        return  # the reactor's own thread (C-GET), or kept paused (scu.direct_store)
    deadline = time.monotonic() + timeout
    while getattr(assoc, "_is_paused", False) and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.0001)


def status_of(rsp: Any) -> int | None:
    """The Status of a response Dataset; None when pynetdicom got no valid answer."""
    status = getattr(rsp, "Status", None) if rsp is not None else None
    return int(status) if status is not None else None
