"""Upload sessions over HTTP (``/api/upload-sessions/``): routes come with the upload API."""

from __future__ import annotations

from starlette.routing import Route


def routes() -> list[Route]:
    return []
