"""The study, series and instance a WADO-RS path names (PS3.18 10.4.1), and their URLs.

UIDs are checked before any look-up (400), then the catalogue is asked in the calling
thread; a path naming nothing stored, or an instance under another series or study than
the path says, is a 404. Files are resolved inside ``data_dir`` only.
"""

from __future__ import annotations

import os
import stat
from functools import lru_cache
from pathlib import Path

from starlette.requests import Request

from db import dicomweb_lookups
from db.dicomweb_lookups import InstanceFile
from db.lookups import InstancePixels
from db.models import database
from web.context import context_of
from web.errors import NotFound
from web.params import uid_param


def service_url(request: Request) -> str:
    """The DICOMweb root as the client reached it (scheme, host and port of the request)."""
    root = context_of(request).settings.dicomweb.root.rstrip("/")
    base = request.base_url
    server = request.scope.get("server")
    # dicomweb-client sends "Host: 127.0.0.1" without the port; a client that reached the
    # server's own address directly gets the port the server listens on back in its URLs
    if server and base.port is None and base.hostname == server[0] and server[1] not in (80, 443):
        base = base.replace(port=server[1])
    return str(base).rstrip("/") + root


def study_path(study: str) -> str:
    return f"studies/{study}"


def series_path(study: str, series: str) -> str:
    return f"studies/{study}/series/{series}"


def instance_path(study: str, series: str, sop: str) -> str:
    return f"studies/{study}/series/{series}/instances/{sop}"


def path_uids(request: Request) -> tuple[str, str | None, str | None]:
    """Study, series and instance UIDs of the path (the ones it has), each checked."""
    params = request.path_params
    study = uid_param(request, "study")
    series = uid_param(request, "series") if "series" in params else None
    sop = uid_param(request, "sop") if "sop" in params else None
    return study, series, sop


def named_files(request: Request) -> list[InstanceFile]:
    """Every stored instance the path names, in viewing order; 404 when there is none."""
    study, series, sop = path_uids(request)
    with database.connection_context():
        files = dicomweb_lookups.instance_files(study, series, sop)
    if not files:
        what = f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"
        raise NotFound(f"no {what} is stored under this path")
    return files


def absolute(request: Request, relative: str) -> Path:
    """The stored file's path, normalised without touching the disk; a catalogue row must
    never lead out of data_dir."""
    return Path(_inside(_resolved(context_of(request).data_dir), relative))


def stored_files_on_disk(request: Request, files: list[InstanceFile]) -> tuple[list[str], list[int]]:
    """Each instance's file and its size now, by one stat each (a series retrieve names
    hundreds: strings, not Paths, which cost ten times as much here); 404 when any is missing,
    before a byte of the answer is sent."""
    root = _resolved(context_of(request).data_dir)
    paths = [_inside(root, f.path) for f in files]
    sizes = []
    for f, path in zip(files, paths):
        try:
            found = os.stat(path)
        except FileNotFoundError:
            found = None
        if found is None or not stat.S_ISREG(found.st_mode):
            missing = sum(not os.path.isfile(p) for p in paths)
            raise NotFound(f"the files of {missing} instance(s) are missing from storage, "
                           f"first {f.sop_instance_uid}")
        sizes.append(found.st_size)
    return paths, sizes


def _inside(root: str, relative: str) -> str:
    path = os.path.normpath(os.path.join(root, relative))
    if not path.startswith(root.rstrip(os.sep) + os.sep):
        raise NotFound("the stored file is not available")
    return path


@lru_cache(maxsize=8)
def _resolved(folder: Path) -> str:
    return str(folder.resolve())


def named_instance(request: Request) -> tuple[InstancePixels, Path]:
    """The one instance the path names, with its pixel layout, checked against the path."""
    study, series, sop = path_uids(request)
    assert sop is not None
    cache = context_of(request).instances  # a viewer reads every frame: one look-up per instance
    found = cache.get(sop) or cache.load(sop)
    if found is None or found[0].study_uid != study or (series is not None and found[0].series_uid != series):
        raise NotFound(f"no instance {sop} is stored under this path")
    return found


def pixel_vr(inst: InstancePixels) -> str | None:
    """The VR Pixel Data has in the JSON model: OB for encapsulated or byte pixels, else OW."""
    if not inst.has_pixels:
        return None
    return "OB" if inst.encapsulated or (inst.bits_allocated or 16) <= 8 else "OW"
