"""C-FIND answers: exactly the requested keys, as a pydicom Dataset or encoded directly.

A query's answers all share one layout (the requested elements in tag order, with their VRs),
worked out once. Each match is then rendered either as a Dataset that pynetdicom encodes, or,
on the fast path, straight to bytes in the association's transfer syntax: building and
encoding thousands of Datasets cost several times more than the query (DESIGN.md, "Where the
time goes"). tests/test_answers.py checks both renderings give the same bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

_SPECIFIC_CHARACTER_SET = 0x00080005
_QUERY_RETRIEVE_LEVEL = 0x00080052
_RETRIEVE_AE_TITLE = 0x00080054
_INSTANCE_AVAILABILITY = 0x00080056
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"}
_NUMBER_FORMATS = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i"}
_PLAIN_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
              "UI", "UR", "UT", "SQ", "US", "SS", "UL", "SL"}


class EncodedIdentifier(Dataset):
    """An answer already encoded for its association; the fast path hands its bytes to
    pynetdicom unchanged (scp.fastpath)."""

    def __init__(self, encoded: bytes) -> None:
        super().__init__()
        self.encoded = encoded


@dataclass(frozen=True)
class AnswerLayout:
    """The elements every answer to one query carries: (tag, VR, keyword) in tag order."""

    elements: tuple[tuple[int, str, str], ...]
    fixed: dict[str, str]  # QueryRetrieveLevel, RetrieveAETitle, InstanceAvailability
    query_character_set: tuple[str, ...]

    @property
    def directly_encodable(self) -> bool:
        return all(vr in _PLAIN_VRS for _, vr, _ in self.elements)


def answer_layout(request: Dataset, unique_key: str, level: str, ae_title: str) -> AnswerLayout:
    """Requested keys (empty ones included: PS3.4 C.4.1.1.3.2), the level's unique key, the
    level and RetrieveAETitle."""
    elements: dict[int, tuple[int, str, str]] = {}
    for elem in request:
        if elem.tag in (_SPECIFIC_CHARACTER_SET,) or elem.tag.element == 0:
            continue
        elements[int(elem.tag)] = (int(elem.tag), elem.VR, elem.keyword)
    fixed = {"QueryRetrieveLevel": level, "RetrieveAETitle": ae_title}
    if _INSTANCE_AVAILABILITY in elements:
        fixed["InstanceAvailability"] = "ONLINE"
    for keyword in (unique_key, *fixed):
        tag = tag_for_keyword(keyword)
        if tag not in elements:
            elements[tag] = (tag, dictionary_VR(tag), keyword)
    charset = request.get("SpecificCharacterSet") or ()
    terms = tuple(charset) if isinstance(charset, (MultiValue, list)) else (charset,) if charset else ()
    return AnswerLayout(tuple(elements[t] for t in sorted(elements)), fixed, terms)


def character_set_for(layout: AnswerLayout, values: dict[str, Any]) -> list[str] | None:
    """None for ASCII answers; else the query's own character set when one codec of it can
    carry the text, else UTF-8 (ISO_IR 192)."""
    texts = [v for v in values.values() if isinstance(v, str) and not v.isascii()]
    if not texts:
        return None
    if layout.query_character_set:
        try:
            encodings = convert_encodings(list(layout.query_character_set))
            if len(encodings) == 1:
                for text in texts:
                    text.encode(encodings[0])
                return list(layout.query_character_set)
        except (LookupError, UnicodeEncodeError, ValueError):
            pass
    return ["ISO_IR 192"]


def answer_dataset(layout: AnswerLayout, values: dict[str, Any]) -> Dataset:
    ds = Dataset()
    charset = character_set_for(layout, values)
    if charset:
        ds.SpecificCharacterSet = charset if len(charset) > 1 else charset[0]
    for tag, vr, keyword in layout.elements:
        value = layout.fixed.get(keyword, values.get(keyword)) if keyword else None
        ds.add_new(tag, vr, [] if vr == "SQ" else _present(value))
    return ds


def answer_bytes(layout: AnswerLayout, values: dict[str, Any], implicit: bool) -> bytes | None:
    """The same answer as ``answer_dataset`` encoded directly (little endian); None where
    only pydicom can encode it (ISO 2022 code extensions, unusual VRs)."""
    charset = character_set_for(layout, values)
    codec = "ascii"
    parts = []
    if charset:
        encodings = convert_encodings(charset)
        if len(encodings) != 1:
            return None
        codec = encodings[0]
        parts.append(_element(_SPECIFIC_CHARACTER_SET, "CS", _text("\\".join(charset), "CS", "ascii"),
                              implicit))
    for tag, vr, keyword in layout.elements:
        value = _present(layout.fixed.get(keyword, values.get(keyword)) if keyword else None)
        if value is None or vr == "SQ":
            raw = b""
        elif vr in _NUMBER_FORMATS:
            raw = struct.pack(_NUMBER_FORMATS[vr], value)
        else:
            text = "\\".join(str(v) for v in value) if isinstance(value, list) else str(value)
            raw = _text(text, vr, codec)
        parts.append(_element(tag, vr, raw, implicit))
    return b"".join(parts)


def _present(value: Any) -> Any:
    return None if value is None or value == "" or value == [] else value


def _text(text: str, vr: str, codec: str) -> bytes:
    raw = text.encode(codec)
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


def _element(tag: int, vr: str, raw: bytes, implicit: bool) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", group, element, len(raw)) + raw
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xI", group, element, vr.encode(), len(raw)) + raw
    return struct.pack("<HH2sH", group, element, vr.encode(), len(raw)) + raw


def pass_encoded_identifiers_through() -> None:
    """Have pynetdicom's service classes send an EncodedIdentifier's bytes as they are.

    Called at start-up with the fast path (never at import); other datasets are encoded by
    pynetdicom as before, so a node without the fast path behaves exactly as stock.
    """
    from pynetdicom import service_class

    stock = service_class.encode
    if getattr(stock, "passes_encoded_identifiers", False):
        return

    def encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool,
               deflated: bool = False) -> bytes | None:
        if isinstance(ds, EncodedIdentifier):
            return ds.encoded
        return stock(ds, is_implicit_vr, is_little_endian, deflated)

    encode.passes_encoded_identifiers = True  # type: ignore[attr-defined]
    service_class.encode = encode
