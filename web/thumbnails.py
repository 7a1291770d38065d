"""Thumbnails rendered once and kept on disk under ``data_dir/cache/thumbnails``.

The cache key is the stored file's SHA-256 and the size, so a replaced instance never shows
a stale picture, and entries are written to a temp name and renamed: a reader sees a whole
JPEG or none.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from db.lookups import InstancePixels
from node.frames import frame_array
from node.render import encode_picture, render_frame

THUMBNAIL_QUALITY = 80


def thumbnail_path(cache_dir: Path, sha256: str, size: int) -> Path:
    return cache_dir / sha256[:2] / f"{sha256}-{size}.jpg"


def thumbnail_bytes(cache_dir: Path, path: Path, inst: InstancePixels, size: int) -> bytes:
    """The cached JPEG, rendering it from the middle frame on first use."""
    cached = thumbnail_path(cache_dir, inst.sha256, size)
    try:
        return cached.read_bytes()
    except FileNotFoundError:
        pass
    middle = (inst.number_of_frames + 1) // 2
    picture = render_frame(frame_array(path, inst, middle), inst)
    body = encode_picture(picture, "jpeg", THUMBNAIL_QUALITY, size)
    cached.parent.mkdir(parents=True, exist_ok=True)
    temp = cached.with_name(f".{uuid.uuid4().hex}.part")
    temp.write_bytes(body)
    os.replace(temp, cached)
    return body
