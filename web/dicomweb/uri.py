"""WADO-URI (PS3.18 9): ``GET /wado?requestType=WADO&studyUID=&seriesUID=&objectUID=``, for
older viewers. ``contentType`` application/dicom sends the file (in ``transferSyntax`` if
given and producible), image/jpeg (the default for images) or image/png a rendered frame
(``frameNumber``, ``windowCenter``/``windowWidth``, ``rows``/``columns``, ``imageQuality``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from db import lookups
from db.models import database
from node.dicomfile import is_valid_uid
from node.render import RenderError, Window
from web.dicomweb.accept import DICOM, EXPLICIT_LE
from web.dicomweb.access import audit, require_read
from web.dicomweb.errors import NotAcceptable
from web.dicomweb.pixels import MAX_VIEWPORT, picture_response
from web.dicomweb.resources import absolute
from web.dicomweb.transcode import instance_chunks, instance_target
from web.errors import BadRequest, NotFound
from web.params import int_param

_PICTURES = {"image/jpeg": "jpeg", "image/png": "png"}


def _uid(request: Request, name: str) -> str:
    value = request.query_params.get(name, "")
    if not value:
        raise BadRequest(f"WADO-URI needs {name}")
    if not is_valid_uid(value):
        raise BadRequest(f"{name}: not a DICOM UID (digits and dots, at most 64 characters): "
                         f"{value[:80]!r}")
    return value


def _window(request: Request) -> Window | None:
    center, width = request.query_params.get("windowCenter"), request.query_params.get("windowWidth")
    if center is None and width is None:
        return None
    try:
        return Window(float(center or ""), float(width or ""))
    except (ValueError, RenderError):
        raise BadRequest("windowCenter and windowWidth: expected two numbers, width at least 1") from None


def wado_uri(request: Request) -> Response:
    """One object, as a file or as a picture."""
    who = require_read(request)
    if request.query_params.get("requestType") != "WADO":
        raise BadRequest("requestType must be WADO")
    study, series, sop = (_uid(request, n) for n in ("studyUID", "seriesUID", "objectUID"))
    content_type = request.query_params.get("contentType", "image/jpeg").split(",")[0].strip()
    with database.connection_context():
        inst = lookups.instance_pixels(sop)
    if inst is None or inst.study_uid != study or inst.series_uid != series:
        raise NotFound(f"no object {sop} in series {series} of study {study}")
    path = absolute(request, inst.path)
    audit(request, who, [study], "wado-uri")
    if content_type == DICOM:
        asked = request.query_params.get("transferSyntax") or EXPLICIT_LE
        target = instance_target(inst.transfer_syntax, asked)
        if target is None:
            raise NotAcceptable(f"cannot send an object stored as {inst.transfer_syntax} in {asked}")
        if not path.is_file():
            raise NotFound(f"the file of object {sop} is missing from storage")
        return StreamingResponse(instance_chunks(path, inst.transfer_syntax, target),
                                 media_type=f"{DICOM}; transfer-syntax={target}")
    if content_type not in _PICTURES:
        raise NotAcceptable(f"contentType {content_type[:60]!r}: this node sends application/dicom, "
                            "image/jpeg or image/png")
    if not inst.has_pixels:
        raise NotAcceptable(f"object {sop} has no pixel data: ask for contentType=application/dicom")
    frame = int_param(request, "frameNumber", 1, 1, inst.number_of_frames)
    rows = int_param(request, "rows", None, 1, MAX_VIEWPORT)
    columns = int_param(request, "columns", None, 1, MAX_VIEWPORT)
    size = min(v for v in (rows, columns) if v) if rows or columns else None
    quality = int_param(request, "imageQuality", 90, 1, 100)
    assert frame is not None and quality is not None
    return picture_response(request, path, inst, frame, _PICTURES[content_type], _window(request),
                            quality, size)
