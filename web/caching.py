"""Strong validators for immutable content: ETag, ``Cache-Control: immutable`` and 304.

A stored instance never changes under its digest, so an ETag derived from the file's SHA-256
(plus what selects a part of it) is strong (RFC 9110, 8.8.3): equal tags, equal bytes.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

IMMUTABLE = "private, max-age=86400, immutable"


def etag_for(sha256: str, *parts: object) -> str:
    suffix = "-".join(str(p) for p in parts)
    return f'"{sha256[:40]}{"-" + suffix if suffix else ""}"'


def cache_headers(etag: str) -> dict[str, str]:
    return {"ETag": etag, "Cache-Control": IMMUTABLE}


def is_fresh(request: Request, etag: str) -> bool:
    """If-None-Match names this representation (weak comparison, RFC 9110 13.1.2)."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    if header.strip() == "*":
        return True
    candidates = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return etag in candidates


def not_modified(etag: str) -> Response:
    return Response(status_code=304, headers=cache_headers(etag))


def immutable_response(request: Request, body: bytes, media_type: str, etag: str) -> Response:
    if is_fresh(request, etag):
        return not_modified(etag)
    return Response(body, media_type=media_type, headers=cache_headers(etag))
