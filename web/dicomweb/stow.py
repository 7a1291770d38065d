"""STOW-RS (PS3.18 10.5): ``POST /studies[/{study}]`` with ``multipart/related;
type="application/dicom"``, each part a PS3.10 file, stored through the one ingest path.

The body is streamed to a temp file under ``data_dir/tmp`` (capped by ``[dicomweb]
max_stow_bytes``, 413 beyond), then split in one pass; a body whose framing is broken, or
with a part of another media type, is refused whole (400, 415) before anything is stored.
Each part is then stored (durable, catalogued) or failed on its own with a reason
(PS3.18 Table 10.5.3-2): 0xA900 its study differs from the URL's, 0xC000 not a DICOM file,
0x0111 duplicate refused, 0xA700 out of resources, 0x0110 other processing failure. The
answer is DICOM JSON with ReferencedSOPSequence and FailedSOPSequence: 200 all stored,
202 some failed, 409 none stored.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from node.dicomfile import read_header
from node.importer import as_part10
from node.errors import DuplicateInstance, IngestError, InvalidDataset, StorageFull
from node.storage import TEMP_DIR
from web.context import context_of
from web.dicomweb import dicomjson
from web.dicomweb.accept import DICOM, DICOM_JSON, MULTIPART
from web.dicomweb.access import audit, require_upload
from web.dicomweb.multipart import Part, check_boundary, content_type_params, split_parts
from web.dicomweb.resources import instance_path, service_url, study_path
from web.errors import BadRequest, PayloadTooLarge, Problem, UnsupportedMedia
from web.params import uid_param

PROCESSING_FAILURE = 0x0110
DUPLICATE = 0x0111
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000


class NotStoring(Problem):
    status, title = 503, "Service Unavailable"


@dataclass(frozen=True)
class PartResult:
    """What became of one part: stored (reason None) or failed with a reason."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_uid: str | None
    series_uid: str | None
    reason: int | None = None
    detail: str = ""


async def store(request: Request) -> Response:
    """Spool the body to disk on the event loop, then split and ingest in a worker thread."""
    who = require_upload(request)
    study = uid_param(request, "study") if "study" in request.path_params else None
    boundary = _request_boundary(request)
    ctx = context_of(request)
    if ctx.ingestor is None:
        raise NotStoring("this node is not storing over HTTP (no ingest path in this process)")
    limit = ctx.settings.dicomweb.max_stow_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"the request body exceeds dicomweb.max_stow_bytes ({limit} bytes)")
    temp_dir = ctx.data_dir / TEMP_DIR
    temp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=temp_dir, prefix="stow-", suffix=".part")
    try:
        try:
            with os.fdopen(fd, "wb") as spool:
                size = 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"the request body exceeds dicomweb.max_stow_bytes "
                                              f"({limit} bytes); nothing was stored")
                    spool.write(chunk)
        except ClientDisconnect:
            raise BadRequest("the client went away before the body was complete; nothing was "
                             "stored") from None
        except OSError as exc:  # the disk is full (or failing): nothing was stored
            raise NotStoring(f"cannot receive the request body: {exc.strerror}; nothing was "
                             "stored", {"Retry-After": "60"}) from None
        results = await run_in_threadpool(store_body, Path(name), boundary, study, ctx.ingestor)
    finally:
        os.unlink(name)
    stored_studies = {r.study_uid for r in results if r.reason is None and r.study_uid}
    if stored_studies:
        audit(request, who, stored_studies, "dicomweb-store")
    return stow_response(results, study, service_url(request))


def _request_boundary(request: Request) -> str:
    """The boundary of a ``multipart/related; type="application/dicom"`` body, else 415."""
    value = request.headers.get("content-type", "")
    media_type, params = content_type_params(value)
    if media_type != MULTIPART:
        raise UnsupportedMedia(f"STOW-RS takes multipart/related; type=\"application/dicom\", "
                               f"not {value[:80]!r}")
    part_type = params.get("type", DICOM).lower()
    if part_type != DICOM:
        raise UnsupportedMedia(f"STOW-RS here takes PS3.10 files (type=\"application/dicom\"), "
                               f"not type={part_type[:60]!r}")
    return check_boundary(params.get("boundary"))


def store_body(path: Path, boundary: str, study: str | None, ingestor: Any) -> list[PartResult]:
    """Split the spooled body and store each part through the ingest path."""
    if path.stat().st_size == 0:
        split_parts(b"", boundary)  # raises the 400 for an empty body
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as body:
        parts = split_parts(body, boundary)
        _check_part_types(parts)
        return [store_part(bytes(body[p.start:p.end]), study, ingestor) for p in parts]


def _check_part_types(parts: list[Part]) -> None:
    for number, part in enumerate(parts, 1):
        if part.content_type not in (None, DICOM):
            raise UnsupportedMedia(f"part {number} is {part.content_type!r}; every part must be "
                                   "application/dicom (metadata and bulk data parts are not taken)")


def store_part(data: bytes, study: str | None, ingestor: Any) -> PartResult:
    """One part: identify it, check its study against the URL's, then ingest it."""
    data = as_part10(data)  # pydicom's dcmwrite leaves out the preamble of a new dataset
    if len(data) < 132 or data[128:132] != b"DICM":
        return PartResult(None, None, None, None, CANNOT_UNDERSTAND,
                          "not a DICOM PS3.10 file (no DICM prefix, no file meta)")
    try:
        header = read_header(data)
    except InvalidDataset as exc:
        return PartResult(None, None, None, None, CANNOT_UNDERSTAND, str(exc))
    ids = (header.sop_class_uid, header.sop_instance_uid, header.study_uid, header.series_uid)
    if study is not None and header.study_uid != study:
        return PartResult(*ids, DOES_NOT_MATCH,
                          f"the instance belongs to study {header.study_uid}, not {study}")
    try:
        ingestor.ingest_part10(data)
    except DuplicateInstance as exc:
        return PartResult(*ids, DUPLICATE, str(exc))
    except StorageFull as exc:
        return PartResult(*ids, OUT_OF_RESOURCES, str(exc))
    except InvalidDataset as exc:
        return PartResult(*ids, CANNOT_UNDERSTAND, str(exc))
    except IngestError as exc:
        return PartResult(*ids, PROCESSING_FAILURE, str(exc))
    return PartResult(*ids)


def stow_response(results: list[PartResult], study: str | None, base: str) -> Response:
    """The Store Instances Response Module (PS3.18 10.5.3) as DICOM JSON."""
    referenced, failed = [], []
    for r in results:
        item = {"00081150": dicomjson.attribute("ReferencedSOPClassUID", r.sop_class_uid),
                "00081155": dicomjson.attribute("ReferencedSOPInstanceUID", r.sop_instance_uid)}
        if r.reason is None:
            item["00081190"] = dicomjson.attribute("RetrieveURL", f"{base}/" + instance_path(
                r.study_uid or "", r.series_uid or "", r.sop_instance_uid or ""))
            referenced.append(dicomjson.json_object(item.items()))
        else:
            item["00081197"] = dicomjson.attribute("FailureReason", r.reason)
            failed.append(dicomjson.json_object(item.items()))
    out: dict[str, Any] = {}
    studies = {r.study_uid for r in results if r.reason is None}
    target = study or (studies.pop() if len(studies) == 1 else None)
    if target:
        out["00081190"] = dicomjson.attribute("RetrieveURL", f"{base}/{study_path(target)}")
    if failed:
        out["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        out["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else 202 if referenced else 409
    headers = {}
    if failed:  # the why of each failure, for people reading the exchange (RFC 9111 5.5)
        why = [f"part {n}: {r.detail}" for n, r in enumerate(results, 1) if r.reason is not None]
        text = "; ".join(why[:5]) + (f"; and {len(why) - 5} more" if len(why) > 5 else "")
        headers["Warning"] = '299 pacsnode "' + text.replace('"', "'").encode(
            "ascii", "replace").decode("ascii")[:900] + '"'
    return Response(dicomjson.dumps(dicomjson.json_object(out.items())), status_code=status,
                    media_type=DICOM_JSON, headers=headers)
