"""DIMSE command sets read and written directly, for the messages of every image (fast path).

A command set is a handful of group 0000 elements in implicit VR little endian (PS3.7 E.1).
pynetdicom builds and reads each one through a pydicom Dataset: encoding, decoding and
copying element by element onto a primitive cost more than storing a small image's file.
The messages that come once per image (C-STORE-RQ received, C-STORE-RSP sent and received,
the Pending C-FIND/C-MOVE/C-GET responses) are handled here, byte for byte as pynetdicom
would; anything with other elements returns None and takes pynetdicom's own code.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE


def command_us(element: int, value: int) -> bytes:
    """A US element of a command set (group 0000, implicit VR little endian; PS3.7 E.1)."""
    return struct.pack("<HHIH", 0, element, 2, value)


def command_ui(element: int, uid: str) -> bytes:
    """A UI element of a command set, padded to even length with a NUL (PS3.5 9.1)."""
    raw = uid.encode("ascii")
    if len(raw) % 2:
        raw += b"\x00"
    return struct.pack("<HHI", 0, element, len(raw)) + raw


def command_set(*elements: bytes) -> bytes:
    """The encoded elements (in tag order) behind their Command Group Length (0000,0000)."""
    body = b"".join(elements)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


# --- sent ---------------------------------------------------------------------------------

def store_response_command(message_id: int, sop_class_uid: str, sop_instance_uid: str | None,
                           status: int) -> bytes:
    """A C-STORE-RSP command set (PS3.7 9.3.1.2) of its required elements, implicit VR
    little endian, as pynetdicom encodes it."""
    return command_set(
        command_ui(0x0002, sop_class_uid),
        command_us(0x0100, 0x8001),
        command_us(0x0120, message_id),
        command_us(0x0800, 0x0101),
        command_us(0x0900, status),
        command_ui(0x1000, sop_instance_uid) if sop_instance_uid else b"",
    )


def plain_store_response(primitive: Any) -> bytes | None:
    """The command set of a C-STORE-RSP with only its required elements, else None."""
    if not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None:
        return None
    # MessageID is set on responses too (pynetdicom copies it from the request) but is not
    # part of a C-STORE-RSP command set, so it does not disqualify the direct encoding.
    for name in ("ErrorComment", "OffendingElement", "MoveOriginatorApplicationEntityTitle",
                 "MoveOriginatorMessageID"):
        if getattr(primitive, name, None):
            return None
    if primitive.Status is None or primitive.AffectedSOPClassUID is None:
        return None
    return store_response_command(primitive.MessageIDBeingRespondedTo, primitive.AffectedSOPClassUID,
                                  primitive.AffectedSOPInstanceUID, primitive.Status)


def plain_find_response(primitive: Any) -> bytes | None:
    """The command set of a C-FIND-RSP (PS3.7 9.3.2.2) without Error Comment or Offending
    Element, else None: one is sent for every match of a query."""
    if not isinstance(primitive, C_FIND) or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.ErrorComment or primitive.OffendingElement or primitive.Status is None:
        return None
    has_identifier = primitive.Identifier is not None and primitive.Identifier.getvalue() != b""
    return command_set(
        command_ui(0x0002, primitive.AffectedSOPClassUID),
        command_us(0x0100, 0x8020),
        command_us(0x0120, primitive.MessageIDBeingRespondedTo),
        command_us(0x0800, 0x0001 if has_identifier else 0x0101),
        command_us(0x0900, primitive.Status),
    )


_RETRIEVE_COMMAND_FIELDS = {C_GET: 0x8010, C_MOVE: 0x8021}
_SUB_OPERATION_COUNTS = {0x1020: "NumberOfRemainingSuboperations", 0x1021: "NumberOfCompletedSuboperations",
                         0x1022: "NumberOfFailedSuboperations", 0x1023: "NumberOfWarningSuboperations"}


def plain_retrieve_response(primitive: Any) -> bytes | None:
    """The command set of a C-GET-RSP or C-MOVE-RSP (PS3.7 9.3.3.2, 9.3.4.2) without an
    identifier, Error Comment or Offending Element, else None: the Pending response with the
    sub-operation counts that pynetdicom's Query/Retrieve service sends after each one."""
    command_field = _RETRIEVE_COMMAND_FIELDS.get(primitive.__class__)
    if command_field is None or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.ErrorComment or primitive.OffendingElement or primitive.Status is None:
        return None
    if primitive.AffectedSOPClassUID is None:
        return None
    if primitive.Identifier is not None:  # a final Warning/Failure with its UID list
        return None
    counts = {element: getattr(primitive, name) for element, name in _SUB_OPERATION_COUNTS.items()}
    return command_set(
        command_ui(0x0002, primitive.AffectedSOPClassUID),
        command_us(0x0100, command_field),
        command_us(0x0120, primitive.MessageIDBeingRespondedTo),
        command_us(0x0800, 0x0101),
        command_us(0x0900, primitive.Status),
        *(command_us(element, count) for element, count in counts.items() if count is not None),
    )


# --- received -----------------------------------------------------------------------------

_US_ELEMENTS = frozenset({0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900, 0x1020, 0x1021, 0x1022,
                          0x1023, 0x1031})
_UI_ELEMENTS = frozenset({0x0002, 0x1000})
_AE_ELEMENTS = frozenset({0x1030})


def _command_values(command: bytes) -> dict[int, int | str] | None:
    """The elements of a command set as pydicom's decode gives their values (US as int,
    UI without its padding, AE without its spaces), by element number; None when an element
    is not one of those kinds, is empty, repeated, multi-valued or the bytes are cut short."""
    values: dict[int, int | str] = {}
    offset, end = 0, len(command)
    while offset < end:
        if offset + 8 > end:
            return None
        group, element, length = struct.unpack_from("<HHI", command, offset)
        offset += 8
        if group != 0 or length == 0 or offset + length > end or element in values:
            return None
        raw = command[offset:offset + length]
        offset += length
        if element == 0x0000:
            continue  # the group length: pynetdicom's primitives ignore it too
        if element in _US_ELEMENTS:
            if length != 2:
                return None
            (values[element],) = struct.unpack("<H", raw)
            continue
        if element not in _UI_ELEMENTS and element not in _AE_ELEMENTS:
            return None
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        text = text.rstrip("\x00 ") if element in _UI_ELEMENTS else text.strip()
        if "\\" in text or not text:
            return None
        values[element] = text
    return values


_STORE_RSP_ELEMENTS = (frozenset({0x0002, 0x0100, 0x0120, 0x0800, 0x0900}),
                       frozenset({0x0002, 0x0100, 0x0120, 0x0800, 0x0900, 0x1000}))


def received_primitive(command: bytes) -> tuple[C_STORE | C_FIND | C_MOVE | C_GET, bool] | None:
    """The primitive of a received command set, read once, and whether a data set follows:
    a plain C-STORE-RQ or C-STORE-RSP (see below), or a C-FIND-RSP, C-MOVE-RSP or C-GET-RSP
    with only its required elements and sub-operation counts (every Pending answer of a
    query or retrieve this node sends). None for anything else: pynetdicom decodes it."""
    values = _command_values(command)
    if values is None:
        return None
    field = values.get(0x0100)
    if field == 0x8001:
        primitive = _store_response(values)
        return None if primitive is None else (primitive, False)
    if field in _RESPONSE_TYPES:
        primitive = _query_retrieve_response(values)
        return None if primitive is None else (primitive, values[0x0800] != 0x0101)
    primitive = _store_request(values)
    return None if primitive is None else (primitive, True)


_RESPONSE_TYPES = {0x8020: C_FIND, **{field: kind for kind, field in _RETRIEVE_COMMAND_FIELDS.items()}}
_RESPONSE_ELEMENTS = frozenset({0x0002, 0x0100, 0x0120, 0x0800, 0x0900})


def _query_retrieve_response(values: dict[int, int | str]) -> C_FIND | C_MOVE | C_GET | None:
    """As message_to_primitive builds it, less the Identifier (the caller sets it)."""
    kind = _RESPONSE_TYPES[values[0x0100]]
    present = frozenset(values)
    counts = present - _RESPONSE_ELEMENTS
    if not _RESPONSE_ELEMENTS <= present or not counts <= _SUB_OPERATION_COUNTS.keys():
        return None
    if counts and kind is C_FIND:  # a C-FIND answer has no sub-operations
        return None
    primitive = kind()
    try:
        primitive.AffectedSOPClassUID = values[0x0002]
        primitive.MessageIDBeingRespondedTo = values[0x0120]
        primitive.Status = values[0x0900]
        for element in counts:
            setattr(primitive, _SUB_OPERATION_COUNTS[element], values[element])
    except (TypeError, ValueError):
        return None
    primitive._dataset_path = primitive._dataset_file = None
    return primitive


def store_response_primitive(command: bytes) -> C_STORE | None:
    """The C_STORE primitive of a received C-STORE-RSP command set holding only its
    required elements, as pynetdicom's decode and ``message_to_primitive`` would build it;
    None for anything else (pynetdicom decodes it)."""
    values = _command_values(command)
    return None if values is None else _store_response(values)


def _store_response(values: dict[int, int | str]) -> C_STORE | None:
    if frozenset(values) not in _STORE_RSP_ELEMENTS:
        return None
    if values[0x0100] != 0x8001 or values[0x0800] != 0x0101:
        return None
    primitive = C_STORE()
    primitive.AffectedSOPClassUID = values[0x0002]
    primitive.MessageIDBeingRespondedTo = values[0x0120]
    primitive.Status = values[0x0900]
    if 0x1000 in values:
        primitive.AffectedSOPInstanceUID = values[0x1000]
    primitive._dataset_path = primitive._dataset_file = None  # as message_to_primitive sets them
    return primitive


_STORE_RQ_ELEMENTS = frozenset({0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000})
_MOVE_ORIGINATOR = frozenset({0x1030, 0x1031})


def store_request_primitive(command: bytes) -> C_STORE | None:
    """The C_STORE primitive of a received C-STORE-RQ command set (PS3.7 9.3.1.1: its
    required elements, and the Move Originator pair of a C-MOVE sub-operation), without
    its data set (it follows); None for anything else, which pynetdicom decodes.

    The values go through the primitive's own setters, so a request pynetdicom would find
    invalid is invalid here too (a setter that refuses a value sends it the stock way)."""
    values = _command_values(command)
    return None if values is None else _store_request(values)


def _store_request(values: dict[int, int | str]) -> C_STORE | None:
    if values.get(0x0100) != 0x0001 or values.get(0x0800) == 0x0101:
        return None
    present = frozenset(values)
    if present != _STORE_RQ_ELEMENTS and present != _STORE_RQ_ELEMENTS | _MOVE_ORIGINATOR:
        return None
    primitive = C_STORE()
    try:
        primitive.AffectedSOPClassUID = values[0x0002]
        primitive.MessageID = values[0x0110]
        primitive.Priority = values[0x0700]
        primitive.AffectedSOPInstanceUID = values[0x1000]
        if 0x1030 in values:
            primitive.MoveOriginatorApplicationEntityTitle = values[0x1030]
            primitive.MoveOriginatorMessageID = values[0x1031]
    except (TypeError, ValueError):
        return None
    primitive._dataset_path = primitive._dataset_file = None  # as message_to_primitive sets them
    return primitive
