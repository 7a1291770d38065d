"""Accept headers (RFC 9110 12.5.1) as PS3.18 8.7 uses them, and the media types of frames.

A WADO-RS client says ``multipart/related; type="application/dicom"; transfer-syntax=*``;
parameter values may be quoted or not, media ranges come in q order, and the ``accept``
query parameter (PS3.18 8.3.3.1) overrides the header. Each resource picks the first range
it can satisfy; none gives 406.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from web.dicomweb.errors import NotAcceptable
from web.errors import BadRequest

MULTIPART = "multipart/related"
DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
DICOM_JSON = "application/dicom+json"

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
UNCOMPRESSED = frozenset({EXPLICIT_LE, IMPLICIT_LE, DEFLATED_LE, EXPLICIT_BE})

# PS3.18 Table 8.7.3-5: single-frame media types and their transfer syntaxes (default first)
FRAME_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "image/jpeg": ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                   "1.2.840.10008.1.2.4.70"),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/x-jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
}


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept header: ``type/subtype`` with lower-case parameter names."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def part_type(self) -> str | None:
        """The ``type`` parameter of a multipart range (what each part is)."""
        value = self.params.get("type")
        return value.lower() if value else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    def matches(self, media_type: str) -> bool:
        """Whether this range admits ``media_type`` (``*/*`` and ``type/*`` as wildcards)."""
        kind, _, sub = self.media_type.partition("/")
        want_kind, _, want_sub = media_type.partition("/")
        return kind == "*" or (kind == want_kind and sub in ("*", want_sub))


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    items, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == sep and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items


def parse_accept(text: str) -> list[MediaRange]:
    """Media ranges in preference order (q descending, then as written); q=0 ranges dropped."""
    ranges = []
    for position, item in enumerate(_split(text, ",")):
        parts = [p.strip() for p in _split(item, ";")]
        if not parts[0]:
            continue
        media_type = parts[0].lower()
        if "/" not in media_type:
            raise BadRequest(f"Accept: {parts[0][:60]!r} is not a media range (type/subtype)")
        params: dict[str, str] = {}
        q = 1.0
        for param in parts[1:]:
            if not param:
                continue
            name, _, value = param.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    raise BadRequest(f"Accept: q={value[:20]!r} is not a number") from None
            else:
                params[name] = value
        if q > 0:
            ranges.append((-q, position, MediaRange(media_type, params, q)))
    return [r for _, _, r in sorted(ranges, key=lambda item: (item[0], item[1]))]


def accepted(request: Request) -> list[MediaRange]:
    """The ranges of the ``accept`` query parameter, else of the header; ``*/*`` if none."""
    text = request.query_params.get("accept") or request.headers.get("accept") or "*/*"
    ranges = parse_accept(text)
    if not ranges:
        raise NotAcceptable(f"the Accept header {text[:120]!r} admits nothing")
    return ranges


def dicom_range(media: MediaRange) -> tuple[bool, str | None] | None:
    """For a retrieve of DICOM instances (PS3.18 10.4.1.1.1): (multipart?, transfer syntax
    asked or None) when the range admits ``application/dicom``, else None."""
    if media.media_type == MULTIPART:
        if media.part_type in (None, DICOM, "*/*", "application/*"):
            return True, media.transfer_syntax
        return None
    if media.media_type == DICOM:
        return False, media.transfer_syntax
    if media.media_type in ("*/*", "multipart/*"):
        return True, media.transfer_syntax
    return None


def json_acceptable(ranges: list[MediaRange]) -> bool:
    """DICOM JSON (PS3.18 F.2) is what metadata and QIDO-RS answers are; ``application/json``
    is taken as the same."""
    return any(r.matches(DICOM_JSON) or r.matches("application/json") for r in ranges)


def require_json(request: Request) -> None:
    ranges = accepted(request)
    if not json_acceptable(ranges):
        raise NotAcceptable("this resource is DICOM JSON only (application/dicom+json); "
                            f"the request accepts {request.headers.get('accept', '')[:120]!r}")
