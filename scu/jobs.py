"""Retrieval jobs kept in the catalogue: created by ``node retrieve``, run by the serving node
(scu.retrieve), listed and cancelled by ``node jobs``.

A job is run by the process holding its lease (``owner``, ``lease_until``, renewed while it
runs, given back at a clean stop). A job whose lease ran out, or whose owner was this same
node (host, AE title, port) in a process that no longer exists, is taken over: a restarted
node resumes its unfinished jobs at once, and several processes on one PostgreSQL catalogue
never run the same job twice. No pynetdicom here: this is catalogue bookkeeping only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

from peewee import fn

from db.models import Instance, RetrieveJob, RetrieveSeries, Series, database

LEASE = dt.timedelta(seconds=30)
ACTIVE = ("queued", "running")
_CHUNK = 500


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class SeriesPlan:
    """One series as the remote described it (instance UIDs only when it answered IMAGE level)."""

    study_uid: str
    series_uid: str
    modality: str | None
    series_number: int | None
    instance_uids: tuple[str, ...] | None
    expected: int


@dataclass(frozen=True)
class JobView:
    id: int
    remote: str
    method: str
    selection: list[list[str]]
    state: str
    cancel_requested: bool
    planned: bool
    series: int
    series_done: int
    series_failed: int
    expected: int
    received: int
    failed: int
    attempts: int
    last_error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str

    @property
    def finished(self) -> bool:
        return self.state not in ACTIVE

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def create_job(remote: str, method: str, selection: Sequence[tuple[str, str]],
               priority: Sequence[str] = ()) -> int:
    now = utcnow()
    return RetrieveJob.insert(remote=remote, method=method, selection=json.dumps(list(selection)),
                              priority=json.dumps(list(priority)), state="queued", created_at=now,
                              updated_at=now).execute()


def _stamp(value: dt.datetime | None) -> str | None:
    return value.replace(microsecond=0).isoformat(sep=" ") if value else None


def job_view(job: RetrieveJob) -> JobView:
    counts = (RetrieveSeries.select(
        fn.COUNT(RetrieveSeries.id), fn.COALESCE(fn.SUM(RetrieveSeries.expected), 0),
        fn.COALESCE(fn.SUM(RetrieveSeries.received), 0), fn.COALESCE(fn.SUM(RetrieveSeries.failed), 0),
        fn.COALESCE(fn.SUM(RetrieveSeries.attempts), 0))
        .where(RetrieveSeries.job == job.id).tuples().get())
    received = int(counts[2]) + (_arriving(job.id) if job.state == "running" else 0)
    by_state = dict(RetrieveSeries.select(RetrieveSeries.state, fn.COUNT(RetrieveSeries.id))
                    .where(RetrieveSeries.job == job.id).group_by(RetrieveSeries.state).tuples())
    return JobView(
        id=job.id, remote=job.remote, method=job.method, selection=json.loads(job.selection),
        state=job.state, cancel_requested=bool(job.cancel_requested), planned=bool(job.planned),
        series=counts[0], series_done=by_state.get("done", 0), series_failed=by_state.get("failed", 0),
        expected=int(counts[1]), received=received, failed=int(counts[3]),
        attempts=job.attempts + int(counts[4]), last_error=job.last_error or _series_error(job.id),
        created_at=_stamp(job.created_at) or "", started_at=_stamp(job.started_at),
        finished_at=_stamp(job.finished_at), updated_at=_stamp(job.updated_at) or "")


def _arriving(job_id: int) -> int:
    """Instances of pending series held now beyond the count last recorded: live progress read
    from the catalogue's series counts, so nothing is written while instances arrive."""
    pending = (RetrieveSeries.select(RetrieveSeries.series_uid, RetrieveSeries.expected,
                                     RetrieveSeries.received)
               .where((RetrieveSeries.job == job_id) & (RetrieveSeries.state == "pending")).tuples())
    rows = {uid: (expected, received) for uid, expected, received in pending}
    if not rows:
        return 0
    held = dict(Series.select(Series.series_uid, Series.num_instances)
                .where(Series.series_uid.in_(list(rows))).tuples())
    return sum(max(0, min(held.get(uid, 0), expected or held.get(uid, 0)) - received)
               for uid, (expected, received) in rows.items())


def _series_error(job_id: int) -> str | None:
    row = (RetrieveSeries.select(RetrieveSeries.last_error)
           .where((RetrieveSeries.job == job_id) & RetrieveSeries.last_error.is_null(False))
           .order_by(RetrieveSeries.updated_at.desc()).tuples().first())
    return row[0] if row else None


def get_job(job_id: int) -> JobView | None:
    job = RetrieveJob.get_or_none(RetrieveJob.id == job_id)
    return job_view(job) if job else None


def list_jobs(limit: int = 50) -> list[JobView]:
    jobs = RetrieveJob.select().order_by(RetrieveJob.id.desc()).limit(limit)
    return [job_view(job) for job in jobs]


def series_rows(job_id: int) -> list[dict[str, Any]]:
    fields = [RetrieveSeries.rank, RetrieveSeries.study_uid, RetrieveSeries.series_uid,
              RetrieveSeries.modality, RetrieveSeries.state, RetrieveSeries.expected,
              RetrieveSeries.received, RetrieveSeries.failed, RetrieveSeries.attempts,
              RetrieveSeries.last_error]
    query = RetrieveSeries.select(*fields).where(RetrieveSeries.job == job_id).order_by(RetrieveSeries.rank)
    return list(query.dicts())


@dataclass(frozen=True)
class SeriesProgress:
    """One series of a job as the progress bar shows it: received so far of expected."""

    rank: int
    series_uid: str
    modality: str | None
    series_number: int | None
    state: str
    expected: int
    received: int


def series_progress(job_id: int) -> list[SeriesProgress]:
    """Per series in fetch order; a pending series counts what the catalogue holds now (read
    from the series' instance count, so nothing is written while instances arrive)."""
    rows = list(RetrieveSeries.select().where(RetrieveSeries.job == job_id).order_by(RetrieveSeries.rank))
    pending = [r.series_uid for r in rows if r.state == "pending"]
    held = dict(Series.select(Series.series_uid, Series.num_instances)
                .where(Series.series_uid.in_(pending or [""])).tuples())
    out = []
    for r in rows:
        received = r.received
        if r.state == "pending":
            live = held.get(r.series_uid, 0)
            received = max(received, min(live, r.expected) if r.expected else live)
        out.append(SeriesProgress(r.rank, r.series_uid, r.modality, r.series_number, r.state,
                                  r.expected, received))
    return out


@dataclass(frozen=True)
class JobOutcome:
    """What a job did, for its summary: fetched by it, already here before it, and missing."""

    fetched: int
    present: int
    failed: int


def job_outcome(job_id: int) -> JobOutcome:
    """Counted from the catalogue: an instance of the job's series stored before its plan was
    saved (``started_at``) was already present; the rest of what arrived was fetched; what
    the remote listed and is still not here failed (the job has no column of its own for
    this, and needs none: the instance rows carry their arrival time)."""
    job = RetrieveJob.get_by_id(job_id)
    present = received = failed = 0
    for row in RetrieveSeries.select().where(RetrieveSeries.job == job_id):
        received += row.received
        failed += max(0, row.expected - row.received)
        if job.started_at is None:
            continue
        uids = instance_uids_of(row)
        if uids is None:
            present += (Instance.select().join(Series).where(
                (Series.series_uid == row.series_uid) & (Instance.received_at < job.started_at)).count())
            continue
        for start in range(0, len(uids), _CHUNK):
            present += Instance.select().where(Instance.sop_instance_uid.in_(uids[start:start + _CHUNK])
                                               & (Instance.received_at < job.started_at)).count()
    present = min(present, received)
    return JobOutcome(fetched=received - present, present=present, failed=failed)


def request_cancel(job_id: int) -> JobView | None:
    """Ask for a stop; a job no process runs yet is cancelled at once. (Single statements,
    not a read-then-write transaction, which SQLite refuses while the writer commits.)"""
    now = utcnow()
    active = (RetrieveJob.id == job_id) & RetrieveJob.state.in_(ACTIVE)
    RetrieveJob.update(state="cancelled", cancel_requested=1, finished_at=now, updated_at=now).where(
        active & RetrieveJob.owner.is_null()).execute()
    RetrieveJob.update(cancel_requested=1, updated_at=now).where(active).execute()
    return get_job(job_id)


# --- what the running node does ----------------------------------------------------------------


def owner_alive(owner: str | None, me: str) -> bool:
    """Another live process of this node (same prefix, other pid) still owns the job."""
    if owner is None:
        return False
    prefix, _, pid = owner.rpartition("#")
    if prefix != me.rpartition("#")[0] or not pid.isdigit():
        return True  # another node: trust its lease
    if owner == me:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_jobs(me: str) -> list[int]:
    """Take every active job nobody runs (or whose runner is gone); return the ids now ours."""
    now = utcnow()
    claimed = []
    candidates = RetrieveJob.select(RetrieveJob.id, RetrieveJob.owner, RetrieveJob.lease_until).where(
        RetrieveJob.state.in_(ACTIVE)).order_by(RetrieveJob.id).tuples()
    for job_id, owner, lease in list(candidates):
        if owner == me:
            claimed.append(job_id)
            continue
        if owner is not None and lease is not None and lease > now and owner_alive(owner, me):
            continue
        owner_matches = RetrieveJob.owner.is_null() if owner is None else RetrieveJob.owner == owner
        taken = RetrieveJob.update(owner=me, lease_until=now + LEASE, updated_at=now).where(
            (RetrieveJob.id == job_id) & owner_matches & RetrieveJob.state.in_(ACTIVE)).execute()
        if taken:
            claimed.append(job_id)
    return claimed


def renew_leases(me: str) -> None:
    now = utcnow()
    RetrieveJob.update(lease_until=now + LEASE).where(
        (RetrieveJob.owner == me) & RetrieveJob.state.in_(ACTIVE)).execute()


def release_jobs(me: str) -> None:
    """At a clean stop: unfinished jobs go back to whoever starts next."""
    RetrieveJob.update(owner=None, lease_until=None).where(RetrieveJob.owner == me).execute()


def record_planning_failure(job_id: int, error: str, retry_at: dt.datetime | None) -> None:
    now = utcnow()
    updates: dict[Any, Any] = {RetrieveJob.attempts: RetrieveJob.attempts + 1,
                               RetrieveJob.last_error: error, RetrieveJob.updated_at: now,
                               RetrieveJob.next_attempt_at: retry_at}
    if retry_at is None:
        updates.update({RetrieveJob.state: "failed", RetrieveJob.finished_at: now})
    RetrieveJob.update(updates).where(RetrieveJob.id == job_id).execute()


def save_plan(job_id: int, plans: Sequence[SeriesPlan], priority: Sequence[str]) -> None:
    """Record the series to fetch, priority ones first; series already held count as done."""
    now = utcnow()
    order = {uid: n for n, uid in enumerate(priority)}
    ranked = sorted(enumerate(plans), key=lambda p: (order.get(p[1].series_uid, len(order)), p[0]))
    with database.atomic():
        RetrieveSeries.delete().where(RetrieveSeries.job == job_id).execute()
        for rank, (_, plan) in enumerate(ranked):
            row = RetrieveSeries.create(
                job=job_id, rank=rank, study_uid=plan.study_uid, series_uid=plan.series_uid,
                modality=plan.modality, series_number=plan.series_number, expected=plan.expected,
                instance_uids=json.dumps(plan.instance_uids) if plan.instance_uids is not None else None,
                state="pending", updated_at=now)
            received = received_count(row)
            if plan.expected and received >= plan.expected:
                RetrieveSeries.update(received=received, state="done").where(
                    RetrieveSeries.id == row.id).execute()
        RetrieveJob.update(planned=1, state="running", started_at=now, updated_at=now,
                           last_error=None).where(RetrieveJob.id == job_id).execute()


def instance_uids_of(row: RetrieveSeries) -> list[str] | None:
    return json.loads(row.instance_uids) if row.instance_uids is not None else None


def present_uids(uids: Iterable[str]) -> set[str]:
    """Which of these SOP Instance UIDs the catalogue holds."""
    uids = list(uids)
    found: set[str] = set()
    for start in range(0, len(uids), _CHUNK):
        chunk = uids[start:start + _CHUNK]
        found.update(uid for (uid,) in Instance.select(Instance.sop_instance_uid)
                     .where(Instance.sop_instance_uid.in_(chunk)).tuples())
    return found


def received_count(row: RetrieveSeries) -> int:
    """Instances of the series the catalogue holds: of the listed UIDs, else of the series."""
    uids = instance_uids_of(row)
    if uids is not None:
        return len(present_uids(uids))
    held = Series.select(Series.num_instances).where(Series.series_uid == row.series_uid).scalar()
    return int(held or 0)


def ready_series(job_id: int, busy: set[int], limit: int) -> list[RetrieveSeries]:
    """Pending series whose retry time has come, in rank order, not already being fetched."""
    now = utcnow()
    query = (RetrieveSeries.select().where(
        (RetrieveSeries.job == job_id) & (RetrieveSeries.state == "pending")
        & (RetrieveSeries.next_attempt_at.is_null() | (RetrieveSeries.next_attempt_at <= now))
        & RetrieveSeries.id.not_in(list(busy) or [-1]))
        .order_by(RetrieveSeries.rank).limit(limit))
    return list(query)


def record_attempt(series_id: int, *, received: int, failed: int, error: str | None,
                   state: str, retry_at: dt.datetime | None, counted: bool = True) -> None:
    """The outcome of one fetch: done, pending again (retry at ``retry_at``) or failed."""
    updates: dict[Any, Any] = {RetrieveSeries.received: received, RetrieveSeries.failed: failed,
                               RetrieveSeries.last_error: error, RetrieveSeries.state: state,
                               RetrieveSeries.next_attempt_at: retry_at,
                               RetrieveSeries.updated_at: utcnow()}
    if counted:
        updates[RetrieveSeries.attempts] = RetrieveSeries.attempts + 1
    RetrieveSeries.update(updates).where(RetrieveSeries.id == series_id).execute()


def finish_if_done(job_id: int) -> str | None:
    """completed, failed or cancelled once no series is pending (or a cancel was asked)."""
    job = RetrieveJob.get_by_id(job_id)
    pending = RetrieveSeries.select().where((RetrieveSeries.job == job_id)
                                            & (RetrieveSeries.state == "pending")).count()
    if job.cancel_requested:
        state = "cancelled"
    elif not job.planned or pending:
        return None
    else:
        failed = RetrieveSeries.select().where((RetrieveSeries.job == job_id)
                                               & (RetrieveSeries.state == "failed")).count()
        state = "failed" if failed else "completed"
    now = utcnow()
    RetrieveJob.update(state=state, finished_at=now, updated_at=now, owner=None, lease_until=None
                       ).where(RetrieveJob.id == job_id).execute()
    return state


def job_row(job_id: int) -> RetrieveJob:
    return RetrieveJob.get_by_id(job_id)
