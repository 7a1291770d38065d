"""Checking what a request names before anything touches the catalogue or the disk."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from starlette.requests import Request

from node.dicomfile import is_valid_uid
from web.errors import BadRequest


def uid_param(request: Request, name: str) -> str:
    """A path parameter that must be a DICOM UID (PS3.5 9.1: digits and dots, at most 64)."""
    value = request.path_params[name]
    if not is_valid_uid(value):
        raise BadRequest(f"{name}: not a DICOM UID (digits and dots, at most 64 characters): "
                         f"{value[:80]!r}")
    return value


D = TypeVar("D", int, None)


def int_param(request: Request, name: str, default: D, minimum: int, maximum: int | None = None) -> int | D:
    """An integer query parameter within [minimum, maximum] (``default`` when absent);
    anything else is a 400."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: expected an integer, got {raw[:40]!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"{minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise BadRequest(f"{name}: expected {bounds}, got {value}")
    return value


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


async def json_object(request: Request, empty_ok: bool = False) -> dict[str, Any]:
    """The request body as a JSON object, or 400 (an empty body is ``{}`` when ``empty_ok``)."""
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}") if empty_ok else json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body
