"""``python -m node`` commands of the client side: send, query, retrieve, jobs."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from node.config import Settings


def add_commands(sub: Any) -> None:
    """Register the client-side subcommands on the CLI's subparsers."""
    send = sub.add_parser("send", help="send stored studies or series to a remote (C-STORE)")
    send.add_argument("--to", required=True, metavar="AE", help="a remote under [remotes]")
    what = send.add_mutually_exclusive_group(required=True)
    what.add_argument("--study", action="append", metavar="UID", help="Study Instance UID (repeatable)")
    what.add_argument("--series", action="append", metavar="UID", help="Series Instance UID (repeatable)")
    send.add_argument("--calling-ae", help="calling AE title (default: node.ae_title)")
    send.add_argument("--no-progress", action="store_true")
    send.set_defaults(run=_send)

    query = sub.add_parser("query", help="C-FIND a remote and print the matches")
    query.add_argument("--remote", required=True, metavar="AE")
    query.add_argument("--level", default="STUDY", type=str.upper,
                       choices=["PATIENT", "STUDY", "SERIES", "IMAGE"])
    query.add_argument("-k", "--key", action="append", default=[], metavar="KEY=VALUE",
                       help="matching key, e.g. -k PatientID=123 -k StudyDate=20240101-")
    query.add_argument("-r", "--return-key", action="append", metavar="KEY",
                       help="return key (default: the level's usual keys)")
    query.add_argument("--root", type=str.upper, choices=["PATIENT", "STUDY"],
                       help="information model (default: Patient Root for PATIENT, else Study Root)")
    query.add_argument("--json", action="store_true")
    query.set_defaults(run=_query)

    retrieve = sub.add_parser("retrieve", help="fetch from a remote: a job the serving node runs")
    retrieve.add_argument("--from", dest="remote", required=True, metavar="AE")
    what = retrieve.add_mutually_exclusive_group(required=True)
    what.add_argument("--study", action="append", metavar="UID", help="Study Instance UID (repeatable)")
    what.add_argument("--patient", metavar="ID", help="every study of this Patient ID")
    what.add_argument("-k", "--key", action="append", metavar="KEY=VALUE",
                      help="C-FIND keys selecting the studies, e.g. -k StudyDate=20240101-")
    retrieve.add_argument("--priority", action="append", default=[], metavar="SERIES_UID",
                          help="fetch this series first (repeatable)")
    retrieve.add_argument("--method", choices=["move", "get"], help="default: [retrieve] method")
    retrieve.add_argument("--no-wait", action="store_true", help="queue the job and return")
    retrieve.add_argument("--no-progress", action="store_true")
    retrieve.set_defaults(run=_retrieve)

    jobs = sub.add_parser("jobs", help="list retrieval jobs; jobs show ID; jobs cancel ID")
    jobs.add_argument("action", nargs="?", default="list", choices=["list", "show", "cancel"])
    jobs.add_argument("id", nargs="?", type=int)
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(run=_jobs)


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _send(settings: Settings, args: argparse.Namespace) -> int:
    from db.catalogue import open_database
    from db.query import Query, retrieve_instances
    from node.runtime import configure_pynetdicom
    from scu.association import remote_named
    from scu.errors import ScuError
    from scu.store import send_instances

    configure_pynetdicom()
    _quiet_pynetdicom(args)
    if args.study:
        level, keyword, uids = "STUDY", "StudyInstanceUID", args.study
    else:
        level, keyword, uids = "SERIES", "SeriesInstanceUID", args.series
    db = open_database(settings.database.url, settings.data_dir)
    try:
        with db.connection_context():
            instances = retrieve_instances(Query(level=level, matchers=((keyword, "\\".join(uids)),)))
    finally:
        db.close()
    if not instances:
        return _fail(f"no stored instances match {keyword} {', '.join(uids)}", 1)
    try:
        remote = remote_named(settings, args.to)
        with _progress(len(instances), f"sending to {remote.ae_title}",
                       not args.no_progress and sys.stderr.isatty()) as advance:
            summary = send_instances(settings, remote, instances, calling_ae=args.calling_ae,
                                     on_result=advance)
    except ScuError as exc:
        return _fail(str(exc))
    print(f"sent: {summary.count('success')}")
    print(f"warnings: {summary.count('warning')}")
    print(f"failed: {len(summary.failed)}")
    for result in summary.failed:
        status = f"0x{result.status:04X}" if result.status is not None else "not sent"
        print(f"  {result.sop_instance_uid}: {status} {result.error}".rstrip())
    return 0 if not summary.failed else 1


@contextmanager
def _progress(total: int, label: str, enabled: bool) -> Iterator[Callable[..., None]]:
    """A rich progress bar on a terminal; a no-op otherwise."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        disable=not enabled)
    task = progress.add_task(label, total=total)
    with progress:
        yield lambda *_: progress.advance(task)


def _query(settings: Settings, args: argparse.Namespace) -> int:
    from scu.association import remote_named
    from scu.errors import ScuError
    from scu.find import DEFAULT_RETURN_KEYS, parse_key, query_remote

    _quiet_pynetdicom(args)
    try:
        matchers = [parse_key(k) for k in args.key]
        remote = remote_named(settings, args.remote)
        keys = tuple(args.return_key) if args.return_key else DEFAULT_RETURN_KEYS[args.level]
        rows = query_remote(settings, remote, args.level, matchers, keys, args.root)
    except ValueError as exc:
        return _fail(str(exc))
    except ScuError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return 0
    columns = list(dict.fromkeys([*(k for k, _ in matchers), *keys]))
    _print_table(rows, columns, f"{len(rows)} {args.level.lower()} match(es) on {remote.ae_title}")
    return 0


def _print_table(rows: list[dict[str, str]], columns: list[str], title: str) -> None:
    """A table as wide as its longest values: UIDs are never folded across lines."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    widths = [max([len(c), *(len(r.get(c, "")) for r in rows)]) for c in columns]
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*(row.get(c, "") for c in columns))
    Console(soft_wrap=True, width=max(sum(widths) + 3 * len(columns) + 1, 80)).print(table)


def _quiet_pynetdicom(args: argparse.Namespace) -> None:
    """pynetdicom logs every request at INFO; a client command shows its own result instead."""
    import logging

    if not args.verbose:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _catalogue(settings: Settings):  # noqa: ANN202 - a peewee Database
    from db.catalogue import open_database

    return open_database(settings.database.url, settings.data_dir)


def _retrieve(settings: Settings, args: argparse.Namespace) -> int:
    """Queue the job and follow it. pynetdicom is not imported here (the serving node does the
    DIMSE work): it is most of this command's start-up time."""
    from scu.jobs import create_job

    remote = args.remote.strip()
    if remote not in settings.remotes:
        known = ", ".join(sorted(settings.remotes)) or "none"
        return _fail(f"{remote} is not under [remotes] in the config (known: {known})")
    if args.study:
        selection = [("StudyInstanceUID", "\\".join(args.study))]
    elif args.patient:
        selection = [("PatientID", args.patient)]
    else:
        from scu.find import parse_key

        try:
            selection = [parse_key(k) for k in args.key]
        except ValueError as exc:
            return _fail(str(exc))
    method = args.method or settings.retrieve.method
    db = _catalogue(settings)
    with db.connection_context():
        job_id = create_job(remote, method, selection, args.priority)
    print(f"retrieval job {job_id}: C-{method.upper()} from {remote}, "
          + " ".join(f"{k}={v}" for k, v in selection))
    if args.no_wait:
        return 0
    return _follow(db, job_id, not args.no_progress and sys.stderr.isatty())


MAX_SERIES_BARS = 12  # more series than this: the first ones get bars, all count in the total
FOLLOW_INTERVAL = 0.1  # seconds between looks at the job (reads only): the summary follows its end at once


class JobProgress:
    """The live view of a job: a bar for the whole job, then one bar per series (instances
    received of expected), the series being fetched first, as the node fetches them."""

    def __init__(self, progress: Any) -> None:  # a rich.progress.Progress
        self.progress = progress
        self.total = progress.add_task("waiting for the serving node", total=None)
        self.series: dict[str, Any] = {}

    def update(self, view: Any, series: list[Any]) -> None:  # scu.jobs.JobView, [SeriesProgress]
        if not view.planned:
            if view.state == "queued":
                self.progress.update(self.total, description=f"querying {view.remote}")
            return
        self.progress.update(self.total, total=view.expected, completed=sum(s.received for s in series),
                             description=f"{view.remote}: {view.series_done}/{view.series} series")
        for s in series[:MAX_SERIES_BARS]:
            label = f"  series {s.series_number if s.series_number is not None else s.rank + 1}" \
                    f" {s.modality or ''} ...{s.series_uid[-8:]}" + (" failed" if s.state == "failed" else "")
            if s.series_uid not in self.series:
                self.series[s.series_uid] = self.progress.add_task(label, total=s.expected or None)
            self.progress.update(self.series[s.series_uid], description=label, total=s.expected or None,
                                 completed=s.received)


def _follow(db, job_id: int, show_progress: bool) -> int:  # noqa: ANN001
    """Follow the job from the catalogue until it ends; the serving node runs it."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from scu.jobs import get_job, job_outcome, series_progress

    started = time.monotonic()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=not show_progress) as progress:
        bars = JobProgress(progress)
        while True:
            with db.connection_context():
                view = get_job(job_id)
                series = series_progress(job_id) if view is not None and view.planned else []
            assert view is not None
            bars.update(view, series)
            if view.finished:
                break
            if view.state == "queued" and time.monotonic() - started > 5 and not _owned(db, job_id):
                print(f"no serving node has taken job {job_id} (is `python -m node serve` running?); "
                      "it starts when one does. Follow it with `python -m node jobs show "
                      f"{job_id}`.", file=sys.stderr)
                return 0
            time.sleep(FOLLOW_INTERVAL)
    with db.connection_context():
        outcome = job_outcome(job_id)
    _print_summary(view, time.monotonic() - started, outcome)
    return 0 if view.state == "completed" else 1


def _owned(db, job_id: int) -> bool:  # noqa: ANN001
    from db.models import RetrieveJob

    with db.connection_context():
        return RetrieveJob.get_by_id(job_id).owner is not None


def _print_summary(view, seconds: float | None = None, outcome=None) -> None:  # noqa: ANN001 - scu.jobs
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    print(f"job {view.id} {view.state}{took}: {view.received} of {view.expected} instances, "
          f"{view.series_done} of {view.series} series from {view.remote} (C-{view.method.upper()})")
    if outcome is not None:
        print(f"fetched: {outcome.fetched}, already present: {outcome.present}, failed: {outcome.failed}")
    if view.failed or view.series_failed:
        print(f"failed: {view.series_failed} series, {view.failed} sub-operations")
    if view.last_error and view.state != "completed":
        print(f"last error: {view.last_error}")


def _jobs(settings: Settings, args: argparse.Namespace) -> int:
    from scu.jobs import get_job, job_outcome, list_jobs, request_cancel, series_rows

    db = _catalogue(settings)
    with db.connection_context():
        if args.action == "list":
            views = list_jobs()
            if args.json:
                print(json.dumps([v.as_json() for v in views], indent=1))
                return 0
            columns = ["id", "state", "remote", "method", "selection", "series", "instances",
                       "failed", "attempts", "updated", "last error"]
            rows = [{"id": str(v.id), "state": v.state, "remote": v.remote, "method": v.method,
                     "selection": " ".join(f"{k}={val}" for k, val in v.selection),
                     "series": f"{v.series_done}/{v.series}", "instances": f"{v.received}/{v.expected}",
                     "failed": str(v.failed), "attempts": str(v.attempts), "updated": v.updated_at,
                     "last error": (v.last_error or "")[:80]} for v in views]
            _print_table(rows, columns, f"{len(views)} retrieval job(s)")
            return 0
        if args.id is None:
            return _fail(f"jobs {args.action} needs a job ID")
        view = request_cancel(args.id) if args.action == "cancel" else get_job(args.id)
        if view is None:
            return _fail(f"no retrieval job {args.id}", 1)
        series = series_rows(args.id)
        outcome = job_outcome(args.id) if view.finished else None
    if args.json:
        print(json.dumps({**view.as_json(), "series_detail": series}, indent=1, default=str))
        return 0
    if args.action == "cancel":
        print(f"job {view.id}: {view.state}" + (" (cancel requested; it stops after the current "
                                                 "sub-operation)" if not view.finished else ""))
        return 0
    _print_summary(view, outcome=outcome)
    columns = ["rank", "series_uid", "modality", "state", "expected", "received", "failed",
               "attempts", "last_error"]
    _print_table([{c: "" if r[c] is None else str(r[c]) for c in columns} for r in series], columns,
                 f"job {view.id} series")
    return 0
