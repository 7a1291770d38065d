"""The HTTP server inside the node's process: uvicorn on its own thread and event loop.

The node's start-up (``node.runtime.Node.start``) starts it after the DIMSE listener and its
stop ends it first, so SIGTERM stops both through the one path ``run_until_signalled``
already has; uvicorn installs no signal handlers off the main thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import uvicorn

from node.config import Settings
from node.errors import ConfigError
from web.app import create_app

log = logging.getLogger(__name__)


class RunningNodeStatus:
    """The health and metrics view of a running ``node.runtime.Node``."""

    def __init__(self, node: Any) -> None:
        self._node = node

    def dimse_listening(self) -> bool:
        server = self._node.server
        return server is not None and server.socket is not None and server.socket.fileno() >= 0

    def active_associations(self) -> int:
        ae = self._node.ae
        return len(ae.active_associations) if ae is not None else 0


class WebServer:
    def __init__(self, settings: Settings, node: Any = None, start_timeout: float = 20.0) -> None:
        self.settings = settings
        self.start_timeout = start_timeout
        app = create_app(settings, node_status=RunningNodeStatus(node) if node is not None else None,
                         ingestor=node.ingestor if node is not None else None)
        config = uvicorn.Config(app, host=settings.web.host, port=settings.web.port, log_config=None,
                                access_log=False, lifespan="off", server_header=False,
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="http-server", daemon=True)

    def start(self) -> "WebServer":
        """Returns once the socket listens; a port that cannot be bound is a ConfigError."""
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                web = self.settings.web
                raise ConfigError(f"web.port: cannot serve HTTP on {web.host}:{web.port} "
                                  "(in use, or not an address of this machine?)")
            time.sleep(0.01)
        log.info("serving HTTP on %s:%d", *self.address)
        return self

    @property
    def address(self) -> tuple[str, int]:
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return host, port

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let requests in progress finish (bounded), end the thread."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
            if self.thread.is_alive():
                self.server.force_exit = True
                self.thread.join(timeout)
