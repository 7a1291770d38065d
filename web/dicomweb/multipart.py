"""multipart/related (RFC 2387, RFC 2046 5.1) as PS3.18 8.6.1.2 uses it, in both directions.

Writing: every part header is exactly ``Content-Type: <type>`` followed by CRLF CRLF, and
parts are delimited by CRLF ``--boundary``; some viewers parse these bytes case- and
whitespace-sensitively. Reading (STOW-RS): the whole body is on disk first, then split in
one pass over a memory map; a body whose structure is broken (no opening or closing
delimiter, headers without their blank line) is refused whole, before any part is stored.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from web.errors import BadRequest

CRLF = b"\r\n"
_BOUNDARY_CHARS = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{1,70}")


def new_boundary() -> str:
    return uuid.uuid4().hex


def multipart_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    """The response Content-Type: ``multipart/related; type="..."; boundary=...``."""
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return value


def part_head(boundary: str, content_type: str, first: bool, location: str | None = None) -> bytes:
    """The delimiter and headers before one part's bytes."""
    head = b"" if first else CRLF
    head += b"--" + boundary.encode("ascii") + CRLF + b"Content-Type: " + content_type.encode("ascii") + CRLF
    if location:
        head += b"Content-Location: " + location.encode("ascii") + CRLF
    return head + CRLF


def closing(boundary: str) -> bytes:
    return CRLF + b"--" + boundary.encode("ascii") + b"--" + CRLF


def multipart_body(boundary: str, parts: Iterable[tuple[str, Iterable[bytes]]]) -> Iterator[bytes]:
    """Stream (content type, chunks) parts as one multipart body, chunk by chunk."""
    first = True
    for content_type, chunks in parts:
        yield part_head(boundary, content_type, first)
        first = False
        yield from chunks
    yield closing(boundary)


@dataclass(frozen=True)
class Part:
    """One received part: its headers (lower-case names) and where its bytes lie."""

    headers: dict[str, str]
    start: int
    end: int

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        return value.split(";")[0].strip().lower() if value else None


def content_type_params(value: str) -> tuple[str, dict[str, str]]:
    """``multipart/related; type="application/dicom"; boundary=X`` -> media type, params."""
    media_type, *rest = value.split(";")
    params = {}
    for item in rest:
        name, _, param = item.partition("=")
        params[name.strip().lower()] = param.strip().strip('"')
    return media_type.strip().lower(), params


def check_boundary(boundary: str | None) -> str:
    if not boundary or not _BOUNDARY_CHARS.fullmatch(boundary) or boundary.endswith(" "):
        raise BadRequest("Content-Type: a multipart body needs a boundary parameter of 1 to 70 "
                         "characters (RFC 2046 5.1.1)")
    return boundary


def split_parts(body: Any, boundary: str) -> list[Part]:
    """Locate every part of a complete multipart body (a bytes-like object, e.g. an mmap).

    The first delimiter may follow a preamble; a part's bytes end where CRLF ``--boundary``
    begins; the close delimiter ``--boundary--`` must be there. Anything else is a 400.
    """
    delimiter = b"--" + boundary.encode("ascii")
    size = len(body)
    if body[:len(delimiter)] == delimiter:
        pos = len(delimiter)
    else:
        found = body.find(CRLF + delimiter)
        if found < 0:
            raise BadRequest(f"the body holds no part delimited by the boundary {boundary!r} of its "
                             "Content-Type")
        pos = found + 2 + len(delimiter)
    parts = []
    while True:
        if body[pos:pos + 2] == b"--":
            break
        while body[pos:pos + 1] in (b" ", b"\t"):
            pos += 1
        if body[pos:pos + 2] != CRLF:
            raise BadRequest("malformed multipart body: a boundary delimiter is not followed by CRLF")
        if body[pos + 2:pos + 4] == CRLF:
            headers, start = {}, pos + 4  # a part without headers
        else:
            head_end = body.find(CRLF + CRLF, pos + 2)
            if head_end < 0:
                raise BadRequest("malformed multipart body: a part's headers do not end with a "
                                 "blank line")
            headers, start = _headers(bytes(body[pos + 2:head_end])), head_end + 4
        end = body.find(CRLF + delimiter, start)
        if end < 0:
            raise BadRequest("malformed multipart body: the last part is not closed by its boundary "
                             "(truncated upload?)")
        parts.append(Part(headers, start, end))
        pos = end + 2 + len(delimiter)
        if pos > size:
            raise BadRequest("malformed multipart body")
    if not parts:
        raise BadRequest("the multipart body holds no part")
    return parts


def _headers(raw: bytes) -> dict[str, str]:
    headers = {}
    for line in raw.split(CRLF):
        name, colon, value = line.partition(b":")
        if not colon or not name.strip():
            raise BadRequest(f"malformed multipart part header {line[:60]!r}")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return headers
