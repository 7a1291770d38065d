"""What the endpoints share, built once by the app factory and kept on ``app.state.ctx``.

No module-level state: two apps in one process (tests do this) never see each other's
throttles, caches or metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from starlette.requests import Request

from node.config import Settings
from node.tokens import TokenService
from web.instance_cache import InstanceCache
from web.security import LoginThrottle


class NodeStatus(Protocol):
    """What the running node tells the health and metrics endpoints."""

    def dimse_listening(self) -> bool: ...

    def active_associations(self) -> int: ...


@dataclass
class WebContext:
    settings: Settings
    tokens: TokenService
    login_throttle: LoginThrottle
    node_status: NodeStatus | None
    metrics: object  # web.ops.Metrics; typed loosely to keep this module free of prometheus
    instances: InstanceCache
    ingestor: Any = None  # node.ingest.Ingestor: the one ingest path, for uploads (None: read-only)
    uploads: Any = None  # web.uploads_service.UploadSessions, over ``ingestor``

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def thumbnail_dir(self) -> Path:
        return self.settings.data_dir / "cache" / "thumbnails"


def context_of(request: Request) -> WebContext:
    return request.app.state.ctx
