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
