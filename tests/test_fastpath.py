"""The directly encoded C-STORE-RSP equals pynetdicom's own encoding of the same response."""

from __future__ import annotations

import time

from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from scp import fastpath


def _response(status: int = 0x0000, **extra) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 513
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rsp.AffectedSOPInstanceUID = "1.2.3.4.55"  # odd length: padded
    rsp.Status = status
    for key, value in extra.items():
        setattr(rsp, key, value)
    return rsp


def _stock_command_bytes(rsp: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = list(message.encode_msg(1, 16384))
    (context_id, pdv), = pdata.presentation_data_value_list
    assert pdv[0] == 0x03
    return pdv[1:]


def _decode(command: bytes):
    return read_dataset(DicomBytesIO(command), True, True)


def test_direct_encoding_matches_pynetdicom():
    for status in (0x0000, 0xB000, 0xA700):
        rsp = _response(status)
        fast = fastpath._plain_store_response(rsp)
        stock = _stock_command_bytes(rsp)
        assert fast == stock
        assert _decode(fast).Status == status
        assert _decode(fast).CommandGroupLength == len(fast) - 12


def test_responses_with_optional_elements_use_pynetdicom():
    assert fastpath._plain_store_response(_response(0xC000, ErrorComment="bad")) is None
    request = C_STORE()
    request.MessageID = 1
    assert fastpath._plain_store_response(request) is None


def test_dul_polls_fast_only_while_busy():
    dul = fastpath.FastDUL.__new__(fastpath.FastDUL)
    assert dul._run_loop_delay == fastpath.IDLE_POLL
    dul._last_busy = time.monotonic()
    assert dul._run_loop_delay == fastpath.BUSY_POLL
    dul._last_busy = time.monotonic() - fastpath.BUSY_WINDOW - 0.01
    assert dul._run_loop_delay == fastpath.IDLE_POLL
