"""The DICOMweb route table, mounted under ``[dicomweb] root`` (PS3.18 10.4 to 10.6, and 9).

Every route checks access itself (web.dicomweb.access): reads need the ``read`` scope or
``anonymous_read``, STOW-RS the ``upload`` scope. ``GET {root}/`` describes what is served.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from node.config import DicomwebSettings
from web.context import context_of
from web.dicomweb import pixels, qido, stow, uri, wado
from web.dicomweb.accept import FRAME_MEDIA_TYPES
from web.dicomweb.resources import service_url
from web.dicomweb.transcode import can_decode

STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{sop}"


def capabilities(request: Request) -> JSONResponse:
    """What this service supports, for people and tools configuring a viewer (no PHI, so no
    token needed)."""
    settings = context_of(request).settings.dicomweb
    decodable = sorted(ts for types in FRAME_MEDIA_TYPES.values() for ts in types if can_decode(ts))
    return JSONResponse({
        "service": "PACSNODE DICOMweb (PS3.18)",
        "root": service_url(request),
        "qido-rs": {"resources": ["/studies", "/series", "/instances", f"{STUDY}/series",
                                  f"{STUDY}/instances", f"{SERIES}/instances"],
                    "matching": "PS3.4 C.2.2.2 as C-FIND: single value, wildcards, date/time "
                                "ranges, UID lists; person names case-insensitive",
                    "keys": {level: qido.searchable(level) for level in ("STUDY", "SERIES", "IMAGE")},
                    "includefield": "comma list, repeated, or all",
                    "fuzzymatching": False,
                    "maxResults": settings.max_results,
                    "noMatch": "200 []"},
        "wado-rs": {"retrieve": [STUDY, SERIES, INSTANCE],
                    "metadata": [f"{STUDY}/metadata", f"{SERIES}/metadata", f"{INSTANCE}/metadata"],
                    "frames": f"{INSTANCE}/frames/{{frames}}",
                    "bulkdata": f"{INSTANCE}/bulkdata/{{tags}}",
                    "rendered": [f"{INSTANCE}/rendered", f"{INSTANCE}/frames/{{frames}}/rendered"],
                    "thumbnail": [f"{STUDY}/thumbnail", f"{SERIES}/thumbnail", f"{INSTANCE}/thumbnail",
                                  f"{INSTANCE}/frames/{{frames}}/thumbnail"],
                    "renderedMediaTypes": ["image/jpeg", "image/png"],
                    "transferSyntaxes": "as stored (transfer-syntax=*), Explicit VR Little Endian "
                                        "(the default), Implicit VR Little Endian",
                    "decompresses": decodable},
        "stow-rs": {"resources": ["/studies", STUDY], "mediaType": 'multipart/related; '
                    'type="application/dicom"', "maxBytes": settings.max_stow_bytes},
        "wado-uri": {"resource": "/wado", "contentTypes": ["application/dicom", "image/jpeg",
                                                          "image/png"]},
        "authentication": "Authorization: Bearer <access token from POST /api/token/>",
        "anonymousRead": settings.anonymous_read,
    })


def stow_path(settings: DicomwebSettings) -> re.Pattern[str]:
    """The STOW-RS paths, whose bodies may reach ``max_stow_bytes`` (web.limits)."""
    return re.compile(re.escape(settings.root.rstrip("/")) + r"/studies(/[^/]+)?")


def routes(settings: DicomwebSettings) -> list[BaseRoute]:
    get = ["GET"]
    return [Mount(settings.root.rstrip("/"), routes=[
        Route("/", capabilities, methods=get),
        Route("/studies", qido.search_studies, methods=get),
        Route("/studies", stow.store, methods=["POST"]),
        Route("/series", qido.search_series, methods=get),
        Route("/instances", qido.search_instances, methods=get),
        Route("/wado", uri.wado_uri, methods=get),
        Route(STUDY, wado.retrieve, methods=get),
        Route(STUDY, stow.store, methods=["POST"]),
        Route(f"{STUDY}/metadata", wado.metadata, methods=get),
        Route(f"{STUDY}/series", qido.search_series, methods=get),
        Route(f"{STUDY}/instances", qido.search_instances, methods=get),
        Route(f"{STUDY}/thumbnail", pixels.thumbnail, methods=get),
        Route(SERIES, wado.retrieve, methods=get),
        Route(f"{SERIES}/metadata", wado.metadata, methods=get),
        Route(f"{SERIES}/instances", qido.search_instances, methods=get),
        Route(f"{SERIES}/thumbnail", pixels.thumbnail, methods=get),
        Route(INSTANCE, wado.retrieve, methods=get),
        Route(f"{INSTANCE}/metadata", wado.metadata, methods=get),
        Route(f"{INSTANCE}/rendered", pixels.rendered, methods=get),
        Route(f"{INSTANCE}/thumbnail", pixels.thumbnail, methods=get),
        Route(f"{INSTANCE}/frames/{{frames}}", pixels.frames, methods=get),
        Route(f"{INSTANCE}/frames/{{frames}}/rendered", pixels.rendered, methods=get),
        Route(f"{INSTANCE}/frames/{{frames}}/thumbnail", pixels.thumbnail, methods=get),
        Route(f"{INSTANCE}/bulkdata/{{tags:path}}", pixels.bulkdata, methods=get),
    ])]
