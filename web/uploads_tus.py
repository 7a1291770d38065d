"""The bytes of an upload session as a tus 1.0.0 resource (core, checksum, expiration).

The resource exists once its session does (``uploadUrl``, created with the declared size), so
a stock tus client is handed that URL and only resumes: ``HEAD`` for the offset, ``PATCH``
chunks from it. Every answer carries ``Tus-Resumable``; a request speaking another version gets
412 with ``Tus-Version``. When a PATCH brings the last byte the file is checked and stored
before the answer, which tells the outcome in ``Upload-Session-Status`` (and, once stored,
``Upload-Server-Image-Id``), so a client can acknowledge without asking again.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from email.utils import format_datetime

from starlette.authentication import requires
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from db import uploads as db
from web.errors import BadRequest, Problem, UnsupportedMedia
from web.uploads import caller_of, mapped, session_id_param, sessions_of
from web.uploads_service import ChunkChecksum

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "checksum,expiration"
CHECKSUM_ALGORITHMS = {"sha1": "sha1", "sha256": "sha256"}
OFFSET_TYPE = "application/offset+octet-stream"
RESUMABLE = {"Tus-Resumable": TUS_VERSION}
# answer headers a browser on another origin must be able to read (web.app's CORS)
EXPOSED_HEADERS = ("Upload-Offset", "Upload-Length", "Upload-Expires", "Tus-Resumable", "Tus-Version",
                   "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm", "Upload-Session-Status",
                   "Upload-Server-Image-Id")
# request headers a tus client sends
REQUEST_HEADERS = ("Tus-Resumable", "Upload-Offset", "Upload-Length", "Upload-Checksum", "Upload-Metadata",
                   "Upload-Defer-Length", "X-HTTP-Method-Override")


class PreconditionFailed(Problem):
    status, title = 412, "Precondition Failed"


def _require_version(request: Request) -> None:
    """tus 1.0.0, 2.2: every request but OPTIONS names the version it speaks."""
    version = request.headers.get("tus-resumable")
    if version != TUS_VERSION:
        raise PreconditionFailed(f"Tus-Resumable must be {TUS_VERSION}, got {version!r}",
                                 {"Tus-Version": TUS_VERSION})


def _state_headers(record: db.SessionRecord) -> dict[str, str]:
    headers = {**RESUMABLE, "Upload-Offset": str(record.upload_offset), "Upload-Length": str(record.size),
               "Upload-Session-Status": record.status, "Cache-Control": "no-store"}
    if record.expires_at is not None and record.status in db.PENDING:
        headers["Upload-Expires"] = format_datetime(record.expires_at.replace(tzinfo=dt.timezone.utc),
                                                    usegmt=True)
    if record.server_image_id and record.status in (db.SYNCED, db.ACK_RECEIVED):
        headers["Upload-Server-Image-Id"] = record.server_image_id
    return headers


def parse_checksum(header: str | None) -> ChunkChecksum | None:
    """``Upload-Checksum: <algorithm> <base64 digest>`` (tus checksum extension); 400 when the
    algorithm is not supported or the value is malformed."""
    if header is None:
        return None
    name, _, encoded = header.strip().partition(" ")
    algorithm = CHECKSUM_ALGORITHMS.get(name.lower())
    if algorithm is None:
        raise BadRequest(f"Upload-Checksum: algorithm {name[:20]!r} is not supported "
                         f"(Tus-Checksum-Algorithm: {','.join(CHECKSUM_ALGORITHMS)})")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Upload-Checksum: the digest must be base64") from None
    return ChunkChecksum(algorithm, digest)


def _offset(request: Request) -> int:
    raw = request.headers.get("upload-offset")
    if raw is None or not raw.isdigit():
        raise BadRequest(f"Upload-Offset must be a non-negative integer, got {raw!r}")
    return int(raw)


@requires("upload")
@mapped(RESUMABLE)
async def options(request: Request) -> Response:
    """What the server speaks (tus 1.0.0, 3.2.4)."""
    limits = sessions_of(request).limits
    return Response(status_code=204, headers={
        **RESUMABLE, "Tus-Version": TUS_VERSION, "Tus-Extension": TUS_EXTENSIONS,
        "Tus-Max-Size": str(limits.max_size), "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS)})


@requires("upload")
@mapped(RESUMABLE)
async def head(request: Request) -> Response:
    """The offset to resume from: the bytes durably received so far."""
    _require_version(request)
    record = await run_in_threadpool(sessions_of(request).get, caller_of(request), session_id_param(request))
    if record.status == db.EXPIRED:
        return Response(status_code=410, headers={**RESUMABLE, "Cache-Control": "no-store"})
    return Response(status_code=200, headers=_state_headers(record))


@requires("upload")
@mapped(RESUMABLE)
async def patch(request: Request) -> Response:
    """Append one chunk at ``Upload-Offset``; durable before 204, the last one also stored."""
    _require_version(request)
    session_id = session_id_param(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != OFFSET_TYPE:
        raise UnsupportedMedia(f"Content-Type must be {OFFSET_TYPE}, got {content_type[:60]!r}")
    offset = _offset(request)
    checksum = parse_checksum(request.headers.get("upload-checksum"))
    try:
        chunk = await request.body()
    except ClientDisconnect:  # nothing of a cut chunk is kept; the client resumes from HEAD
        raise BadRequest("the connection closed before the whole chunk arrived; nothing was kept") from None
    record = await run_in_threadpool(sessions_of(request).append, caller_of(request), session_id, offset,
                                     chunk, checksum)
    return Response(status_code=204, headers=_state_headers(record))


def routes(path: str) -> list[Route]:
    return [
        Route(path, options, methods=["OPTIONS"]),
        Route(path, head, methods=["HEAD"]),
        Route(path, patch, methods=["PATCH"]),
    ]
