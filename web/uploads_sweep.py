"""The serving node's sweep of abandoned uploads: ``UploadSessions.expire_abandoned`` every
``uploads.sweep_interval_seconds`` on a thread of its own, started and stopped by node.runtime."""

from __future__ import annotations

import logging
import threading

from web.uploads_service import UploadSessions

log = logging.getLogger(__name__)


class ExpirySweeper:
    def __init__(self, sessions: UploadSessions) -> None:
        self.sessions = sessions
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upload-expiry", daemon=True)

    def start(self) -> "ExpirySweeper":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                self.sessions.expire_abandoned()
            except Exception:  # noqa: BLE001 - a failed sweep is retried at the next interval
                log.exception("the upload expiry sweep failed")
            if self._stop.wait(self.sessions.limits.sweep_interval_seconds):
                return
