"""The app factory and the one route table of the HTTP API (shared/STYLE.md, 4).

Middleware, outermost first: the sendfile offer (``web.zerocopy``, around Starlette's own
error handling), CORS (only with ``web.cors_origins``), metrics (every request, by route
template), body size cap, gzip for JSON, bearer authentication, then per-user concurrency and
rate limits.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.routing import Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from node.config import Settings
from node.tokens import TokenService, load_or_create_secret
from web import admin, instances, listings, ops, tokens, uploads
from web.context import NodeStatus, WebContext
from web.dicomweb import routes as dicomweb
from web.errors import EXCEPTION_HANDLERS, from_auth_error
from web.instance_cache import InstanceCache
from web.limits import BodyLimitMiddleware, TokenBucket, UserLimitsMiddleware
from web.openapi import openapi_document
from web.security import BearerBackend, LoginThrottle
from web.uploads_service import UploadSessions
from web.uploads_tus import EXPOSED_HEADERS, REQUEST_HEADERS
from web.zerocopy import SendfileMiddleware

_UPLOAD_BINARY = re.compile(r"/api/upload-sessions/[^/]+/binary")  # tus PATCH: uploads.max_chunk_bytes
PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/api/token/", "/api/token/refresh/"})
# pixels, pictures and files are compressed already or gain little; gzip only pays for JSON
_NOT_GZIPPED = DEFAULT_EXCLUDED_CONTENT_TYPES + ("image/*", "application/octet-stream",
                                                 "application/dicom", "multipart/related")

# The built-in viewer (web/static/, served at /): only its own files may run, style, load or be
# fetched; frames, thumbnails and uploads all go to the API on the same origin.
VIEWER_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class NodeApp(Starlette):
    """Starlette with ``web.zerocopy.SendfileMiddleware`` around its whole middleware stack:
    it must see the server's own ``send``, which Starlette's error middleware wraps."""

    def build_middleware_stack(self) -> ASGIApp:
        return SendfileMiddleware(super().build_middleware_stack())


class ViewerFiles(StaticFiles):
    async def get_response(self, path: str, scope):  # noqa: ANN001, ANN201 - StaticFiles' signature
        response = await super().get_response(path, scope)
        response.headers.update(VIEWER_HEADERS)
        return response


def routes(settings: Settings) -> list[Route]:
    """Every route of the node's HTTP API, in one place (uploads, admin and DICOMweb list
    theirs in their own modules)."""
    study = "/api/pacs/studies/{study_uid}"
    instance = "/api/pacs/instances/{sop_uid}"
    return [
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/metrics", ops.metrics, methods=["GET"]),
        Route("/api/token/", tokens.obtain_token, methods=["POST"]),
        Route("/api/token/refresh/", tokens.refresh_token, methods=["POST"]),
        Route("/api/openapi.json", openapi_document, methods=["GET"]),
        Route("/api/pacs/studies/", listings.list_studies, methods=["GET"]),
        Route(f"{study}/series/", listings.list_series, methods=["GET"]),
        Route(f"{study}/series/{{series_uid}}/images/bulk", listings.series_images_bulk, methods=["GET"]),
        Route(f"{study}/image-ids/", listings.study_image_ids, methods=["GET"]),
        Route(f"{instance}/", instances.instance_metadata, methods=["GET"]),
        Route(f"{instance}/frames/{{frame:int}}", instances.frame, methods=["GET"]),
        Route(f"{instance}/frames/{{frame:int}}/rendered", instances.rendered_frame, methods=["GET"]),
        Route(f"{instance}/thumbnail", instances.thumbnail, methods=["GET"]),
        Route(f"{instance}/file", instances.instance_file, methods=["GET"]),
        *uploads.routes(),
        *admin.routes(),
        *dicomweb.routes(settings.dicomweb),
    ]


def create_app(settings: Settings, *, node_status: NodeStatus | None = None,
               token_service: TokenService | None = None,
               clock: Callable[[], float] | None = None, ingestor: Any = None) -> Starlette:
    """The HTTP API over an opened catalogue (``db.catalogue.open_database`` binds it first).

    ``clock`` (monotonic seconds) drives the login throttle and rate limits, for tests;
    ``ingestor`` (node.ingest.Ingestor) stores uploaded files (None: uploads answer 503).
    """
    token_service = token_service or TokenService(settings.auth, load_or_create_secret(settings))
    throttle_args = {"clock": clock} if clock else {}
    metrics = ops.Metrics(node_status)
    ctx = WebContext(
        settings=settings,
        tokens=token_service,
        login_throttle=LoginThrottle(settings.auth.max_failed_logins,
                                     settings.auth.failed_login_window_seconds, **throttle_args),
        node_status=node_status,
        metrics=metrics,
        instances=InstanceCache(settings.data_dir),
        ingestor=ingestor,
        uploads=UploadSessions(settings.uploads, settings.data_dir, ingestor),
    )
    web = settings.web
    middleware = [
        Middleware(ops.MetricsMiddleware, metrics=metrics),
        Middleware(BodyLimitMiddleware, max_bytes=web.max_body_bytes, larger=[
            ("PATCH", _UPLOAD_BINARY, settings.uploads.max_chunk_bytes),
            ("POST", dicomweb.stow_path(settings.dicomweb), settings.dicomweb.max_stow_bytes)]),
        Middleware(GZipMiddleware, minimum_size=1000, compresslevel=6,
                   exclude_content_types=_NOT_GZIPPED),
        Middleware(AuthenticationMiddleware, backend=BearerBackend(token_service, PUBLIC_PATHS),
                   on_error=from_auth_error),
        Middleware(UserLimitsMiddleware, max_in_flight=web.max_in_flight_per_user,
                   bucket=TokenBucket(web.rate_per_second, web.burst, **throttle_args)),
    ]
    if web.cors_origins:  # outermost: refusals (401, 413, 429) carry the CORS headers too
        middleware.insert(0, Middleware(
            CORSMiddleware, allow_origins=list(web.cors_origins),
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Accept", "If-None-Match", "Range",
                           *REQUEST_HEADERS],
            expose_headers=[*EXPOSED_HEADERS, "Location", "ETag"], max_age=600))
    app = NodeApp(routes=routes(settings), middleware=middleware, exception_handlers=EXCEPTION_HANDLERS)
    app.state.ctx = ctx
    # paths no API route knows are the viewer's files (API methods and errors stay as they are)
    app.router.default = ViewerFiles(directory=Path(__file__).parent / "static", html=True)
    return app
