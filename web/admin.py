"""Administration routes (``/api/admin/``): routes come with the admin API."""

from __future__ import annotations

from starlette.routing import Route


def routes() -> list[Route]:
    return []
