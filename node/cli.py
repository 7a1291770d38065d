"""``python -m node``: serve, import, verify, reindex, stats."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from node.config import Settings, load_settings
from node.errors import ConfigError

log = logging.getLogger("node")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "needs_config", True):  # push runs on a sending site: no configuration, no catalogue
        return args.run(None, args)
    from db.catalogue import CatalogueError

    try:
        return args.run(load_settings(args.config), args)
    except (ConfigError, CatalogueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m node", description="DICOM network node")
    parser.add_argument("--config", default="config.toml", help="config file (default: ./config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the DIMSE listener and the HTTP API until SIGTERM/SIGINT")
    serve.set_defaults(run=_serve)

    imp = sub.add_parser("import", help="ingest files, folders and DICOMDIR media")
    imp.add_argument("paths", nargs="+", type=Path)
    imp.add_argument("--no-progress", action="store_true")
    imp.set_defaults(run=_import)

    verify = sub.add_parser("verify", help="check every stored file against its SHA-256")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(run=_verify)

    reindex = sub.add_parser("reindex", help="rebuild the catalogue from the stored files")
    reindex.set_defaults(run=_reindex)

    stats = sub.add_parser("stats", help="counts of patients, studies, series, instances, bytes")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(run=_stats)

    from scu.cli import add_commands

    add_commands(sub)

    from node.usercli import add_commands as add_user_commands

    add_user_commands(sub)

    from node.push import add_commands as add_push_commands

    add_push_commands(sub)
    return parser


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from node.runtime import Node, run_until_signalled

    if not args.verbose:  # a line per C-FIND match and C-MOVE/C-GET sub-operation; scp logs one per request
        logging.getLogger("pynetdicom.service_class").setLevel(logging.WARNING)
    run_until_signalled(Node(settings, web=True))
    return 0


def _progress(total: int, label: str, enabled: bool):  # noqa: ANN202 - rich or a no-op
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        disable=not enabled, transient=False)
    task = progress.add_task(label, total=total)
    return progress, lambda *_: progress.advance(task)


def _import(settings: Settings, args: argparse.Namespace) -> int:
    from node.importer import collect_files, import_files
    from node.runtime import Node

    try:
        files = collect_files(args.paths)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    node = Node(settings)
    ingestor = node.open_store(clean_temp=False)  # a node may be serving this data folder
    progress, advance = _progress(len(files), "importing", not args.no_progress and sys.stderr.isatty())
    try:
        with progress:
            summary = import_files(ingestor, files, on_progress=advance)
    finally:
        node.stop()
    print(f"stored: {summary.stored}")
    print(f"already present: {summary.already_present}")
    print(f"skipped (not DICOM): {len(summary.skipped)}")
    print(f"rejected: {len(summary.rejected)}")
    for path, reason in summary.rejected:
        print(f"  {path}: {reason}")
    return 0 if summary.ok else 1


def _with_catalogue(settings: Settings):  # noqa: ANN202
    from db.catalogue import open_database

    return open_database(settings.database.url, settings.data_dir)


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from node.maintenance import verify_files
    from node.storage import Storage

    db = _with_catalogue(settings)
    with db.connection_context():
        report = verify_files(Storage(settings.data_dir))
    if args.json:
        print(json.dumps({"checked": report.checked, "missing": [p for _, p in report.missing],
                          "corrupt": [p for _, p in report.corrupt]}))
    else:
        print(f"checked: {report.checked}")
        for sop_uid, path in report.missing:
            print(f"missing: {path} (SOP Instance {sop_uid})")
        for sop_uid, path in report.corrupt:
            print(f"corrupt: {path} (SOP Instance {sop_uid}): SHA-256 differs from the catalogue")
        print("all files match" if report.ok else
              f"{len(report.missing)} missing, {len(report.corrupt)} corrupt")
    return 0 if report.ok else 1


def _reindex(settings: Settings, args: argparse.Namespace) -> int:
    from db.models import SCHEMA_VERSION, Meta, database
    from node.maintenance import reindex
    from node.runtime import Catalogue
    from node.storage import Storage

    _reset_schema_if_outdated(settings)
    storage = Storage(settings.data_dir)
    storage.prepare()
    catalogue = Catalogue(settings)
    try:
        with database.connection_context():
            report = reindex(storage, catalogue.writer)
            Meta.replace(key="schema_version", value=str(SCHEMA_VERSION)).execute()
    finally:
        catalogue.close()
    print(f"indexed: {report.indexed}")
    print(f"duplicate copies not indexed: {len(report.duplicates)}")
    for path, reason in report.unreadable:
        print(f"unreadable: {path}: {reason}")
    return 0 if not report.unreadable else 1


def _reset_schema_if_outdated(settings: Settings) -> None:
    """reindex is the way out of an old schema: drop the tables it will rebuild."""
    from db.catalogue import CatalogueError, close_database, open_database
    from db.models import ALL_MODELS, database

    try:
        close_database(open_database(settings.database.url, settings.data_dir))
    except CatalogueError as exc:
        if "schema" not in str(exc):
            raise
        with database.connection_context():
            database.drop_tables(ALL_MODELS, safe=True)


def _stats(settings: Settings, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from db.catalogue import catalogue_stats

    db = _with_catalogue(settings)
    with db.connection_context():
        stats = catalogue_stats()
    if args.json:
        print(json.dumps(asdict(stats)))
    else:
        for key, value in asdict(stats).items():
            print(f"{key:>10}: {value:,}")
    return 0
