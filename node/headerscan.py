"""A direct scan of a little endian dataset's top-level elements, for the C-STORE hot path.

pydicom's ``read_dataset`` builds a RawDataElement and a Dataset entry for every element of
the header, which costs more than the rest of a small C-STORE. The catalogue needs only the
raw bytes of some forty top-level elements and where the pixel data starts, so this walks
the element headers (PS3.5 7.1) with one ``struct`` call each, skipping sequences item by
item (PS3.5 7.5), and keeps the values it was asked for.

It only answers for plainly encoded data. Anything pydicom would have to interpret (an
element running past the end, a VR that is not two capitals, an implicit dataset that looks
explicit, item tags at the top level, undefined lengths on anything but a sequence, deep
nesting) returns None, and the caller parses with pydicom as before; so wherever it answers,
it answers as pydicom's ``read_dataset(..., stop_when=_at_pixel_data)`` would.
"""

from __future__ import annotations

import struct
from typing import Any

from pydicom.datadict import dictionary_VR

_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHL")
_LENGTH32 = struct.Struct("<L")
# VRs with a reserved field and a 4-byte length in explicit VR (PS3.5 Table 7.1-1)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS",
                        b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL",
                        b"US"})
_STOP_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # pixel data of any kind
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 16


class _Decline(Exception):
    """The data is not plainly encoded: let pydicom read it."""


class ScannedHeader:
    """The raw values of the wanted top-level elements, where the scan stopped (the pixel
    data element, or the end), and how many top-level elements came before that."""

    __slots__ = ("values", "stop", "count")

    def __init__(self, values: dict[int, bytes], stop: int, count: int) -> None:
        self.values = values
        self.stop = stop
        self.count = count


def scan_header(data: Any, implicit: bool, wanted: frozenset[int]) -> ScannedHeader | None:
    """The wanted elements' raw values of a little endian dataset, or None when pydicom
    must read it (see the module docstring)."""
    try:
        return _scan(memoryview(data).cast("B"), implicit, wanted)
    except (_Decline, struct.error):
        return None


def _scan(view: memoryview, implicit: bool, wanted: frozenset[int]) -> ScannedHeader:
    end = len(view)
    if implicit and end >= 6 and 0x40 < view[4] < 0x5B and 0x40 < view[5] < 0x5B:
        raise _Decline  # implicit by its transfer syntax, explicit by its look: pydicom decides
    values: dict[int, bytes] = {}
    pos = count = 0
    while pos < end:
        if pos + 8 > end:
            raise _Decline
        tag, vr, length, value_at = _element(view, pos, implicit)
        if tag in _STOP_TAGS:
            return ScannedHeader(values, pos, count)
        if tag >> 16 == 0xFFFE:
            raise _Decline
        count += 1
        if length == _UNDEFINED:
            pos = _skip_sequence(view, value_at, implicit, tag, vr, 0)
            continue
        pos = value_at + length
        if pos > end:
            raise _Decline
        if tag in wanted:
            values[tag] = view[value_at:pos].tobytes()
    return ScannedHeader(values, end, count)


def _element(view: memoryview, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, where the value starts) of the element at ``pos``."""
    if implicit:
        group, element, length = _IMPLICIT.unpack_from(view, pos)
        return group << 16 | element, None, length, pos + 8
    group, element, vr, length = _EXPLICIT.unpack_from(view, pos)
    tag = group << 16 | element
    if vr in _SHORT_VRS:
        return tag, vr, length, pos + 8
    if vr in _LONG_VRS:
        if pos + 12 > len(view):
            raise _Decline
        return tag, vr, _LENGTH32.unpack_from(view, pos + 8)[0], pos + 12
    if tag >> 16 == 0xFFFE:  # item and delimiter tags carry no VR in either encoding
        group, element, length = _IMPLICIT.unpack_from(view, pos)
        return tag, None, length, pos + 8
    raise _Decline


def _is_sequence(tag: int, vr: bytes | None) -> bool:
    """Whether pydicom reads an undefined length element as a sequence without guessing:
    SQ in explicit VR; in implicit VR a dictionary SQ, or a tag the dictionary does not know
    (pydicom then looks for an item, and so does ``_skip_sequence``). An undefined length
    UN holds implicit VR items (PS3.5 6.2.2), which pydicom reads by heuristics: declined."""
    if vr is not None:
        return vr == b"SQ"
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return True


def _skip_sequence(view: memoryview, pos: int, implicit: bool, tag: int, vr: bytes | None,
                   depth: int) -> int:
    """Past the Sequence Delimitation Item of the undefined length element ``tag`` whose
    value (its first item) starts at ``pos``."""
    if depth > _MAX_DEPTH or not _is_sequence(tag, vr):
        raise _Decline
    end = len(view)
    while True:
        if pos + 8 > end:
            raise _Decline
        group, element, length = _IMPLICIT.unpack_from(view, pos)
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM:
            raise _Decline
        if length == _UNDEFINED:
            pos = _skip_item(view, pos + 8, implicit, depth + 1)
        else:
            pos += 8 + length
            if pos > end:
                raise _Decline


def _skip_item(view: memoryview, pos: int, implicit: bool, depth: int) -> int:
    """Past the Item Delimitation Item of an undefined length item's dataset."""
    end = len(view)
    while True:
        if pos + 8 > end:
            raise _Decline
        tag, vr, length, value_at = _element(view, pos, implicit)
        if tag == _ITEM_END:
            return value_at
        if tag >> 16 == 0xFFFE:
            raise _Decline
        if length == _UNDEFINED:
            pos = _skip_sequence(view, value_at, implicit, tag, vr, depth)
        else:
            pos = value_at + length
            if pos > end:
                raise _Decline
