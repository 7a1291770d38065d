"""WADO-RS retrieval of instances and of their metadata (PS3.18 10.4), study, series and
instance level.

Instances go out as ``multipart/related; type="application/dicom"``, one part per instance,
each streamed from its stored file a chunk at a time (converted only when the client asks
for another transfer syntax than the stored one, one instance at a time). Metadata is the
JSON of every instance, read from the per-instance cache (built from the file on first
use), so a 250-instance series costs 250 small file reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from db import lookups
from db.dicomweb_lookups import InstanceFile
from db.models import database
from web.context import context_of
from web.dicomweb import dicomjson
from web.dicomweb.accept import DICOM, DICOM_JSON, accepted, dicom_range, require_json
from web.dicomweb.access import audit, require_read
from web.dicomweb.errors import NotAcceptable
from web.dicomweb.multipart import closing, multipart_type, new_boundary, part_head
from web.dicomweb.resources import (absolute, instance_path, named_files, pixel_vr, service_url,
                                    stored_files_on_disk)
from web.dicomweb.streaming import PrefetchingResponse, StoredFilesResponse, packed
from web.dicomweb.transcode import instance_chunks, instance_target

_METADATA_BATCH = 64  # instances joined per chunk of a metadata answer


def _plan(request: Request, files: list[InstanceFile]) -> tuple[bool, dict[str, str]]:
    """(multipart?, stored syntax -> syntax sent) for the first acceptable media range."""
    stored = sorted({f.transfer_syntax for f in files})
    for media in accepted(request):
        found = dicom_range(media)
        if found is None:
            continue
        multipart, asked = found
        if not multipart and len(files) != 1:
            continue
        targets = {ts: instance_target(ts, asked) for ts in stored}
        if all(targets.values()):
            return multipart, targets  # type: ignore[return-value]
    raise NotAcceptable(
        f"cannot send these instances (stored as {', '.join(stored)}) as "
        f"{request.headers.get('accept', '*/*')[:160]!r}: this node sends the stored syntax "
        "(transfer-syntax=*), Explicit VR Little Endian, or Implicit VR Little Endian where it "
        "can decode the stored one; a single-part application/dicom only for one instance")


def retrieve(request: Request) -> Response:
    """Study, series or instance as DICOM (PS3.18 10.4.1.1.1): stored bytes, streamed."""
    who = require_read(request)
    files = named_files(request)
    multipart, targets = _plan(request, files)
    paths, sizes = stored_files_on_disk(request, files)
    audit(request, who, [files[0].study_uid], "dicomweb-retrieve")
    as_stored = all(targets[f.transfer_syntax] == f.transfer_syntax for f in files)
    if not multipart:
        stored, target = files[0].transfer_syntax, targets[files[0].transfer_syntax]
        media = f"{DICOM}; transfer-syntax={target}"
        if as_stored:
            return StoredFilesResponse([b""], paths, sizes, b"", media)
        return PrefetchingResponse(packed(instance_chunks(paths[0], stored, target)), media)
    boundary = new_boundary()
    sent = set(targets.values())
    media = multipart_type(DICOM, boundary, sent.pop() if len(sent) == 1 else None)
    heads = [part_head(boundary, f"{DICOM}; transfer-syntax={targets[f.transfer_syntax]}", i == 0)
             for i, f in enumerate(files)]
    tail = closing(boundary)
    if as_stored:  # sent by the kernel or read straight into blocks, the length known up front
        return StoredFilesResponse(heads, paths, sizes, tail, media)
    return PrefetchingResponse(packed(_multipart_chunks(files, paths, heads, tail, targets)), media)


def _multipart_chunks(files: list[InstanceFile], paths: list[str], heads: list[bytes],
                      tail: bytes, targets: dict[str, str]) -> Iterator[bytes]:
    for f, path, head in zip(files, paths, heads):
        yield head
        yield from instance_chunks(path, f.transfer_syntax, targets[f.transfer_syntax])
    yield tail


def metadata(request: Request) -> Response:
    """The DICOM JSON of every instance the path names (PS3.18 10.4.1.1.2)."""
    who = require_read(request)
    require_json(request)
    files = named_files(request)
    audit(request, who, [files[0].study_uid], "dicomweb-metadata")
    cache_dir = context_of(request).data_dir / "cache" / "dicomweb"
    base = service_url(request)
    def path_of(f: InstanceFile) -> Path:  # resolved only when the cache lacks the instance
        return absolute(request, f.path)

    return StreamingResponse(_metadata_chunks(files, path_of, cache_dir, base), media_type=DICOM_JSON)


def _metadata_chunks(files: list[InstanceFile], path_of: Callable[[InstanceFile], Path],
                     cache_dir: Path, base: str) -> Iterator[str]:
    yield "["
    for start in range(0, len(files), _METADATA_BATCH):
        texts = [instance_json(f, path_of, cache_dir) for f in files[start:start + _METADATA_BATCH]]
        yield ("," if start else "") + dicomjson.with_base(",".join(texts), base)
    yield "]"


def instance_json(f: InstanceFile, path_of: Callable[[InstanceFile], Path], cache_dir: Path) -> str:
    """One instance's cached metadata text (base URL still a placeholder)."""

    def build() -> str:
        path = path_of(f)
        with database.connection_context():
            inst = lookups.instance_pixels(f.sop_instance_uid)
        vr = pixel_vr(inst) if inst is not None else None
        return dicomjson.instance_json_text(
            path, instance_path(f.study_uid, f.series_uid, f.sop_instance_uid), vr)

    return dicomjson.cached_json_text(cache_dir, f.sha256, build)
