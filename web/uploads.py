"""Upload sessions over HTTP (``/api/upload-sessions/``): the JSON resource.

Create (201, or 200 with the session already carrying this file), metadata, acknowledge,
retry, list and the events trail. The bytes go through the tus 1.0.0 resource of
``web.uploads_tus`` at each session's ``uploadUrl``. Every endpoint needs the ``upload`` scope
(roles uploader and admin); a user sees only their own sessions unless admin. Service
exceptions (``web.uploads_service``) become problems here, at the edge.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Awaitable, Callable

from starlette.authentication import requires
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from db import uploads as db
from node.errors import StorageFull
from web.context import context_of
from web.errors import BadRequest, Problem
from web.params import int_param, json_object
from web.uploads_service import (
    BeyondSize,
    Caller,
    ChunkChecksumMismatch,
    IngestUnavailable,
    InvalidTransition,
    NewSession,
    OffsetMismatch,
    SessionExpired,
    SessionNotFound,
    TooLarge,
    UploadError,
    UploadSessions,
)

BASE = "/api/upload-sessions/"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# ?status= words: the client's view (pending, failed, synced) or any status by name
STATUS_FILTERS: dict[str, tuple[str, ...]] = {
    **{status.lower(): (status,) for status in db.STATUSES},
    "pending": db.PENDING,
    "failed": (db.FAILED,),
    "synced": (db.SYNCED, db.ACK_RECEIVED),  # stored, acknowledged or not
}
# service error -> (status, title); the first match in this order wins
_PROBLEMS: tuple[tuple[type[Exception], int, str], ...] = (
    (SessionNotFound, 404, "Not Found"),
    (SessionExpired, 410, "Gone"),
    (OffsetMismatch, 409, "Conflict"),
    (InvalidTransition, 409, "Conflict"),
    (BeyondSize, 400, "Bad Request"),
    (TooLarge, 413, "Content Too Large"),
    (ChunkChecksumMismatch, 460, "Checksum Mismatch"),
    (IngestUnavailable, 503, "Service Unavailable"),
    (StorageFull, 507, "Insufficient Storage"),
)


class UploadProblem(Problem):
    """A problem whose status comes from the service error it reports."""

    def __init__(self, status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail, headers)
        self.status, self.title = status, title


def as_problem(exc: Exception, headers: dict[str, str] | None = None) -> UploadProblem:
    """The HTTP problem for a service error (see the tree in web.uploads_service)."""
    headers = dict(headers or {})
    for kind, status, title in _PROBLEMS:
        if isinstance(exc, kind):
            if isinstance(exc, OffsetMismatch):
                headers["Upload-Offset"] = str(exc.expected)
            if isinstance(exc, IngestUnavailable):
                headers["Retry-After"] = "5"
            return UploadProblem(status, title, str(exc), headers)
    raise exc  # pragma: no cover - every UploadError kind is in the table


Endpoint = Callable[[Request], Awaitable[Response]]


def mapped(headers: dict[str, str] | None = None) -> Callable[[Endpoint], Endpoint]:
    """Turn the service's errors into problems (with ``headers``, e.g. Tus-Resumable)."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def run(request: Request) -> Response:
            try:
                return await endpoint(request)
            except (UploadError, StorageFull) as exc:
                raise as_problem(exc, headers) from None
            except Problem as exc:
                exc.headers = {**(headers or {}), **exc.headers}
                raise
        return run

    return wrap


def sessions_of(request: Request) -> UploadSessions:
    return context_of(request).uploads


def caller_of(request: Request) -> Caller:
    return Caller(request.user.identity, admin=request.user.role == "admin")


def session_id_param(request: Request) -> str:
    """Session ids are server UUIDs; anything else names no session."""
    value = request.path_params["session_id"]
    if not _UUID.fullmatch(value):
        raise SessionNotFound(f"no upload session {value[:80]!r}")
    return value


def upload_url(session_id: str) -> str:
    return f"{BASE}{session_id}/binary"


def session_json(record: db.SessionRecord) -> dict[str, Any]:
    """The session as clients see it (camelCase; times in ISO 8601 UTC)."""
    return {
        "sessionId": record.session_id, "status": record.status, "owner": record.owner,
        "fileName": record.file_name, "size": record.size, "sha256": record.sha256,
        "contentType": record.content_type, "orderId": record.order_id, "metadata": record.metadata,
        "uploadOffset": record.upload_offset, "uploadUrl": upload_url(record.session_id),
        "serverImageId": record.server_image_id, "errorCode": record.error_code,
        "errorMessage": record.error_message, "retryCount": record.retry_count,
        "createdAt": _iso(record.created_at), "updatedAt": _iso(record.updated_at),
        "expiresAt": _iso(record.expires_at),
    }


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None


def _text(body: dict[str, Any], key: str, *, required: bool, limit: int, default: str | None = None) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return default
    if not isinstance(value, str) or not value or len(value) > limit:
        raise BadRequest(f"{key!r} must be a non-empty string of at most {limit} characters")
    return value


def new_session_from(body: dict[str, Any], max_size: int) -> NewSession:
    """Check a creation body: fileName, size, sha256 required; contentType, orderId, metadata optional."""
    size = body.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise BadRequest("'size' must be a positive integer (bytes)")
    if size > max_size:
        raise TooLarge(f"size {size} exceeds the node's limit of {max_size} bytes (uploads.max_size)")
    sha256 = body.get("sha256")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise BadRequest("'sha256' must be the file's SHA-256 as 64 hexadecimal digits")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadRequest("'metadata' must be a JSON object")
    return NewSession(
        file_name=_text(body, "fileName", required=True, limit=255) or "",
        size=size, sha256=sha256.lower(),
        content_type=_text(body, "contentType", required=False, limit=128, default="application/dicom") or "",
        order_id=_text(body, "orderId", required=False, limit=128), metadata=metadata)


@requires("upload")
@mapped()
async def create_session(request: Request) -> JSONResponse:
    """201 and Location for a new session; 200 with the session already carrying this file."""
    sessions = sessions_of(request)
    new = new_session_from(await json_object(request, empty_ok=True), sessions.limits.max_size)
    record, created = await sessions.create(caller_of(request), new)
    location = f"{BASE}{record.session_id}"
    return JSONResponse(session_json(record), status_code=201 if created else 200,
                        headers={"Location": location})


@requires("upload")
@mapped()
async def get_session(request: Request) -> JSONResponse:
    record = await run_in_threadpool(sessions_of(request).get, caller_of(request), session_id_param(request))
    return JSONResponse(session_json(record), headers={"Cache-Control": "no-store"})


@requires("upload")
@mapped()
async def put_metadata(request: Request) -> JSONResponse:
    """The body is the metadata object; stored before any byte (QUEUED -> METADATA_UPLOADED)."""
    session_id = session_id_param(request)
    metadata = await json_object(request, empty_ok=True)
    record = await sessions_of(request).put_metadata(caller_of(request), session_id, metadata)
    return JSONResponse(session_json(record))


@requires("upload")
@mapped()
async def acknowledge(request: Request) -> JSONResponse:
    """SYNCED -> ACK_RECEIVED, for the image the client was told: it may delete its copy."""
    session_id = session_id_param(request)
    server_image_id = _text(await json_object(request, empty_ok=True), "serverImageId", required=True, limit=64) or ""
    record = await sessions_of(request).acknowledge(caller_of(request), session_id, server_image_id)
    return JSONResponse(session_json(record))


@requires("upload")
@mapped()
async def retry(request: Request) -> JSONResponse:
    record = await run_in_threadpool(sessions_of(request).retry, caller_of(request), session_id_param(request))
    return JSONResponse(session_json(record))


@requires("upload")
@mapped()
async def session_events(request: Request) -> JSONResponse:
    events = await run_in_threadpool(sessions_of(request).events, caller_of(request), session_id_param(request))
    return JSONResponse({"events": [
        {"at": _iso(e.at), "user": e.username, "from": e.from_status, "to": e.to_status, "detail": e.detail}
        for e in events]})


@requires("upload")
@mapped()
async def list_sessions(request: Request) -> JSONResponse:
    """``?status=pending|failed|synced`` (or a status by name; comma-separated), ``orderId``,
    ``limit``, ``offset``; newest first."""
    raw = request.query_params.get("status")
    statuses: tuple[str, ...] | None = None
    if raw:
        chosen: list[str] = []
        for word in raw.split(","):
            if word.strip().lower() not in STATUS_FILTERS:
                raise BadRequest(f"status: expected pending, failed, synced or a status name, got {word[:40]!r}")
            chosen.extend(STATUS_FILTERS[word.strip().lower()])
        statuses = tuple(dict.fromkeys(chosen))
    order_id = request.query_params.get("orderId") or None
    limit = int_param(request, "limit", 100, 1, context_of(request).settings.web.max_list_limit)
    offset = int_param(request, "offset", 0, 0)
    records = await run_in_threadpool(sessions_of(request).list, caller_of(request), statuses, order_id,
                                      limit, offset)
    return JSONResponse({"sessions": [session_json(r) for r in records], "limit": limit, "offset": offset})


def routes() -> list[Route]:
    """The upload routes: JSON here, the tus resource from web.uploads_tus. No DELETE: sessions
    are never deleted."""
    from web import uploads_tus

    one = BASE + "{session_id}"
    return [
        Route(BASE, create_session, methods=["POST"]),
        Route(BASE, list_sessions, methods=["GET"]),
        Route(one, get_session, methods=["GET"]),
        Route(one + "/", get_session, methods=["GET"]),
        Route(one + "/metadata", put_metadata, methods=["PUT"]),
        Route(one + "/acknowledge", acknowledge, methods=["POST"]),
        Route(one + "/retry", retry, methods=["POST"]),
        Route(one + "/events", session_events, methods=["GET"]),
        *uploads_tus.routes(one + "/binary"),
    ]
