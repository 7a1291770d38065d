"""HTTP problems (RFC 9457 problem details) and the mapping of domain errors to them.

    Problem                      status, title, detail; rendered as application/problem+json
    ├── BadRequest          400  a parameter or UID is malformed
    ├── Unauthorized        401  no, or an unusable, bearer token (WWW-Authenticate: Bearer)
    ├── Forbidden           403  the role does not allow this
    ├── NotFound            404  no such study, series, instance or frame
    ├── Conflict            409  the change clashes with the current state (a user exists)
    ├── PayloadTooLarge     413  the request body exceeds web.max_body_bytes
    ├── UnsupportedMedia    415  a frame cannot be decoded or rendered here (no codec)
    └── TooManyRequests     429  rate, in-flight or login limits (Retry-After)

Domain exceptions (``db.matching.InvalidQuery``, ``node.tokens.AuthError``) are mapped here,
at the edge, and nowhere else.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from typing import Any, Iterator

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from db.matching import InvalidQuery
from node.frames import CannotDecode, FrameError
from node.tokens import AuthError

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"


class Problem(Exception):
    status = 500
    title = "Internal Server Error"

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadRequest(Problem):
    status, title = 400, "Bad Request"


class Unauthorized(Problem):
    status, title = 401, "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, {"WWW-Authenticate": f'Bearer error="invalid_token", '
                                                      f'error_description="{_quote(detail)}"'})


class Forbidden(Problem):
    status, title = 403, "Forbidden"


class NotFound(Problem):
    status, title = 404, "Not Found"


class Conflict(Problem):
    status, title = 409, "Conflict"


class PayloadTooLarge(Problem):
    status, title = 413, "Content Too Large"


class UnsupportedMedia(Problem):
    status, title = 415, "Unsupported Media Type"


class TooManyRequests(Problem):
    status, title = 429, "Too Many Requests"

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail, {"Retry-After": str(max(1, math.ceil(retry_after)))})


def problem_response(status: int, title: str, detail: str, instance: str | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return Response(json.dumps(body), status_code=status, media_type=PROBLEM_TYPE, headers=headers)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")


def from_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc.status, exc.title, exc.detail, request.url.path, exc.headers)


def from_invalid_query(request: Request, exc: Exception) -> Response:
    return problem_response(400, "Bad Request", str(exc), request.url.path)


def from_auth_error(conn: HTTPConnection, exc: Exception) -> Response:
    """AuthenticationMiddleware's on_error, and AuthError escaping an endpoint."""
    reason = getattr(exc, "reason", None) or str(exc)
    problem = Unauthorized(reason)
    return problem_response(401, problem.title, reason, conn.url.path, problem.headers)


def from_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (404 route, 405 method, 403 from ``requires``) as problems.

    ``requires`` answers 403 for any missing scope; without credentials the honest answer is
    401 with a Bearer challenge (RFC 6750, 3)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 403 and not request.user.is_authenticated:
        return problem_response(401, "Unauthorized", "this endpoint needs an Authorization: Bearer "
                                "access token (POST /api/token/ issues one)", request.url.path,
                                {"WWW-Authenticate": "Bearer"})
    if exc.status_code == 403:
        return problem_response(403, "Forbidden", f"the role {request.user.role!r} may not do this",
                                request.url.path)
    title = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "Error")
    detail = exc.detail if exc.detail and exc.detail != title else f"{request.method} {request.url.path}: {title.lower()}"
    return problem_response(exc.status_code, title, detail, request.url.path, exc.headers)


def from_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error serving %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "Internal Server Error", "the server failed; see its log",
                            request.url.path)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    Problem: from_problem,
    InvalidQuery: from_invalid_query,
    AuthError: from_auth_error,
    HTTPException: from_http_exception,
    Exception: from_unexpected,
}


@contextmanager
def frame_problems(sop_uid: str, cannot_decode: type[Problem] = UnsupportedMedia) -> Iterator[None]:
    """Reading or rendering a stored frame: a missing file or frame is 404, a frame no
    installed codec can decode is ``cannot_decode`` (415 here; DICOMweb answers 406)."""
    try:
        yield
    except FileNotFoundError:
        raise NotFound(f"the file of instance {sop_uid} is missing from storage") from None
    except CannotDecode as exc:
        raise cannot_decode(str(exc)) from None
    except FrameError as exc:
        raise NotFound(str(exc)) from None
