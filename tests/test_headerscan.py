"""The direct header scan (node.headerscan) answers exactly as pydicom's read_dataset, or
declines: every dataset here is read both ways through ``read_dataset_header``."""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, UID)

from node import dicomfile, headerscan
from node.errors import InvalidDataset
from tests.helpers import dataset_bytes, make_dataset

WANTED = dicomfile._WANTED_TAGS


@pytest.fixture(autouse=True)
def lenient_reading():
    """As the node runs (node.runtime.configure_pynetdicom): values are kept as received."""
    saved = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    yield
    pydicom_config.settings.reading_validation_mode = saved


def both_ways(data: bytes, transfer_syntax: str, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """read_dataset_header's outcome with the scan, then with pydicom alone."""
    def outcome() -> tuple:
        try:
            return ("stored", dicomfile.read_dataset_header(data, transfer_syntax, 200))
        except InvalidDataset as exc:
            return ("invalid", str(exc))

    scanned = outcome()
    with monkeypatch.context() as patch:
        patch.setattr(dicomfile, "scan_header", lambda *args: None)
        parsed = outcome()
    return scanned, parsed


def encoded(ds: Dataset, transfer_syntax: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return dataset_bytes(buffer.getvalue())


def with_sequences(ds: Dataset, undefined: bool) -> Dataset:
    """Nested sequences before the indexed attributes, of defined or undefined lengths."""
    inner = Dataset()
    inner.CodeValue = "T-D0050"
    inner.CodingSchemeDesignator = "SRT"
    code = Sequence([inner])
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.AnatomicRegionSequence = code
    outer = Sequence([item, Dataset()])
    ds.ReferencedImageSequence = outer
    private = Dataset()
    private.PatientComments = "inside a private sequence"
    ds.add_new(0x00091010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "SQ", Sequence([private]))
    for sequence in (outer, code, ds[0x00091001].value):
        sequence.is_undefined_length = undefined
        for member in sequence:
            member.is_undefined_length_sequence_item = undefined
    ds[0x00091001].is_undefined_length = undefined
    ds["ReferencedImageSequence"].is_undefined_length = undefined
    ds["ReferencedImageSequence"].value[0]["AnatomicRegionSequence"].is_undefined_length = undefined
    return ds


CASES = {
    "plain": lambda: make_dataset(),
    "latin-1 names": lambda: make_dataset(charset="ISO_IR 100", patient_name="MÜLLER^JÜRGEN",
                                          StudyDescription="Thorax ÄÖÜ"),
    "utf-8 names": lambda: make_dataset(charset="ISO_IR 192", patient_name="Wang^XiaoDong=王^小東"),
    "iso 2022 japanese": lambda: make_dataset(
        charset=["", "ISO 2022 IR 87"],
        patient_name="Yamada^Tarou=\033$B;3ED\033(B^\033$BB@O:\033(B"),
    "sequences, defined lengths": lambda: with_sequences(make_dataset(), undefined=False),
    "sequences, undefined lengths": lambda: with_sequences(make_dataset(), undefined=True),
    "multi-frame": lambda: make_dataset(NumberOfFrames=1, ImageType=["ORIGINAL", "PRIMARY", "AXIAL"]),
    "no pixel data": lambda: _without_pixels(make_dataset()),
}


def _without_pixels(ds: Dataset) -> Dataset:
    del ds.PixelData
    return ds


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("case", sorted(CASES))
def test_generated_datasets_are_scanned_as_pydicom_reads_them(case: str, transfer_syntax: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data = encoded(CASES[case](), transfer_syntax)
    assert headerscan.scan_header(data, transfer_syntax == ImplicitVRLittleEndian, WANTED) is not None
    scanned, parsed = both_ways(data, transfer_syntax, monkeypatch)
    assert scanned[0] == "stored"
    assert scanned == parsed


def test_pixel_data_position_and_values_come_from_the_scan() -> None:
    ds = with_sequences(make_dataset(charset="ISO_IR 100", patient_name="MÜLLER^JÜRGEN"), undefined=True)
    data = encoded(ds, ExplicitVRLittleEndian)
    found = headerscan.scan_header(data, False, WANTED)
    assert found is not None
    assert data[found.stop:found.stop + 4] == b"\xe0\x7f\x10\x00"
    assert found.values[0x00100010] == "MÜLLER^JÜRGEN ".encode("latin-1")  # padded to even length
    assert 0x00091010 not in found.values  # only what was asked for
    header = dicomfile.read_dataset_header(data, ExplicitVRLittleEndian, 200)
    assert header.attrs["patient_name"] == "MÜLLER^JÜRGEN"
    assert header.pixels.offset == found.stop + 12 + 200


def _declines(data: bytes, implicit: bool) -> bool:
    return headerscan.scan_header(data, implicit, WANTED) is None


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_truncated_and_odd_data_is_left_to_pydicom(transfer_syntax: str, monkeypatch: pytest.MonkeyPatch) -> None:
    implicit = transfer_syntax == ImplicitVRLittleEndian
    whole = encoded(_without_pixels(with_sequences(make_dataset(), undefined=True)), transfer_syntax)
    cuts = [whole[:cut] for cut in (3, 7, 11, 40, len(whole) // 2, len(whole) - 1)]
    odd = [
        b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + whole,  # an item tag at the top level
        whole + b"\x08\x00",  # a few trailing bytes
    ]
    for data in cuts + odd:
        assert _declines(data, implicit)
        with warnings.catch_warnings():  # pydicom warns of what it guesses
            warnings.simplefilter("ignore")
            scanned, parsed = both_ways(data, transfer_syntax, monkeypatch)
        assert scanned == parsed


def test_explicit_data_sent_as_implicit_is_left_to_pydicom() -> None:
    data = encoded(make_dataset(), ExplicitVRLittleEndian)
    assert _declines(data, implicit=True)
    assert not _declines(data, implicit=False)


def test_undefined_length_un_is_left_to_pydicom() -> None:
    element = b"\x09\x00\x10\x00UN\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    data = encoded(make_dataset(), ExplicitVRLittleEndian)
    assert _declines(element + data, implicit=False)


def test_empty_dataset_is_refused_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    pixels_only = b"\xe0\x7f\x10\x00OW\x00\x00\x02\x00\x00\x00\x00\x00"
    assert headerscan.scan_header(pixels_only, False, WANTED).count == 0
    scanned, parsed = both_ways(pixels_only, ExplicitVRLittleEndian, monkeypatch)
    assert scanned == parsed == ("invalid", "the dataset is empty")


def _pydicom_test_datasets() -> list[tuple[str, bytes, str]]:
    found = []
    for path in sorted(Path(DATA_ROOT, "test_files").rglob("*")):
        if not os.path.isfile(path):
            continue
        data = Path(path).read_bytes()
        if data[128:132] != b"DICM":
            continue
        fp = io.BytesIO(data)
        fp.seek(132)
        try:
            meta = _read_file_meta_info(fp)
        except Exception:  # noqa: BLE001 - a deliberately broken test file: not a case here
            continue
        ts = str(meta.get("TransferSyntaxUID", "") or "")
        if ts and ts != DeflatedExplicitVRLittleEndian and UID(ts).is_little_endian:
            found.append((Path(path).name, data[fp.tell():], ts))
    return found


def test_pydicom_test_files_are_read_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom's own test files: real modalities' headers, odd encodings and broken ones."""
    datasets = _pydicom_test_datasets()
    assert len(datasets) > 40
    scanned_count = 0
    for name, data, ts in datasets:
        scanned_count += headerscan.scan_header(data, UID(ts).is_implicit_VR, WANTED) is not None
        with warnings.catch_warnings():  # some are odd on purpose; pydicom says so
            warnings.simplefilter("ignore")
            scanned, parsed = both_ways(data, ts, monkeypatch)
        assert scanned == parsed, name
    assert scanned_count > len(datasets) * 0.8  # most are plain: the scan is what reads them


def part10_both_ways(data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """read_header's outcome with the scans, then with pydicom's dcmread alone."""
    def outcome() -> tuple:
        try:
            return ("stored", dicomfile.read_header(data))
        except InvalidDataset as exc:
            return ("invalid", str(exc))

    scanned = outcome()
    with monkeypatch.context() as patch:
        patch.setattr(dicomfile, "_scanned_header", lambda part10: None)
        parsed = outcome()
    return scanned, parsed


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("case", sorted(CASES))
def test_generated_files_are_scanned_as_dcmread_reads_them(case: str, transfer_syntax: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ds = CASES[case]()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.SourceApplicationEntityTitle = "CT_SCANNER"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    assert dicomfile._scanned_header(data) is not None
    scanned, parsed = part10_both_ways(data, monkeypatch)
    assert scanned[0] == "stored" and scanned[1].source_ae == "CT_SCANNER"
    assert scanned == parsed


def test_pydicom_test_files_are_read_whole_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole Part 10 files (meta included; big endian, deflated and broken ones too)."""
    files = [path for path in sorted(Path(DATA_ROOT, "test_files").rglob("*"))
             if path.is_file() and path.read_bytes()[128:132] == b"DICM"]
    assert len(files) > 60
    scanned_count = 0
    for path in files:
        data = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                scanned_count += dicomfile._scanned_header(data) is not None
            except InvalidDataset:
                scanned_count += 1  # scanned, and refused as pydicom's reading refuses it (below)
            scanned, parsed = part10_both_ways(data, monkeypatch)
        assert scanned == parsed, path.name
    assert scanned_count > len(files) * 0.5


def test_a_file_meta_group_longer_than_it_says_is_left_to_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_dataset()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = bytearray(buffer.getvalue())
    (length,) = struct.unpack_from("<L", data, 140)
    struct.pack_into("<L", data, 140, length - 26)  # ends before its last element(s)
    assert dicomfile._scanned_header(bytes(data)) is None
    scanned, parsed = part10_both_ways(bytes(data), monkeypatch)
    assert scanned == parsed
