"""The serving node's retrieval job runner: takes jobs from the catalogue, runs at most
``[retrieve] max_associations`` associations at once, retries with backoff, resumes.

One thread polls the catalogue (new jobs, cancel requests) and hands planning and series
fetches to a pool of ``max_associations`` threads, so the remote never sees more concurrent
associations from this node. A series that fails is tried again after an exponentially
growing delay with jitter (``retry_delay`` doubling up to ``max_retry_delay``, times 0.5-1.5)
until ``max_attempts``; out of resources (0xA7xx), refused or dropped associations are
retryable, an unknown destination or a bad identifier is final (scu.errors). Every outcome
is written to the job's rows at once, so ``node jobs`` and ``node retrieve`` follow it and a
restarted node continues where it stopped.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pynetdicom.association import Association

from db.models import RetrieveSeries, database
from node.config import Settings
from node.ingest import Ingestor
from scu import jobs
from scu.errors import ScuError
from scu.retrieve import Fetcher, plan_job

log = logging.getLogger(__name__)

POLL = 0.1  # seconds between looks at the catalogue for new jobs and cancel requests (reads, unless a job is taken)
RENEW = jobs.LEASE / 3  # lease renewals are writes: few, as they compete with ingest commits


def backoff(settings: Settings, attempt: int) -> dt.timedelta:
    """Delay before attempt ``attempt + 1``: doubling from retry_delay, capped, jittered."""
    r = settings.retrieve
    delay = min(r.max_retry_delay, r.retry_delay * 2 ** max(0, attempt - 1))
    return dt.timedelta(seconds=delay * random.uniform(0.5, 1.5))


class RetrieveRunner:
    def __init__(self, settings: Settings, ingestor: Ingestor, port: int) -> None:
        self.settings = settings
        # who runs a job: this node (host, AE title, DIMSE port) in this process
        self.me = f"{socket.gethostname()}/{settings.node.ae_title}/{port}#{os.getpid()}"
        self.fetcher = Fetcher(settings, ingestor, self._register)
        self._slots = settings.retrieve.max_associations
        self._pool = ThreadPoolExecutor(self._slots, thread_name_prefix="retrieve")
        self._tasks: dict[tuple[str, int], tuple[int, Future[Any]]] = {}  # key -> (job id, future)
        self._cancel: dict[int, threading.Event] = {}
        self._open: dict[int, Association] = {}  # thread id -> association in use
        self._lock = threading.Lock()
        self._renewed = jobs.utcnow()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retrieve-jobs", daemon=True)

    def start(self) -> "RetrieveRunner":
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, grace: float = 10.0) -> None:
        """Cancel what runs (C-CANCEL, then abort after ``grace`` s) and hand the jobs back."""
        self._stop.set()
        self._wake.set()
        for event in list(self._cancel.values()):
            event.set()
        self._thread.join()
        futures = [f for _, f in self._tasks.values()]
        for future in futures:
            try:
                future.result(timeout=grace)
            except TimeoutError:
                break
            except Exception:  # noqa: BLE001 - already logged by the task
                pass
        with self._lock:
            for assoc in self._open.values():
                assoc.abort()
        self._pool.shutdown(wait=True)
        with database.connection_context():
            jobs.release_jobs(self.me)

    def _register(self, assoc: Association | None) -> None:
        with self._lock:
            if assoc is None:
                self._open.pop(threading.get_ident(), None)
            else:
                self._open[threading.get_ident()] = assoc

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with database.connection_context():
                    self._tick()
            except Exception:  # noqa: BLE001 - a catalogue hiccup must not end the runner
                log.exception("retrieval jobs: scheduling failed; trying again")
            self._wake.wait(POLL)
            self._wake.clear()

    def _tick(self) -> None:
        self._tasks = {k: v for k, v in self._tasks.items() if not v[1].done()}
        owned = jobs.claim_jobs(self.me)
        if owned and jobs.utcnow() - self._renewed > RENEW:
            jobs.renew_leases(self.me)
            self._renewed = jobs.utcnow()
        for job_id in owned:
            job = jobs.job_row(job_id)
            cancel = self._cancel.setdefault(job_id, threading.Event())
            if job.cancel_requested:
                cancel.set()
            running = any(owner == job_id for owner, _ in self._tasks.values())
            if cancel.is_set():
                if not running:
                    state = jobs.finish_if_done(job_id)
                    log.info("retrieval job %d %s", job_id, state)
                    self._cancel.pop(job_id, None)
                continue
            if not job.planned:
                if not running and self._free() and self._due(job.next_attempt_at):
                    self._submit(("plan", job_id), job_id, self._plan, job_id)
                continue
            busy = {key[1] for key in self._tasks if key[0] == "series"}
            for row in jobs.ready_series(job_id, busy, self._free()):
                self._submit(("series", row.id), job_id, self._fetch, job_id, row.id)
                running = True
            if not running:
                state = jobs.finish_if_done(job_id)
                if state:
                    log.info("retrieval job %d %s", job_id, state)
                    self._cancel.pop(job_id, None)

    def _free(self) -> int:
        return self._slots - len(self._tasks)

    @staticmethod
    def _due(when: dt.datetime | None) -> bool:
        return when is None or when <= jobs.utcnow()

    def _submit(self, key: tuple[str, int], job_id: int, fn: Any, *args: Any) -> None:
        future = self._pool.submit(self._guarded, fn, *args)
        future.add_done_callback(lambda _: self._wake.set())
        self._tasks[key] = (job_id, future)

    @staticmethod
    def _guarded(fn: Any, *args: Any) -> None:
        try:
            with database.connection_context():
                fn(*args)
        except Exception:  # noqa: BLE001 - keep the pool alive; the job stays pending
            log.exception("retrieval task %s%r failed", fn.__name__, args)

    def _plan(self, job_id: int) -> None:
        job = jobs.job_row(job_id)
        try:
            plans = plan_job(self.settings, job)
        except ScuError as exc:
            retry = exc.retryable and job.attempts + 1 < self.settings.retrieve.max_attempts
            when = jobs.utcnow() + backoff(self.settings, job.attempts + 1) if retry else None
            log.warning("retrieval job %d: querying %s failed (%s)%s", job_id, job.remote, exc,
                        ", will retry" if retry else "")
            jobs.record_planning_failure(job_id, str(exc), when)
            return
        if not plans:
            jobs.record_planning_failure(job_id, f"nothing on {job.remote} matches the selection", None)
            return
        jobs.save_plan(job_id, plans, json.loads(job.priority))
        log.info("retrieval job %d: %d series, %d instances on %s", job_id, len(plans),
                 sum(p.expected for p in plans), job.remote)

    def _fetch(self, job_id: int, series_id: int) -> None:
        job = jobs.job_row(job_id)
        row = RetrieveSeries.get_by_id(series_id)
        cancel = self._cancel.get(job_id) or threading.Event()
        try:
            result = self.fetcher.fetch(job, row, cancel.is_set)
            failed, error, retryable, cancelled = (result.failed, result.error, result.retryable,
                                                   result.cancelled)
        except ScuError as exc:
            failed, error, retryable, cancelled = 0, str(exc), exc.retryable, False
            if self._stop.is_set():
                cancelled = True
        received = jobs.received_count(row)
        expected = row.expected
        if error is None and not expected:
            expected = received  # the remote gave no count; what arrived is the series
            RetrieveSeries.update(expected=expected).where(RetrieveSeries.id == series_id).execute()
        if cancelled:  # stopped or cancelled: not an attempt; the series waits for the next run
            jobs.record_attempt(series_id, received=received, failed=failed, error=row.last_error,
                                state="pending", retry_at=None, counted=False)
            return
        if error is None and received >= expected:
            jobs.record_attempt(series_id, received=received, failed=failed, error=None, state="done",
                                retry_at=None)
            return
        if error is None:
            error = f"the remote reported success but {received} of {expected} instances are here"
        attempts = row.attempts + 1
        final = not retryable or attempts >= self.settings.retrieve.max_attempts
        log.warning("retrieval job %d, series %s: attempt %d: %s%s", job_id, row.series_uid, attempts,
                    error, "" if final else ", will retry")
        jobs.record_attempt(series_id, received=received, failed=failed, error=error,
                            state="failed" if final else "pending",
                            retry_at=None if final else jobs.utcnow() + backoff(self.settings, attempts))
