"""Forwarding (auto-routing): send queued instances on to their destinations.

The queue is in the catalogue (db.forwarding), filled in the same commit that stores each
instance matching a ``[[forward]]`` rule. One thread of the serving node takes due rows per
destination in batches of ``BATCH`` and sends each batch over one association with the one
C-STORE SCU (scu.store). The retry policy is retrieval's (``[retrieve]`` max_attempts,
retry_delay, max_retry_delay; scu.runner.backoff: doubling, capped, jittered):

- an instance the destination failed with a retryable status (0xA7xx out of resources and the
  other non-final ones of scu.errors), or that was not sent because the association was lost,
  is tried again after a backoff, and given up after ``max_attempts`` with the reason kept in
  its row (state ``failed``); a final status (SOP class not supported, not authorised, data
  set does not match) or an instance that cannot be encoded for the peer gives up at once;
- a destination that refuses or does not answer the association holds its whole queue: no
  instance's attempts are counted and nothing is given up; the destination is tried again
  after a growing backoff, so a destination that is down for hours loses nothing and
  catches up when it is back (after a restart too: the rows are in the catalogue).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from dataclasses import dataclass

from db import forwarding
from db.forwarding import QueuedInstance
from db.models import database
from db.writer import CatalogueWriter
from node.config import Settings
from scu.association import remote_named
from scu.errors import AssociationFailed, UnknownRemote, is_retryable_status
from scu.jobs import owner_alive
from scu.runner import backoff
from scu.store import StoreResult, send_instances

log = logging.getLogger(__name__)

BATCH = 200  # instances per association: a 500-slice study goes in three
POLL = 1.0  # seconds between looks at the queue when nothing wakes the thread
# at most this often even when woken: while a scanner sends, every group commit wakes the
# thread, and a look per commit would take CPU from the ingest it follows; instances that
# arrive meanwhile go in the same batch
MIN_INTERVAL = 0.25
LEASE = dt.timedelta(minutes=10)  # a batch held longer than this by a silent process is taken over
DUPLICATE = 0x0111  # the destination already holds the instance: it has arrived


@dataclass
class _Hold:
    """A destination that refused or did not answer: not tried again before ``until``."""

    failures: int
    until: dt.datetime


def retryable(result: StoreResult) -> bool:
    """Whether a later attempt may succeed: a lost association or a non-final status.

    A result without a status was either not sent because the association went away (the
    sender says so) or could not be encoded for this peer, which will not change.
    """
    if result.status is None:
        return "association" in result.error
    return is_retryable_status(result.status)


class Forwarder:
    """The sending thread; ``wake`` is set by the queue when new rows are committed.

    It reads the queue on its own connection and hands every write to ``writer`` (the
    catalogue's single writer thread; see db.forwarding).
    """

    def __init__(self, settings: Settings, writer: CatalogueWriter, wake: threading.Event,
                 port: int) -> None:
        self.settings = settings
        self.writer = writer
        self.me = f"{socket.gethostname()}/{settings.node.ae_title}/{port}#{os.getpid()}"
        self._wake = wake
        self._stop = threading.Event()
        self._holds: dict[str, _Hold] = {}
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)

    def start(self) -> "Forwarder":
        self._thread.start()
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Stop between two instances; rows not sent go back to the queue for the next start."""
        self._stop.set()
        self._wake.set()
        self._thread.join(grace + self.settings.dicom.network_timeout)
        self.writer.run(lambda: forwarding.release_all(self.me))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                with database.connection_context():
                    self._tick()
            except Exception:  # noqa: BLE001 - a catalogue hiccup must not end forwarding
                log.exception("forwarding: a pass over the queue failed; trying again")
            if self._stop.wait(MIN_INTERVAL):
                return
            self._wake.wait(POLL - MIN_INTERVAL)

    def _tick(self) -> None:
        now = forwarding.utcnow()
        for destination in forwarding.destinations_due(now):
            hold = self._holds.get(destination)
            if hold is not None and hold.until > now:
                continue
            while not self._stop.is_set():
                batch = self.writer.run(lambda: forwarding.claim_batch(
                    destination, self.me, BATCH, LEASE, self._gone))
                if not batch or not self._send(destination, batch):
                    break

    def _gone(self, owner: str) -> bool:
        return not owner_alive(owner, self.me)

    def _send(self, destination: str, batch: list[QueuedInstance]) -> bool:
        """One batch over one association; False when the destination could not be reached."""
        ids_by_uid: dict[str, list[QueuedInstance]] = {}
        for item in batch:
            ids_by_uid.setdefault(item.sop_instance_uid, []).append(item)
        unique = [items[0] for items in ids_by_uid.values()]
        try:
            remote = remote_named(self.settings, destination)
            summary = send_instances(self.settings, remote, unique, cancelled=self._stop.is_set)
        except UnknownRemote as exc:  # the rule was removed from the config with rows queued
            failed = [(i.item_id, str(exc), None) for i in batch]
            self.writer.run(lambda: forwarding.mark_failed_attempts(failed))
            return False
        except AssociationFailed as exc:
            hold = self._holds.get(destination)
            failures = (hold.failures if hold else 0) + 1
            delay = backoff(self.settings, failures)
            self._holds[destination] = _Hold(failures, forwarding.utcnow() + delay)
            log.warning("forwarding to %s: %s; %d queued instance(s) wait, next try in %.0f s",
                        destination, exc, len(batch), delay.total_seconds())
            self.writer.run(lambda: forwarding.release([i.item_id for i in batch], str(exc)))
            return False
        self._holds.pop(destination, None)
        self._record(destination, summary.results, ids_by_uid)
        return True

    def _record(self, destination: str, results: list[StoreResult],
                ids_by_uid: dict[str, list[QueuedInstance]]) -> None:
        delivered: list[int] = []
        failures: list[tuple[int, str, dt.datetime | None]] = []
        max_attempts = self.settings.retrieve.max_attempts
        for result in results:
            items = ids_by_uid.pop(result.sop_instance_uid, [])
            if result.outcome != "failure" or result.status == DUPLICATE:
                delivered += [i.item_id for i in items]
                continue
            status = f"0x{result.status:04X}" if result.status is not None else "not sent"
            reason = f"{status}: {result.error}" if result.error else status
            for item in items:
                attempts = item.attempts + 1
                final = not retryable(result) or attempts >= max_attempts
                log.warning("forwarding %s to %s, attempt %d: %s%s", item.sop_instance_uid,
                            destination, attempts, reason, ", giving up" if final else ", will retry")
                retry_at = None if final else forwarding.utcnow() + backoff(self.settings, attempts)
                failures.append((item.item_id, reason, retry_at))
        unsent = [i.item_id for items in ids_by_uid.values() for i in items]  # stopped mid-batch

        def write() -> None:
            forwarding.mark_delivered(delivered)
            forwarding.mark_failed_attempts(failures)
            forwarding.release(unsent)

        self.writer.run(write)
        if delivered:
            log.info("forwarded %d instance(s) to %s", len(delivered), destination)
