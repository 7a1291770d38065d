"""One instance: its rendering metadata, frames (as stored, decoded or rendered), thumbnail
and stored file. Frames, files and thumbnails are immutable under the file's digest."""

from __future__ import annotations

from pathlib import Path

from starlette.authentication import requires
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from db import accounts
from db.lookups import InstancePixels
from db.models import database
from node.frames import (
    EXPLICIT_LE,
    decoded_frame_bytes,
    frame_array,
    frame_media_type,
    read_frame,
    stored_frame,
)
from node.render import FORMATS, RenderError, encode_picture, parse_window, render_frame
from web.caching import cache_headers, etag_for, immutable_response, is_fresh, not_modified
from web.context import context_of
from web.errors import BadRequest, NotFound, frame_problems
from web.params import client_address, int_param, uid_param
from web.thumbnails import thumbnail_bytes

MAX_RENDER_SIZE = 4096
SMALL_FILE = 8 << 20  # bytes: files up to this size are sent from memory


def _instance(request: Request) -> tuple[InstancePixels, Path]:
    """The instance named in the path and its file (in a worker thread); the UID is checked
    before any look-up."""
    sop_uid = uid_param(request, "sop_uid")
    cache = context_of(request).instances
    found = cache.get(sop_uid) or cache.load(sop_uid)
    if found is None:
        raise NotFound(f"no instance {sop_uid}")
    return found


async def _instance_async(request: Request) -> tuple[InstancePixels, Path]:
    """As ``_instance`` on the event loop: the catalogue is asked in a worker thread, and only
    when the instance is not remembered."""
    sop_uid = uid_param(request, "sop_uid")
    cache = context_of(request).instances
    found = cache.get(sop_uid) or await run_in_threadpool(cache.load, sop_uid)
    if found is None:
        raise NotFound(f"no instance {sop_uid}")
    return found


def _frame_number(request: Request, inst: InstancePixels) -> int:
    n = request.path_params["frame"]
    if n < 1:
        raise BadRequest("frames are numbered from 1")
    if n > inst.number_of_frames or not inst.has_pixels:
        raise NotFound(f"instance {inst.sop_instance_uid} has {inst.number_of_frames if inst.has_pixels else 'no'} "
                       f"frame(s); there is no frame {n}")
    return n


@requires(["authenticated", "read"])
async def instance_metadata(request: Request) -> JSONResponse:
    """What a viewer needs to turn raw frames into pixels on screen."""
    inst, _ = await _instance_async(request)
    return JSONResponse({
        "instanceUid": inst.sop_instance_uid,
        "sopClassUid": inst.sop_class_uid,
        "studyUid": inst.study_uid,
        "seriesUid": inst.series_uid,
        "instanceNumber": inst.instance_number,
        "rows": inst.rows,
        "columns": inst.columns,
        "samplesPerPixel": inst.samples_per_pixel,
        "photometricInterpretation": inst.photometric_interpretation,
        "bitsAllocated": inst.bits_allocated,
        "bitsStored": inst.bits_stored,
        "pixelRepresentation": inst.pixel_representation,
        "rescaleSlope": inst.rescale_slope if inst.rescale_slope is not None else 1.0,
        "rescaleIntercept": inst.rescale_intercept if inst.rescale_intercept is not None else 0.0,
        "windowCenter": list(inst.window_center),
        "windowWidth": list(inst.window_width),
        "pixelSpacing": list(inst.pixel_spacing),
        "numberOfFrames": inst.number_of_frames if inst.has_pixels else 0,
        "transferSyntaxUid": inst.transfer_syntax,
        "frameUrls": [f"/api/pacs/instances/{inst.sop_instance_uid}/frames/{n}"
                      for n in range(1, inst.number_of_frames + 1)] if inst.has_pixels else [],
    })


@requires(["authenticated", "read"])
async def frame(request: Request) -> Response:
    """Frame bytes as stored (``?decode=1``: decoded to little endian pixels).

    Runs on the event loop: a stored frame is one ``pread`` from the page cache, cheaper
    than handing the request to a worker thread; decoding goes to a worker thread.
    """
    inst, path = await _instance_async(request)
    n = _frame_number(request, inst)
    decode = request.query_params.get("decode", "0") not in ("0", "", "false")
    etag = etag_for(inst.sha256, "f", n, "d" if decode else "s")
    if is_fresh(request, etag):
        return not_modified(etag)
    with frame_problems(inst.sop_instance_uid):
        body, syntax = await _frame_bytes(path, inst, n, decode)
    return Response(body, media_type=frame_media_type(syntax), headers=cache_headers(etag))


async def _frame_bytes(path: Path, inst: InstancePixels, n: int, decode: bool) -> tuple[bytes, str]:
    if decode:
        return await run_in_threadpool(decoded_frame_bytes, path, inst, n), EXPLICIT_LE
    if stored_frame(inst):
        return read_frame(path, inst, n)
    return await run_in_threadpool(read_frame, path, inst, n)


@requires(["authenticated", "read"])
def rendered_frame(request: Request) -> Response:
    """``?window=40,400&format=png|jpeg&quality=90&size=512``: a picture of the frame."""
    inst, path = _instance(request)
    n = _frame_number(request, inst)
    fmt = request.query_params.get("format", "png")
    if fmt not in FORMATS:
        raise BadRequest(f"format must be one of {', '.join(FORMATS)}")
    quality = int_param(request, "quality", 90, 1, 100)
    size = int_param(request, "size", 0, 1, MAX_RENDER_SIZE) or None
    try:
        window = parse_window(request.query_params["window"]) if request.query_params.get("window") else None
    except RenderError as exc:
        raise BadRequest(str(exc)) from None
    etag = etag_for(inst.sha256, "r", n, fmt, quality if fmt == "jpeg" else "",
                    f"{window.center}_{window.width}" if window else "", size or "")
    if is_fresh(request, etag):
        return not_modified(etag)
    with frame_problems(inst.sop_instance_uid):
        picture = render_frame(frame_array(path, inst, n), inst, window)
    return immutable_response(request, encode_picture(picture, fmt, quality, size), FORMATS[fmt], etag)


@requires(["authenticated", "read"])
def thumbnail(request: Request) -> Response:
    """A small JPEG of the instance's middle frame, rendered once and then read from disk."""
    inst, path = _instance(request)
    ctx = context_of(request)
    size = ctx.settings.web.thumbnail_size
    etag = etag_for(inst.sha256, "t", size)
    if is_fresh(request, etag):
        return not_modified(etag)
    if not inst.has_pixels:
        raise NotFound(f"instance {inst.sop_instance_uid} has no pixel data")
    with frame_problems(inst.sop_instance_uid):
        body = thumbnail_bytes(ctx.thumbnail_dir, path, inst, size)
    return immutable_response(request, body, "image/jpeg", etag)


@requires(["authenticated", "read"])
def instance_file(request: Request) -> Response:
    """The stored Part 10 file, byte for byte."""
    inst, path = _instance(request)
    with database.connection_context():
        accounts.record_access(request.user.identity, inst.study_uid, "file", client_address(request))
    etag = etag_for(inst.sha256)
    if is_fresh(request, etag):
        return not_modified(etag)
    headers = {**cache_headers(etag),
               "Content-Disposition": f'attachment; filename="{inst.sop_instance_uid}.dcm"'}
    if inst.size > SMALL_FILE:  # streamed in chunks (and Range requests are honoured)
        if not path.is_file():
            raise NotFound(f"the file of instance {inst.sop_instance_uid} is missing from storage")
        return FileResponse(path, media_type="application/dicom", headers=headers)
    try:  # one read in this worker thread beats a thread hop per 64 KiB chunk
        body = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"the file of instance {inst.sop_instance_uid} is missing from storage") from None
    return Response(body, media_type="application/dicom", headers=headers)
