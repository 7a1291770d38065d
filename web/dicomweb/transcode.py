"""Instances and frames in the transfer syntax a WADO-RS client asks for (PS3.18 8.7.3.5).

The stored bytes are streamed as they are whenever they already are what was asked (and
always for ``transfer-syntax=*``). Otherwise the node converts only where it can do so
faithfully: between the little endian uncompressed syntaxes (pydicom re-encodes the
header), and from a compressed syntax to Explicit VR Little Endian where pydicom has a
decoder installed (RLE always; JPEG and JPEG 2000 through Pillow). It never encodes into a
compressed syntax; big endian files are served as stored only. What cannot be produced is
a 406 before the response starts.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from web.dicomweb.accept import DEFLATED_LE, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, UNCOMPRESSED

AS_STORED = "*"
CHUNK = 1 << 20
_LITTLE_ENDIAN_NATIVE = frozenset({EXPLICIT_LE, IMPLICIT_LE, DEFLATED_LE})


@lru_cache(maxsize=64)
def can_decode(transfer_syntax: str) -> bool:
    """Whether an installed pydicom pixel data decoder handles this (compressed) syntax."""
    from pydicom.pixels import get_decoder

    try:
        return get_decoder(transfer_syntax).is_available
    except (NotImplementedError, ValueError):
        return False


def instance_target(stored: str, asked: str | None) -> str | None:
    """The syntax to send a stored instance in, for ``asked`` (None: the default, Explicit VR
    Little Endian, PS3.18 8.7.3.5.2); None when it cannot be produced here."""
    target = asked or EXPLICIT_LE
    if target in (AS_STORED, stored):
        return stored
    if target not in (EXPLICIT_LE, IMPLICIT_LE) or stored == EXPLICIT_BE:
        return None
    if stored in _LITTLE_ENDIAN_NATIVE or can_decode(stored):
        return target
    return None


def frame_target(stored: str, asked: str | None) -> str | None:
    """The syntax frames are sent in (PS3.18 8.7.3.5.3): raw little endian pixels when no
    syntax or an uncompressed one is asked, the stored bytes for ``*`` or the stored syntax."""
    if asked in (AS_STORED, stored):
        return stored if stored != EXPLICIT_BE or asked == AS_STORED else None
    if asked not in (None, EXPLICIT_LE, IMPLICIT_LE):
        return None
    if stored in UNCOMPRESSED or can_decode(stored):
        return EXPLICIT_LE
    return None


def file_chunks(path: str | Path, chunk: int = CHUNK) -> Iterator[bytes]:
    """The stored file as it is, a chunk at a time (a series is never held in memory)."""
    with open(path, "rb", buffering=0) as fh:
        while data := fh.read(chunk):
            yield data


def instance_chunks(path: str | Path, stored: str, target: str) -> Iterator[bytes]:
    """The instance in ``target``: streamed as stored, or converted one instance at a time."""
    if target == stored:
        yield from file_chunks(path)
        return
    yield converted(path, stored, target)


def converted(path: str | Path, stored: str, target: str) -> bytes:
    """A Part 10 file re-encoded in ``target`` (uncompressed), decompressing if needed."""
    from pydicom import dcmread

    ds = dcmread(path)
    if stored not in UNCOMPRESSED:
        ds.decompress()
    ds.file_meta.TransferSyntaxUID = target
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
