"""Command sets read directly (scp.commands): the same primitives as pynetdicom's decode."""

from __future__ import annotations

import io
import struct

import pytest
from pynetdicom.dimse_messages import _MESSAGE_TYPES, C_FIND_RSP, C_GET_RSP, C_MOVE_RSP, C_STORE_RQ
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import decode, encode

from scp.commands import (command_ui, command_us, plain_find_response, plain_retrieve_response, received_primitive,
                          store_request_primitive, store_response_command, store_response_primitive)
from scu.direct_store import store_command_set

CT = "1.2.840.10008.5.1.4.1.1.2"


def _stock_primitive(command: bytes) -> C_STORE:
    """What pynetdicom's receiving side builds from a command set (decode_msg's last steps)."""
    message = C_STORE_RQ()
    message.context_id = 1
    message.command_set = decode(io.BytesIO(command), True, True)
    message.__class__ = _MESSAGE_TYPES[message.command_set.CommandField][1]
    return message.message_to_primitive()


def _pynetdicom_request(**extra) -> bytes:
    """A C-STORE-RQ command set as pynetdicom's own SCU encodes it."""
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = "1.2.3.4.55"  # odd length: padded with a NUL
    request.Priority = 2
    request.DataSet = io.BytesIO(b"\x08\x00\x18\x00\x00\x00\x00\x00")
    for key, value in extra.items():
        setattr(request, key, value)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdata = next(message.encode_msg(1, 16384))
    (_, pdv), *_ = pdata.presentation_data_value_list
    assert pdv[0] == 0x03  # the command set, last fragment
    return pdv[1:]


@pytest.mark.parametrize("command", [
    _pynetdicom_request(),
    _pynetdicom_request(MoveOriginatorApplicationEntityTitle="ORTHANC", MoveOriginatorMessageID=3),
    store_command_set(CT, "1.2.3.4", 65535),
    store_command_set(CT, "1.2.3.4.5", 1, originator=("A", 9)),  # AE padded with a space
], ids=["pynetdicom", "pynetdicom-move", "node-scu", "node-scu-move"])
def test_plain_store_request_becomes_the_primitive_pynetdicom_builds(command):
    fast = store_request_primitive(command)
    assert fast is not None
    fast._context_id = 1
    stock = _stock_primitive(command)
    fast.DataSet = stock.DataSet = io.BytesIO(b"the data set, which follows")
    assert vars(fast) == vars(stock)
    assert fast.is_valid_request


def _rebuilt(command: bytes, replace: dict[int, bytes] | None = None, add: bytes = b"") -> bytes:
    """``command`` with element values replaced (by element number) and elements added."""
    body, offset = b"", 12
    while offset < len(command):
        _, element, length = struct.unpack_from("<HHI", command, offset)
        value = command[offset + 8:offset + 8 + length]
        offset += 8 + length
        value = (replace or {}).get(element, value)
        body += struct.pack("<HHI", 0, element, len(value)) + value
    body += add
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


@pytest.mark.parametrize("changed", [
    _rebuilt(_pynetdicom_request(), add=b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00"),  # Status
    _rebuilt(_pynetdicom_request(), {0x0100: struct.pack("<H", 0x0020)}),  # a C-FIND-RQ
    _rebuilt(_pynetdicom_request(), {0x0800: struct.pack("<H", 0x0101)}),  # no data set
    _rebuilt(_pynetdicom_request(), {0x0700: struct.pack("<H", 5)}),  # no such priority
    _rebuilt(_pynetdicom_request(), {0x1000: b"1.2.3\\1.2.4\x00"}),  # two UIDs
    _rebuilt(_pynetdicom_request(), {0x1000: b""}),  # empty
    _rebuilt(_pynetdicom_request(), {0x0002: b"1.2.\xc3\xa9"}),  # not ASCII
    _rebuilt(_pynetdicom_request(), {0x0110: b"\x01\x00\x00\x00"}),  # US of 4 bytes
    _pynetdicom_request()[:-3],  # cut short
    _rebuilt(store_command_set(CT, "1.2.3", 1, originator=("A", 9)), {0x1031: b""}),
    _pynetdicom_request(MoveOriginatorApplicationEntityTitle="ORTHANC"),  # half the pair
    command_ui(0x0002, CT) + command_us(0x0100, 1),  # no group length and missing elements
    b"",
], ids=["status", "c-find", "no-dataset", "priority", "uid-list", "empty-uid", "non-ascii",
        "long-us", "truncated", "empty-originator-id", "half-originator", "missing", "nothing"])
def test_anything_else_is_left_to_pynetdicom(changed):
    assert store_request_primitive(changed) is None


def test_a_received_command_set_is_read_once_as_request_or_response():
    """What the fast path calls on every received command set: the same primitive as the
    request or response reader gives, with whether a data set follows."""
    request = _pynetdicom_request()
    primitive, data_follows = received_primitive(request)
    assert vars(primitive) == vars(store_request_primitive(request)) and data_follows
    response = store_response_command(7, CT, "1.2.3.4", 0x0000)
    primitive, data_follows = received_primitive(response)
    assert vars(primitive) == vars(store_response_primitive(response)) and not data_follows
    assert primitive.MessageIDBeingRespondedTo == 7


def _as_pynetdicom_reads_it(command: bytes, kind: type) -> dict:
    """The primitive pynetdicom's decode and message_to_primitive make of a command set."""
    message = {C_FIND: C_FIND_RSP, C_MOVE: C_MOVE_RSP, C_GET: C_GET_RSP}[kind]()
    message.command_set = decode(io.BytesIO(command), True, True)
    message.context_id = 1
    values = vars(message.message_to_primitive())
    values.pop("_dataset")
    return values


def _response(kind: type, status: int, counts: tuple[int, ...] | None = None):  # noqa: ANN202
    primitive = kind()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    primitive.Status = status
    if counts is not None:
        (primitive.NumberOfRemainingSuboperations, primitive.NumberOfCompletedSuboperations,
         primitive.NumberOfFailedSuboperations, primitive.NumberOfWarningSuboperations) = counts
    return primitive


@pytest.mark.parametrize("kind, status, counts, data_follows", [
    (C_FIND, 0xFF00, None, True), (C_FIND, 0x0000, None, False),
    (C_MOVE, 0xFF00, (3, 2, 1, 0), False), (C_GET, 0xFF00, (0, 5, 0, 1), False),
    (C_MOVE, 0x0000, None, False)])
def test_query_and_retrieve_responses_read_as_pynetdicom_reads_them(kind, status, counts, data_follows):
    """Every Pending answer of a C-FIND, C-MOVE or C-GET this node asks for is read here."""
    sent = _response(kind, status, counts)
    if data_follows:
        sent.Identifier = io.BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    command = plain_find_response(sent) if kind is C_FIND else plain_retrieve_response(sent)
    if command is None:  # a final C-MOVE answer: as pynetdicom encodes it
        message = C_MOVE_RSP()
        message.primitive_to_message(sent)
        command = encode(message.command_set, True, True)
    primitive, follows = received_primitive(command)
    assert follows == data_follows
    assert type(primitive) is kind
    values = vars(primitive)
    values.pop("_dataset")
    values.pop("_context_id", None)
    expected = _as_pynetdicom_reads_it(command, kind)
    expected.pop("_context_id", None)
    assert values == expected


def test_responses_with_more_than_the_counts_are_left_to_pynetdicom():
    failed = _response(C_MOVE, 0xA701, (0, 0, 2, 0))
    message = C_MOVE_RSP()
    message.primitive_to_message(failed)
    message.command_set.ErrorComment = "out of resources"
    assert received_primitive(encode(message.command_set, True, True)) is None
