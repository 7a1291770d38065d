"""``python -m node push PATH... --server URL`` and ``push --sync``: send files to a node's
upload sessions so that nothing is lost and nothing is stored twice.

Each file is first copied into the local outbox (``node.push_queue``), then, per file: create
the session (the server answers the existing one for a file it already has), store the
metadata, send the bytes as tus chunks from the server's offset (each chunk with its SHA-256),
and acknowledge the stored image. The outbox copy is deleted only after ``ACK_RECEIVED``.
An unreachable server leaves the queue as it is; ``push --sync`` (or the next push) drains it,
each file retried with exponential backoff. Credentials come from ``PACSNODE_USER`` /
``PACSNODE_PASSWORD`` or a prompt, never from the command line.

Exit status: 0 every file acknowledged, 1 the server refused some file for good, 2 a usage
or credentials error, 75 (EX_TEMPFAIL) files are left in the outbox for a later ``--sync``.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from node.push_http import (Api, CredentialsRefused, Refused, Reply, Transient, Unreachable, address_problem,
                            detail_of)
from node.push_queue import DONE, FAILED, QUEUED, SENDING, Item, Outbox

EX_TEMPFAIL = 75
SESSIONS = "api/upload-sessions/"
TUS = {"Tus-Resumable": "1.0.0"}
DEFAULT_CHUNK = 8 << 20
COPY_BATCH = 25  # files copied into the outbox (one commit) before they start to go
# FAILED codes worth a retry: the bytes went wrong on the way, not the file itself
RETRYABLE_FAILURES = {"CHECKSUM_MISMATCH"}


@dataclass
class Summary:
    stored: int = 0
    already_present: int = 0
    repeats: int = 0
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EX_TEMPFAIL if self.left else 1 if self.failed else 0


class Delivery:
    """Moves outbox items through their server sessions; one instance per push run."""

    def __init__(self, outbox: Outbox, api: Api, chunk_size: int,
                 on_bytes: Callable[[Item, int], None] = lambda item, offset: None) -> None:
        self.outbox = outbox
        self.api = api
        self.chunk_size = chunk_size
        self.on_bytes = on_bytes

    def deliver(self, item: Item) -> Item:
        """One attempt to bring ``item`` to ``done`` (or ``failed``); Transient to try later."""
        created_now = False
        session: dict[str, Any] | None = None
        if item.session_id is not None:
            response = self.api.call("GET", f"{SESSIONS}{item.session_id}")
            if response.status_code == 404:  # the server forgot it (or it is not ours): begin again
                item = self.outbox.update(item, session_id=None, status=QUEUED)
            else:
                session = self._json(response, item)
        if session is None:
            response = self.api.call("POST", SESSIONS, json={
                "fileName": Path(item.source).name, "size": item.size, "sha256": item.sha256,
                "contentType": "application/dicom", "orderId": item.order_id})
            session = self._json(response, item)
            created_now = response.status_code == 201
            item = self.outbox.update(item, session_id=session["sessionId"], status=SENDING)
        first_status = session["status"]
        for _ in range(12):  # each pass moves the session one step on
            status = session["status"]
            base = f"{SESSIONS}{session['sessionId']}"
            if status == "ACK_RECEIVED":
                present = not created_now and first_status in ("SYNCED", "ACK_RECEIVED")
                return self.outbox.finish(item, session["serverImageId"], present)
            if status == "SYNCED":
                response = self.api.call("POST", f"{base}/acknowledge", json={"serverImageId": session["serverImageId"]})
                if response.status_code == 409:  # moved on meanwhile (another client of this file)
                    response = self.api.call("GET", base)
                session = self._json(response, item)
            elif status == "QUEUED":
                session = self._json(self.api.call("PUT", f"{base}/metadata", json={
                    "source": item.source, "client": "python -m node push", "outboxId": item.item_id}), item)
            elif status in ("METADATA_UPLOADED", "BINARY_UPLOADING"):
                session = self._send_bytes(item, session)
            elif status == "FAILED" and session.get("errorCode") in RETRYABLE_FAILURES:
                response = self.api.call("POST", f"{base}/retry")
                if response.status_code == 409:
                    return self._fail(item, f"{session['errorCode']}: retries exhausted ({detail_of(response)})")
                session = self._json(response, item)
            elif status == "FAILED":
                return self._fail(item, f"{session.get('errorCode')}: {session.get('errorMessage')}")
            else:  # EXPIRED: a new session on the next attempt
                self.outbox.update(item, session_id=None, status=QUEUED)
                raise Transient("the server expired the unfinished upload; it starts again")
        raise Transient(f"session {session['sessionId']} did not settle")  # pragma: no cover

    def _send_bytes(self, item: Item, session: dict[str, Any]) -> dict[str, Any]:
        """tus PATCH chunks from the server's offset; the answer to the last one says the outcome."""
        url = session["uploadUrl"].lstrip("/")
        offset = int(session["uploadOffset"])
        bad_sums = 0
        with self.outbox.path_of(item).open("rb") as source:
            while offset < item.size:
                source.seek(offset)
                chunk = source.read(self.chunk_size)
                whole = offset == 0 and len(chunk) == item.size  # its SHA-256 is known from the outbox copy
                raw = bytes.fromhex(item.sha256) if whole else hashlib.sha256(chunk).digest()
                digest = base64.b64encode(raw).decode()
                response = self.api.call("PATCH", url, content=chunk, headers={
                    **TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
                    "Upload-Checksum": f"sha256 {digest}"})
                if response.status_code == 204:
                    offset = int(response.headers["Upload-Offset"])
                    self.on_bytes(item, offset)
                    if response.headers.get("Upload-Session-Status") == "SYNCED" and \
                            response.headers.get("Upload-Server-Image-Id"):
                        return {**session, "status": "SYNCED", "uploadOffset": offset,
                                "serverImageId": response.headers["Upload-Server-Image-Id"]}
                elif response.status_code == 409 and "Upload-Offset" in response.headers:
                    offset = int(response.headers["Upload-Offset"])  # resume where the server is
                elif response.status_code == 460 and bad_sums < 3:
                    bad_sums += 1
                elif response.status_code == 413 and self.chunk_size > 64 * 1024:
                    self.chunk_size //= 2  # the server takes smaller chunks
                elif response.status_code in (409, 410):
                    break  # the session moved on (or expired): ask for its state
                else:
                    raise Refused(f"{response.status_code} {detail_of(response)}")
        return self._json(self.api.call("GET", f"{SESSIONS}{session['sessionId']}"), item)

    def _json(self, response: Reply, item: Item) -> dict[str, Any]:
        if response.status_code in (200, 201):
            return response.json()
        raise Refused(f"{response.method} {response.path}: {response.status_code} {detail_of(response)}")

    def _fail(self, item: Item, reason: str) -> Item:
        return self.outbox.update(item, status=FAILED, last_error=reason)


def drain(outbox: Outbox, api: Api, batches: Iterable[list[Item]], *, parallel: int, chunk_size: int,
          max_attempts: int, base_delay: float, show_progress: bool, summary: Summary) -> None:
    """Deliver the items of ``batches`` (sent as soon as each batch is queued, while the next
    is copied in) with ``parallel`` in flight; each retried with exponential backoff (jittered),
    and all of them left queued once the server stays unreachable."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), disable=not show_progress, transient=False)
    overall = progress.add_task("0 file(s)", total=0)
    files = total = 0
    tasks: dict[str, Any] = {}
    sent: dict[str, int] = {}
    lock = threading.Lock()
    gave_up = threading.Event()
    unreachable = [0]

    def on_bytes(item: Item, offset: int) -> None:
        with lock:
            progress.advance(overall, offset - sent.get(item.item_id, 0))
            sent[item.item_id] = offset
        if item.item_id in tasks:
            progress.update(tasks[item.item_id], completed=offset)

    delivery = Delivery(outbox, api, chunk_size, on_bytes)

    def one(item: Item) -> None:
        tasks[item.item_id] = progress.add_task(Path(item.source).name[:40], total=item.size)
        error = "not tried: the server was unreachable"
        try:
            for attempt in range(1, max_attempts + 1):
                if gave_up.is_set():
                    break
                result: Item | None = None
                try:
                    result = delivery.deliver(item)
                except CredentialsRefused as exc:  # not this file's fault: it stays queued
                    error = str(exc)
                    gave_up.set()
                    break
                except Refused as exc:
                    result = outbox.update(item, status=FAILED, last_error=str(exc))
                except Unreachable as exc:
                    error = str(exc)
                    with lock:
                        unreachable[0] += 1
                        if unreachable[0] >= max_attempts * parallel:
                            gave_up.set()  # the server is down: leave the rest queued at once
                except (Transient, OSError) as exc:
                    error = str(exc)
                if result is not None:
                    with lock:
                        unreachable[0] = 0
                    _count(result, summary, lock)
                    return
                item = outbox.get(item.item_id)
                item = outbox.update(item, attempts=item.attempts + 1, last_error=error)
                if attempt < max_attempts:
                    gave_up.wait(min(30.0, base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
            with lock:
                summary.left.append((item.source, error))
        finally:
            progress.remove_task(tasks.pop(item.item_id))

    with progress, ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="push") as pool:
        futures = []
        for batch in batches:
            files, total = files + len(batch), total + sum(item.size for item in batch)
            progress.update(overall, description=f"{files} file(s)", total=total)
            futures += [pool.submit(one, item) for item in batch]
        for future in futures:
            future.result()


def _count(item: Item, summary: Summary, lock: threading.Lock) -> None:
    with lock:
        if item.status == DONE and item.already_present:
            summary.already_present += 1
        elif item.status == DONE:
            summary.stored += 1
        else:
            summary.failed.append((item.source, item.last_error or "refused"))


def _is_dicom_file(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _credentials() -> tuple[str, str] | None:
    """PACSNODE_USER / PACSNODE_PASSWORD, else a prompt on the terminal."""
    username, password = os.environ.get("PACSNODE_USER"), os.environ.get("PACSNODE_PASSWORD")
    if (not username or not password) and not sys.stdin.isatty():
        return None
    if not username:
        username = input("user: ").strip()
    if not password:
        password = getpass.getpass(f"password for {username}: ")
    return username, password


def push(args: argparse.Namespace) -> int:
    if not args.paths and not args.sync:
        print("error: give files or folders to push, or --sync to send the outbox", file=sys.stderr)
        return 2
    from node.importer import collect_files

    server = args.server.rstrip("/")
    bad_address = address_problem(server)
    if bad_address:
        print(f"error: {bad_address}", file=sys.stderr)
        return 2
    summary = Summary()
    try:
        files = collect_files(args.paths) if args.paths else []
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dicom: list[Path] = []
    for path in files:
        if _is_dicom_file(path):
            dicom.append(path)
        else:
            summary.skipped.append(str(path))
    outbox = Outbox(Path(args.outbox).expanduser())
    added: list[Item] = []
    try:
        earlier = outbox.pending(server)
        credentials = _credentials() if earlier or dicom else ("", "")
        api = Api(server, *(credentials or ("", "")))
        try:
            problem = "" if not (earlier or dicom) else \
                "no credentials" if credentials is None else _log_in(api, args.max_attempts, args.retry_delay)

            def batches() -> Iterator[list[Item]]:
                """The outbox's earlier items, then the new files, copied in by COPY_BATCH."""
                yield earlier
                for start in range(0, len(dicom), COPY_BATCH):
                    items, repeats = outbox.add(dicom[start:start + COPY_BATCH], server, args.order_id)
                    added.extend(items)
                    summary.repeats += repeats
                    yield items

            if problem:
                for _ in batches():  # offline first: every file is in the outbox before we stop
                    pass
                if credentials is None:
                    print("error: set PACSNODE_USER and PACSNODE_PASSWORD, or run on a terminal to be "
                          "asked", file=sys.stderr)
                    return 2
                if problem.startswith("refused"):
                    print(f"error: {problem}", file=sys.stderr)
                    return 2
                summary.left = [(item.source, problem) for item in outbox.pending(server)]
            else:
                drain(outbox, api, batches(), parallel=args.parallel, chunk_size=args.chunk_size,
                      max_attempts=args.max_attempts, base_delay=args.retry_delay,
                      show_progress=not args.no_progress and sys.stderr.isatty(), summary=summary)
        finally:
            api.close()
    finally:
        outbox.close()
    _print_summary(summary, len(added), server)
    return summary.exit_code


def _log_in(api: Api, attempts: int, delay: float) -> str:
    """Log in with backoff: "" when in, else why not ("refused: ..." or the unreachable server)."""
    reason = ""
    for attempt in range(1, attempts + 1):
        try:
            api.login()
            return ""
        except Refused as exc:
            return f"refused: {exc}"
        except Transient as exc:
            reason = f"server unreachable: {exc}"
            if attempt < attempts:
                time.sleep(min(30.0, delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
    return reason


def _print_summary(summary: Summary, added: int, server: str) -> None:
    print(f"queued now: {added}" + (f" ({summary.repeats} already waiting in the outbox)" if summary.repeats else ""))
    print(f"stored: {summary.stored}")
    print(f"already on the server: {summary.already_present}")
    print(f"skipped (not DICOM): {len(summary.skipped)}")
    print(f"failed: {len(summary.failed)}")
    for source, reason in summary.failed:
        print(f"  {source}: {reason}")
    print(f"left in the outbox: {len(summary.left)}")
    if summary.left:
        print(f"  the server did not take them now ({summary.left[0][1]}); "
              f"send them later with: python -m node push --sync --server {server}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser("push", help="send files to a node's upload sessions through a local outbox")
    cmd.add_argument("paths", nargs="*", type=Path, help="files, folders or DICOMDIR media")
    cmd.add_argument("--server", required=True, help="the node's HTTP address, e.g. http://pacs:8080")
    cmd.add_argument("--sync", action="store_true", help="send what waits in the outbox (also done by every push)")
    cmd.add_argument("--outbox", default=os.environ.get("PACSNODE_OUTBOX", "~/.pacsnode/outbox"),
                     help="local outbox folder (default: $PACSNODE_OUTBOX or ~/.pacsnode/outbox)")
    cmd.add_argument("--order-id", help="the order these files belong to (sessions are unique per order)")
    cmd.add_argument("--parallel", type=int, default=4, help="files in flight at once (default 4)")
    cmd.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, help="bytes per PATCH (default 8 MiB)")
    cmd.add_argument("--max-attempts", type=int, default=5, help="tries per file before it waits for --sync")
    cmd.add_argument("--retry-delay", type=float, default=0.5, help="first backoff in seconds; doubles")
    cmd.add_argument("--no-progress", action="store_true")
    cmd.set_defaults(run=lambda settings, args: push(args), needs_config=False)
