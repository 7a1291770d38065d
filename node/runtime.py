"""Start and stop the node's parts in order: storage, catalogue, writer, DIMSE listener."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from pydicom import config as pydicom_config
from pynetdicom import _config as pynetdicom_config

from db.catalogue import close_database, open_database
from db.forwarding import ForwardQueue
from db.writer import CatalogueWriter
from node.config import Settings
from node.errors import ConfigError
from node.ingest import Ingestor
from node.storage import Storage

log = logging.getLogger(__name__)


class Catalogue:
    """The opened catalogue database plus its single writer thread."""

    def __init__(self, settings: Settings) -> None:
        self.db = open_database(settings.database.url, settings.data_dir)
        # [[forward]] rules: matching instances are queued in the commit that stores them
        self.forward_queue = ForwardQueue(settings.forward) if settings.forward else None
        hook = self.forward_queue.on_indexed if self.forward_queue else None
        self.writer = CatalogueWriter(self.db, on_indexed=hook).start()

    def close(self) -> None:
        self.writer.stop()
        close_database(self.db)


class Node:
    """The running node; ``start`` returns once the DIMSE listener accepts connections."""

    def __init__(self, settings: Settings, fast_path: bool = True, web: bool = False) -> None:
        self.settings = settings
        self.fast_path = fast_path
        self.web = web  # also serve the HTTP API on [web] host/port (``serve`` does)
        self.web_server: Any = None
        self.storage = Storage(settings.data_dir)
        self.catalogue: Catalogue | None = None
        self.ingestor: Ingestor | None = None
        self.ae: Any = None
        self.server: Any = None
        self.retrieval: Any = None  # scu.runner.RetrieveRunner: retrieval jobs from the catalogue
        self.upload_sweeper: Any = None  # web.uploads_service.ExpirySweeper: abandoned uploads
        self.forwarder: Any = None  # scu.forward.Forwarder: sends the forwarding queue on

    def open_store(self, clean_temp: bool = True) -> Ingestor:
        """Storage and catalogue without the network (import, reindex use this).

        An import may run beside a serving node on the same data folder: it passes
        ``clean_temp=False``, so the files that node is writing are not taken for leftovers.
        """
        configure_pynetdicom()
        if clean_temp:
            removed = self.storage.prepare()
            if removed:
                log.info("removed %d unfinished temp file(s) left by an earlier stop", removed)
        else:
            self.storage.store.mkdir(parents=True, exist_ok=True)
            self.storage.temp.mkdir(parents=True, exist_ok=True)
        self.catalogue = Catalogue(self.settings)
        self.ingestor = Ingestor(self.storage, self.catalogue.writer, self.settings.dicom.duplicate_policy)
        return self.ingestor

    def start(self) -> "Node":
        from scp.ae import build_ae, event_handlers
        from scp.answers import pass_encoded_identifiers_through
        from scp.fastpath import install_fast_path

        address = (self.settings.dicom.host, self.settings.dicom.port)
        check_can_listen(address)  # before cleaning temp files a node already running may own
        ingestor = self.open_store()
        self.ae = build_ae(self.settings, self.fast_path)
        handlers = event_handlers(ingestor, self.settings, encode_directly=self.fast_path)
        self.server = self.ae.start_server(address, block=False, evt_handlers=handlers)
        if self.fast_path:
            install_fast_path(self.server, self.storage.temp)
            pass_encoded_identifiers_through()
        log.info("%s listening for DIMSE on %s:%d", self.settings.node.ae_title, *self.dimse_address)
        from scu.runner import RetrieveRunner

        self.retrieval = RetrieveRunner(self.settings, ingestor, self.dimse_address[1]).start()
        if self.catalogue is not None and self.catalogue.forward_queue is not None:
            from scu.forward import Forwarder

            self.forwarder = Forwarder(self.settings, self.catalogue.writer,
                                       self.catalogue.forward_queue.added, self.dimse_address[1]).start()
        if self.web:
            from web.server import WebServer
            from web.uploads_service import UploadSessions
            from web.uploads_sweep import ExpirySweeper

            try:
                self.web_server = WebServer(self.settings, self).start()
            except Exception:
                self.stop()
                raise
            sessions = UploadSessions(self.settings.uploads, self.settings.data_dir, ingestor)
            self.upload_sweeper = ExpirySweeper(sessions).start()
        return self

    @property
    def dimse_address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return host, port

    def stop(self, grace: float = 10.0) -> None:
        """Close the listener, let running associations finish (abort after ``grace`` s),
        then commit what is queued."""
        if self.retrieval is not None:  # first: its C-MOVEs still need the listener to finish
            self.retrieval.stop(grace)
            self.retrieval = None
        server = self.server
        if server is not None:  # then no new association: a sender learns at once
            server.shutdown()
        if self.forwarder is not None:  # unsent rows stay queued for the next start
            self.forwarder.stop(grace)
            self.forwarder = None
        if self.web_server is not None:
            self.web_server.stop()
            self.web_server = None
        if self.upload_sweeper is not None:
            self.upload_sweeper.stop()
            self.upload_sweeper = None
        if server is not None:
            # Only established associations are running anything. A connection that closed
            # before its A-ASSOCIATE-RQ (a port check) keeps its pynetdicom thread until the
            # ACSE timeout: waiting for it would hold every stop for the whole grace.
            deadline = time.monotonic() + grace
            while (any(a.is_established for a in server.active_associations)
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            for assoc in server.active_associations:
                if assoc.is_established:
                    log.warning("aborting association with %s at shutdown", assoc.requestor.ae_title)
                assoc.abort()
            self.server = None
        if self.catalogue is not None:
            self.catalogue.close()
            self.catalogue = None


def check_can_listen(address: tuple[str, int]) -> None:
    """Fail start-up in one line when the DIMSE address is taken (most often: the node is
    already running) or cannot be bound."""
    if address[1] == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listener will
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"dicom.port: cannot listen on {address[0]}:{address[1]}: "
                              f"{exc.strerror or exc}") from None


def configure_pynetdicom() -> None:
    """Process-wide pydicom/pynetdicom settings, set at start-up, never at import (STYLE.md, 6).

    Values are stored as received, so pydicom's read validation (which warns on every
    slightly off value real modalities send) is switched off; the node checks what it needs.
    """
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = False
    # C-STORE SCU: a stored file given by path is streamed as stored, never decoded (scu.store)
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    # pretty-printing every identifier costs more than answering the query
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False


def run_until_signalled(node: Node) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly."""
    import signal

    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    node.start()
    try:
        stop.wait()
    finally:
        node.stop()
        log.info("stopped")
