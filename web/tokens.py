"""``POST /api/token/`` and ``POST /api/token/refresh/``: log in, and rotate a refresh token."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from node.tokens import InvalidCredentials, TokenPair
from web.context import context_of
from web.errors import BadRequest, TooManyRequests
from web.params import json_object

_NO_STORE = {"Cache-Control": "no-store"}  # RFC 6749, 5.1


async def obtain_token(request: Request) -> JSONResponse:
    """Credentials in, an access and a refresh token out; failed attempts are throttled."""
    body = await json_object(request)
    username, password = _string(body, "username"), _string(body, "password")
    ctx = context_of(request)
    address = request.client.host if request.client else "unknown"
    wait = ctx.login_throttle.retry_after(username, address)
    if wait > 0:
        raise TooManyRequests("too many failed logins for this user or address; try again later", wait)
    try:
        pair = await run_in_threadpool(ctx.tokens.login, username, password)
    except InvalidCredentials:
        ctx.login_throttle.failed(username, address)
        raise
    ctx.login_throttle.succeeded(username)
    return _pair_response(pair)


async def refresh_token(request: Request) -> JSONResponse:
    """A refresh token in, a new pair out; the presented token is retired (rotation)."""
    body = await json_object(request)
    token = _string(body, "refresh")
    pair = await run_in_threadpool(context_of(request).tokens.refresh, token)
    return _pair_response(pair)


def _pair_response(pair: TokenPair) -> JSONResponse:
    return JSONResponse({"access": pair.access, "refresh": pair.refresh, "tokenType": "Bearer",
                         "expiresIn": pair.expires_in}, headers=_NO_STORE)


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise BadRequest(f"{key!r} must be a non-empty string")
    return value
