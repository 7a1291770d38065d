"""The forwarding queue in the catalogue: instances waiting to be sent on to a remote.

Rows are written by ``ForwardQueue.on_indexed``, which the catalogue writer calls inside the
same transaction that commits the instance rows (db.writer): an instance acknowledged to its
sender is queued for forwarding in the same commit, without a transaction of its own, and a
crash can never leave one without the other. The sending side (scu.forward) claims rows in
batches, deletes what was delivered and records failures with a retry time, so the queue
survives a downed destination and a restart. No pynetdicom here (shared/STYLE.md, 1).

The functions that write (claim, mark, release) are run by the catalogue writer thread
(``CatalogueWriter.run``): on SQLite a second writing connection makes the writer's
read-then-write transactions fail with "database is locked" (a stale WAL snapshot cannot be
upgraded, and SQLite does not wait for that), which would refuse C-STOREs.

A row is claimed by one process at a time (``owner``, ``lease_until``), so several node
processes on one PostgreSQL catalogue never send the same row at once.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Protocol, Sequence

from peewee import JOIN, AutoField, CharField, DateTimeField, IntegerField, TextField, fn

from db.models import ALL_MODELS, BaseModel, Instance, database

if TYPE_CHECKING:  # db.catalogue imports db.models, which registers this module's table
    from db.catalogue import IndexResult, InstanceRecord

QUEUED = "queued"
FAILED = "failed"  # gave up after max attempts or a final status; the reason is kept


class ForwardItem(BaseModel):
    """One instance to send to one destination (delivered rows are deleted)."""

    id = AutoField()
    destination = CharField(max_length=16)
    sop_instance_uid = CharField(max_length=64)
    state = CharField(max_length=8, default=QUEUED)
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(null=True)
    last_error = TextField(null=True)
    owner = CharField(max_length=128, null=True)
    lease_until = DateTimeField(null=True)
    created_at = DateTimeField()
    updated_at = DateTimeField()

    class Meta:
        table_name = "forward_item"
        indexes = ((("destination", "state", "id"), False),)


ALL_MODELS.append(ForwardItem)
_INSERT = ('INSERT INTO "forward_item" ("destination", "sop_instance_uid", "state", "attempts", '
           '"created_at", "updated_at") VALUES (?, ?, ?, 0, ?, ?)')


class Rule(Protocol):
    """What the queue needs of a ``[[forward]]`` rule (node.config.ForwardRule)."""

    to: str

    def matches(self, modality: str | None, calling_ae: str | None) -> bool: ...


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class ForwardQueue:
    """Turns committed instance rows into queue rows for every matching rule."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.added = threading.Event()  # set when rows were queued: the forwarder looks at once

    def on_indexed(self, pairs: Sequence[tuple[InstanceRecord, IndexResult]]) -> None:
        """Called by the catalogue writer inside its transaction, for each batch it commits.

        A prepared INSERT, not a peewee query: on one association every instance is a batch
        of its own, and building the query through peewee cost more than running it.
        """
        now = utcnow()
        rows = [(destination, record.sop_instance_uid, QUEUED, now, now)
                for record, result in pairs if result.outcome.value != "duplicate"
                for destination in dict.fromkeys(  # two rules to one place: one row
                    rule.to for rule in self.rules
                    if rule.matches(record.attrs.get("modality"), record.source_ae))]
        if not rows:
            return
        db = database.obj
        sql = _INSERT.replace("?", db.param)
        for row in rows:
            db.execute_sql(sql, row)
        self.added.set()


@dataclass(frozen=True)
class QueuedInstance:
    """A claimed queue row with what the C-STORE SCU needs (scu.store.Sendable)."""

    item_id: int
    attempts: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str


def destinations_due(now: dt.datetime) -> list[str]:
    """Destinations with at least one queued row whose retry time has come."""
    query = (ForwardItem.select(ForwardItem.destination).distinct()
             .where((ForwardItem.state == QUEUED) & _due(now)).tuples())
    return sorted(d for (d,) in query)


def _due(now: dt.datetime):  # noqa: ANN202 - a peewee expression
    return ForwardItem.next_attempt_at.is_null() | (ForwardItem.next_attempt_at <= now)


def claim_batch(destination: str, me: str, limit: int, lease: dt.timedelta,
                owner_gone: Callable[[str], bool]) -> list[QueuedInstance]:
    """Take up to ``limit`` due rows of one destination, oldest first, for this process.

    Rows held by a process that is gone (``owner_gone``) or whose lease ran out are taken
    over; a row whose instance is no longer stored is dropped (there is nothing to send).
    """
    now = utcnow()
    owners = [o for (o,) in ForwardItem.select(ForwardItem.owner).distinct().where(
        (ForwardItem.destination == destination) & ForwardItem.owner.is_null(False)
        & (ForwardItem.owner != me)).tuples() if owner_gone(o)]
    free = (ForwardItem.owner.is_null() | (ForwardItem.owner == me)
            | (ForwardItem.lease_until < now) | ForwardItem.owner.in_(owners or [""]))
    wanted = (ForwardItem.destination == destination) & (ForwardItem.state == QUEUED) & _due(now) & free
    ids = [i for (i,) in ForwardItem.select(ForwardItem.id).where(wanted)
           .order_by(ForwardItem.id).limit(limit).tuples()]
    if not ids:
        return []
    ForwardItem.update(owner=me, lease_until=now + lease).where(
        ForwardItem.id.in_(ids) & wanted).execute()
    rows = list(ForwardItem.select(ForwardItem.id, ForwardItem.attempts, ForwardItem.sop_instance_uid,
                                   Instance.sop_class_uid, Instance.transfer_syntax, Instance.path)
                .join(Instance, on=(Instance.sop_instance_uid == ForwardItem.sop_instance_uid),
                      join_type=JOIN.LEFT_OUTER)
                .where(ForwardItem.id.in_(ids) & (ForwardItem.owner == me))
                .order_by(ForwardItem.id).tuples())
    gone = [row[0] for row in rows if row[3] is None]
    if gone:
        ForwardItem.delete().where(ForwardItem.id.in_(gone)).execute()
    return [QueuedInstance(*row) for row in rows if row[3] is not None]


def mark_delivered(item_ids: Iterable[int]) -> None:
    ids = list(item_ids)
    if ids:
        ForwardItem.delete().where(ForwardItem.id.in_(ids)).execute()


def mark_failed_attempts(failures: Sequence[tuple[int, str, dt.datetime | None]]) -> None:
    """(item id, reason, retry at): counted attempts; no retry time means it gave up."""
    now = utcnow()
    for item_id, reason, retry_at in failures:
        ForwardItem.update({ForwardItem.attempts: ForwardItem.attempts + 1,
                            ForwardItem.last_error: reason[:1000],
                            ForwardItem.next_attempt_at: retry_at,
                            ForwardItem.state: QUEUED if retry_at is not None else FAILED,
                            ForwardItem.owner: None, ForwardItem.lease_until: None,
                            ForwardItem.updated_at: now}).where(ForwardItem.id == item_id).execute()


def release(item_ids: Iterable[int], reason: str | None = None) -> None:
    """Hand rows back without counting an attempt (destination unreachable, or stopping)."""
    ids = list(item_ids)
    if not ids:
        return
    updates = {ForwardItem.owner: None, ForwardItem.lease_until: None, ForwardItem.updated_at: utcnow()}
    if reason is not None:
        updates[ForwardItem.last_error] = reason[:1000]
    ForwardItem.update(updates).where(ForwardItem.id.in_(ids)).execute()


def release_all(me: str) -> None:
    """At a clean stop: every row this process holds goes back to the queue."""
    ForwardItem.update(owner=None, lease_until=None).where(ForwardItem.owner == me).execute()


def queue_counts() -> dict[tuple[str, str], int]:
    """(destination, state) -> rows: what is waiting and what gave up."""
    query = (ForwardItem.select(ForwardItem.destination, ForwardItem.state, fn.COUNT(ForwardItem.id))
             .group_by(ForwardItem.destination, ForwardItem.state).tuples())
    return {(d, s): n for d, s, n in query}
