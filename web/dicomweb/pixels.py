"""WADO-RS pixel resources (PS3.18 10.4.1.1.3 to 10.4.1.1.5): frames, bulk data, rendered and
thumbnail, over the HTTP API's frame reader (node.frames) and renderer (node.render).

Frames are read at the offsets recorded at ingest and sent as stored when the client takes
the stored syntax (``transfer-syntax=*``, or its media type such as ``image/jpeg``); with no
syntax asked they are uncompressed little endian pixels (decoded only where a codec is
installed, else 406). Rendered pictures are JPEG or PNG with ``window=`` and ``viewport=``.
As on ``/api/``, reads of frames and pictures are not audited one by one (the retrieve and
metadata reads of the study are).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from db import dicomweb_lookups, lookups
from db.lookups import InstancePixels
from db.models import database
from node.frames import (
    FrameError,
    NoPixelData,
    NoSuchFrame,
    check_frame,
    decoded_frame_bytes,
    frame_array,
    read_frame,
    stored_frame,
)
from node.render import RenderError, Window, encode_picture, parse_window, render_frame
from web.caching import cache_headers, etag_for, immutable_response, is_fresh, not_modified
from web.context import context_of
from web.dicomweb.accept import FRAME_MEDIA_TYPES, MULTIPART, OCTET_STREAM, UNCOMPRESSED, accepted
from web.dicomweb.access import require_read
from web.dicomweb.errors import NotAcceptable
from web.dicomweb.multipart import multipart_body, multipart_type, new_boundary
from web.dicomweb.resources import absolute, named_files, named_instance, path_uids
from web.dicomweb.transcode import AS_STORED, can_decode
from web.errors import BadRequest, NotFound, frame_problems
from web.params import uid_param
from web.thumbnails import thumbnail_bytes

FrameReader = Callable[[Path, InstancePixels, int], bytes]
_PICTURES = {"image/jpeg": "jpeg", "image/png": "png"}
MAX_VIEWPORT = 4096


def frame_numbers(request: Request, inst: InstancePixels) -> list[int]:
    """``frames/1,3,5``: 1-based, each in range (404 past the last frame)."""
    text = request.path_params["frames"]
    try:
        numbers = [int(item) for item in text.split(",")]
    except ValueError:
        raise BadRequest(f"frames: expected a comma list of frame numbers, got {text[:40]!r}") from None
    if any(n < 1 for n in numbers):
        raise BadRequest("frames are numbered from 1")
    try:
        for n in numbers:
            check_frame(inst, n)
    except (NoSuchFrame, NoPixelData) as exc:
        raise NotFound(str(exc)) from None
    return numbers


def _stored(path: Path, inst: InstancePixels, n: int) -> bytes:
    return read_frame(path, inst, n)[0]


def _uncompressed(path: Path, inst: InstancePixels, n: int) -> bytes:
    """Little endian pixels: the stored bytes of native frames, else decoded."""
    if inst.transfer_syntax in UNCOMPRESSED:
        return read_frame(path, inst, n)[0]  # big endian files are decoded by read_frame
    return decoded_frame_bytes(path, inst, n)


def frame_plan(request: Request, inst: InstancePixels) -> tuple[bool, str, str, FrameReader]:
    """(multipart?, part media type, transfer syntax sent, reader) for the first media range
    that can be served (PS3.18 8.7.3.5.3); 406 when none can."""
    stored = inst.transfer_syntax
    native = stored in UNCOMPRESSED
    decodable = native or can_decode(stored)
    for media in accepted(request):
        multipart = media.media_type == MULTIPART
        kind = (media.part_type or OCTET_STREAM) if multipart else media.media_type
        asked = media.transfer_syntax
        if kind in ("*/*", "application/*", "multipart/*"):
            if native:
                return True, OCTET_STREAM, "1.2.840.10008.1.2.1", _uncompressed
            image = next((t for t, syntaxes in FRAME_MEDIA_TYPES.items() if stored in syntaxes),
                         OCTET_STREAM)
            return True, image, stored, _stored
        if kind == OCTET_STREAM:
            if asked == AS_STORED or (asked == stored and not native):
                return multipart, OCTET_STREAM, stored, _stored
            if asked in (None, "1.2.840.10008.1.2.1", "1.2.840.10008.1.2") and decodable:
                return multipart, OCTET_STREAM, "1.2.840.10008.1.2.1", _uncompressed
            continue
        syntaxes = FRAME_MEDIA_TYPES.get(kind, ())
        if stored in syntaxes and asked in (None, AS_STORED, stored):
            return multipart, kind, stored, _stored
    raise NotAcceptable(
        f"frames of this instance are stored as {stored}: this node sends them as stored "
        "(transfer-syntax=* or their media type"
        + (", or uncompressed (application/octet-stream)" if decodable else "")
        + f"); the request accepts {request.headers.get('accept', '*/*')[:160]!r}")


async def frames(request: Request) -> Response:
    """``.../instances/{sop}/frames/{list}``: one part per frame, in the order asked.

    On the event loop, as ``/api/`` frames: a remembered instance's stored frame is one
    ``pread`` from the page cache, cheaper than a hop to a worker thread; catalogue
    look-ups and decoding go to worker threads.
    """
    require_read(request)
    cache = context_of(request).instances
    sop = uid_param(request, "sop")
    if cache.get(sop) is None:
        await run_in_threadpool(named_instance, request)  # remembers it, or raises
    inst, path = named_instance(request)
    numbers = frame_numbers(request, inst)
    multipart, part_type, syntax, reader = frame_plan(request, inst)
    if not multipart and len(numbers) != 1:
        raise NotAcceptable("several frames need multipart/related (single part: one frame)")
    etag = etag_for(inst.sha256, "wf", "_".join(map(str, numbers)), part_type, syntax,
                    "m" if multipart else "s")
    if is_fresh(request, etag):
        return not_modified(etag)
    with frame_problems(inst.sop_instance_uid, NotAcceptable):
        if stored_frame(inst) and (reader is _stored or inst.transfer_syntax in UNCOMPRESSED):
            bodies = [reader(path, inst, n) for n in numbers]
        else:
            bodies = await run_in_threadpool(lambda: [reader(path, inst, n) for n in numbers])
    content_type = f"{part_type}; transfer-syntax={syntax}"
    if not multipart:
        return Response(bodies[0], media_type=content_type, headers=cache_headers(etag))
    boundary = new_boundary()
    body = b"".join(multipart_body(boundary, ((content_type, [b]) for b in bodies)))
    return Response(body, media_type=multipart_type(part_type, boundary, syntax),
                    headers=cache_headers(etag))


def bulkdata(request: Request) -> Response:
    """``.../bulkdata/7FE00010`` (Pixel Data as stored, one frame a part) or another binary
    element by its tag path, as ``multipart/related; type="application/octet-stream"``."""
    require_read(request)
    inst, path = named_instance(request)
    tags = request.path_params["tags"].upper().split("/")
    if tags == ["7FE00010"]:
        if not inst.has_pixels:
            raise NotFound(f"instance {inst.sop_instance_uid} has no pixel data")
        try:
            chunks = [_stored(path, inst, n) for n in range(1, inst.number_of_frames + 1)]
        except FrameError as exc:
            raise NotFound(str(exc)) from None
        syntax = inst.transfer_syntax
    else:
        chunks, syntax = [_element_bytes(path, tags)], "1.2.840.10008.1.2.1"
    content_type = f"{OCTET_STREAM}; transfer-syntax={syntax}"
    boundary = new_boundary()
    body = b"".join(multipart_body(boundary, ((content_type, [c]) for c in chunks)))
    return Response(body, media_type=multipart_type(OCTET_STREAM, boundary))


def _element_bytes(path: Path, tags: list[str]) -> bytes:
    """A binary element's value, by tag, item index, tag... (as BulkDataURIs name them)."""
    from pydicom import dcmread

    try:
        node = dcmread(path, stop_before_pixels=True)
        for position, item in enumerate(tags):
            if position % 2:
                node = node[int(item)]
            else:
                node = node[int(item, 16)] if position == len(tags) - 1 else node[int(item, 16)].value
    except FileNotFoundError:
        raise NotFound("the stored file is missing") from None
    except (KeyError, IndexError, ValueError, TypeError):
        raise NotFound(f"no bulk data element {'/'.join(tags)} in this instance") from None
    value = node.value
    if not isinstance(value, (bytes, bytearray)):
        raise NotFound(f"element {'/'.join(tags)} is not binary")
    return bytes(value)


def picture_format(request: Request) -> str:
    """JPEG or PNG from the Accept header (PS3.18 8.7.4; JPEG when anything goes)."""
    for media in accepted(request):
        if media.media_type in _PICTURES:
            return _PICTURES[media.media_type]
        if media.media_type in ("*/*", "image/*"):
            return "jpeg"
    raise NotAcceptable("rendered resources are image/jpeg or image/png")


def viewport_size(request: Request) -> int | None:
    """``viewport=vw,vh`` (or ``vw,vh,sx,sy,sw,sh``): the picture fits in vw x vh."""
    text = request.query_params.get("viewport")
    if not text:
        return None
    try:
        width, height = (int(float(v)) for v in text.split(",")[:2])
    except ValueError:
        raise BadRequest(f"viewport: expected 'width,height', got {text[:40]!r}") from None
    if not (1 <= width <= MAX_VIEWPORT and 1 <= height <= MAX_VIEWPORT):
        raise BadRequest(f"viewport: width and height must be 1 to {MAX_VIEWPORT}")
    return min(width, height)


def window_param(request: Request) -> Window | None:
    """``window=center,width[,function]`` (PS3.18 8.3.5.1.4; LINEAR only)."""
    text = request.query_params.get("window")
    if not text:
        return None
    parts = text.split(",")
    if len(parts) == 3:
        if parts[2].strip().upper() not in ("LINEAR", ""):
            raise BadRequest(f"window: only the LINEAR function is supported, got {parts[2][:20]!r}")
        parts = parts[:2]
    try:
        return parse_window(",".join(parts))
    except RenderError as exc:
        raise BadRequest(str(exc)) from None


def quality_param(request: Request) -> int:
    raw = request.query_params.get("quality", "90")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise BadRequest(f"quality: expected 1 to 100, got {raw[:20]!r}")
    return int(raw)


def rendered(request: Request) -> Response:
    """``.../rendered`` (the first frame) or ``.../frames/{n}/rendered`` as JPEG or PNG."""
    require_read(request)
    inst, path = named_instance(request)
    n = frame_numbers(request, inst)[0] if "frames" in request.path_params else 1
    if not inst.has_pixels:
        raise NotFound(f"instance {inst.sop_instance_uid} has no pixel data")
    fmt = picture_format(request)
    size, window, quality = viewport_size(request), window_param(request), quality_param(request)
    return picture_response(request, path, inst, n, fmt, window, quality, size)


def picture_response(request: Request, path: Path, inst: InstancePixels, n: int, fmt: str,
                     window: Window | None, quality: int, size: int | None) -> Response:
    etag = etag_for(inst.sha256, "w", n, fmt, quality if fmt == "jpeg" else "",
                    f"{window.center}_{window.width}" if window else "", size or "")
    if is_fresh(request, etag):
        return not_modified(etag)
    with frame_problems(inst.sop_instance_uid):
        picture = render_frame(frame_array(path, inst, n), inst, window)
    return immutable_response(request, encode_picture(picture, fmt, quality, size),
                              f"image/{fmt}", etag)


def thumbnail(request: Request) -> Response:
    """A small picture of the study, series, instance or frame: the middle instance's
    middle frame (cached JPEG, as /api/) unless a viewport or PNG is asked."""
    require_read(request)
    study, series, sop = path_uids(request)
    if sop is None:
        files = named_files(request)
        middle = files[(len(files) - 1) // 2] if series else _first_series_middle(files)
        with database.connection_context():
            inst = lookups.instance_pixels(middle.sop_instance_uid)
        if inst is None:
            raise NotFound("the instance is no longer stored")
        path = absolute(request, inst.path)
    else:
        inst, path = named_instance(request)
    if not inst.has_pixels:
        raise NotFound(f"instance {inst.sop_instance_uid} has no pixel data")
    fmt = picture_format(request)
    size = viewport_size(request)
    if "frames" in request.path_params or fmt != "jpeg" or size is not None:
        n = frame_numbers(request, inst)[0] if "frames" in request.path_params else \
            (inst.number_of_frames + 1) // 2
        return picture_response(request, path, inst, n, fmt, None, 80,
                                size or context_of(request).settings.web.thumbnail_size)
    ctx = context_of(request)
    etag = etag_for(inst.sha256, "t", ctx.settings.web.thumbnail_size)
    if is_fresh(request, etag):
        return not_modified(etag)
    with frame_problems(inst.sop_instance_uid):
        body = thumbnail_bytes(ctx.thumbnail_dir, path, inst, ctx.settings.web.thumbnail_size)
    return immutable_response(request, body, "image/jpeg", etag)


def _first_series_middle(files: list[dicomweb_lookups.InstanceFile]) -> dicomweb_lookups.InstanceFile:
    first_series = [f for f in files if f.series_uid == files[0].series_uid]
    return first_series[(len(first_series) - 1) // 2]

