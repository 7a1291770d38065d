"""Header-only reading of DICOM bytes and the byte ranges of their pixel data.

The node never decodes a whole dataset on the hot path: it parses the header with
``stop_before_pixels`` and walks the Pixel Data element by hand, so frames can later be
served by reading byte ranges from the stored file (PS3.5 7.5 and A.4 for the encapsulated
format).
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import struct
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any, Callable

from pydicom import dcmread
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.valuerep import PN_DELIMS
from pydicom.filereader import _at_pixel_data, read_dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian, UID

from node.errors import InvalidDataset
from node.headerscan import ScannedHeader, scan_header

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1583.1"  # node-local, under a UID prefix for test tools
IMPLEMENTATION_VERSION = "PACSNODE_1"

_PIXEL_TAG_LE = b"\xe0\x7f\x10\x00"
_ITEM = b"\xfe\xff\x00\xe0"
_SEQ_DELIM = b"\xfe\xff\xdd\xe0"
_UNDEFINED = 0xFFFFFFFF
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT"}


@dataclass(frozen=True)
class PixelLayout:
    """Where the pixel bytes lie in the file, so frames are read, never decoded.

    ``frames`` is one list of (offset, length) fragments per frame for encapsulated data,
    empty for native data (frame n starts at ``offset + (n-1) * frame_length``).
    """

    offset: int | None = None
    length: int | None = None
    encapsulated: bool = False
    frames: tuple[tuple[tuple[int, int], ...], ...] = ()


@dataclass(frozen=True)
class InstanceHeader:
    """The attributes the catalogue indexes, read from one instance's header."""

    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    attrs: dict[str, Any] = field(default_factory=dict)
    pixels: PixelLayout = PixelLayout()
    source_ae: str | None = None  # from the file meta, when a stored file is re-read


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                     source_ae: str = "") -> bytes:
    """Preamble, prefix and File Meta Information (PS3.10 7.1), encoded directly.

    Building it through pydicom Datasets costs more than the rest of a small C-STORE.
    """
    elements = [
        _explicit(0x0001, b"OB", b"\x00\x01"),
        _explicit(0x0002, b"UI", _uid_bytes(sop_class_uid)),
        _explicit(0x0003, b"UI", _uid_bytes(sop_instance_uid)),
        _explicit(0x0010, b"UI", _uid_bytes(transfer_syntax)),
        _explicit(0x0012, b"UI", _uid_bytes(IMPLEMENTATION_CLASS_UID)),
        _explicit(0x0013, b"SH", _text_bytes(IMPLEMENTATION_VERSION)),
    ]
    if source_ae:
        elements.append(_explicit(0x0016, b"AE", _text_bytes(source_ae.strip())))
    body = b"".join(elements)
    group_length = b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


def _uid_bytes(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text_bytes(text: str) -> bytes:
    raw = text.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in _LONG_VRS:
        return struct.pack("<HH", 2, element) + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", 2, element) + vr + struct.pack("<H", len(value)) + value


# What pydicom raises for bytes it cannot parse; OSError too ("No tag to read at file
# position ..." for a dataset cut inside a sequence): every parse here reads from memory.
_PARSE_ERRORS = (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, struct.error,
                 OverflowError, NotImplementedError, AttributeError, IndexError, OSError)


class _BufferRaw(io.RawIOBase):
    """A read-only file over any buffer (an mmap of a large dataset), without copying it."""

    def __init__(self, buffer: Any) -> None:
        self._view: memoryview | None = memoryview(buffer).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        assert self._view is not None
        n = max(0, min(len(target), len(self._view) - self._pos))
        target[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        assert self._view is not None
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if self._view is not None:
            self._view.release()  # the mmap behind it can then be closed
            self._view = None
        super().close()


def open_buffer(buffer: bytes | Any) -> io.BufferedIOBase:
    """A file object over the bytes: BytesIO shares a bytes object, anything else is wrapped."""
    if isinstance(buffer, bytes):
        return io.BytesIO(buffer)
    return io.BufferedReader(_BufferRaw(buffer), 1 << 16)


@lru_cache(maxsize=64)
def transfer_syntax_uid(ts: str) -> UID:
    """pydicom's UID for a transfer syntax, built once: UID() validates its value each time,
    which cost a small C-STORE as much as the rest of reading its header."""
    return UID(ts)


def read_header(part10: bytes | memoryview) -> InstanceHeader:
    """Parse a Part 10 byte string (preamble, meta, dataset) up to its pixel data.

    A plain little endian file is scanned directly (node.headerscan), as a C-STORE's dataset
    is; anything else, and anything the scan declines, is read by pydicom's ``dcmread``.
    Raises InvalidDataset for anything that cannot be stored and served safely.
    """
    scanned = _scanned_header(part10)
    if scanned is not None:
        return scanned
    fp = open_buffer(part10)
    try:
        ds = dcmread(fp, stop_before_pixels=True)
    except _PARSE_ERRORS as exc:
        raise InvalidDataset(f"cannot parse the dataset: {exc}") from None
    finally:
        pixel_pos = fp.tell()
        fp.close()
    ts = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "")
    if not ts:
        raise InvalidDataset("no Transfer Syntax UID in the file meta information")
    header = _finish(partial(_raw_value, ds), _character_sets(ds), ts, part10, pixel_pos, 0)
    source_ae = str(ds.file_meta.get("SourceApplicationEntityTitle", "") or "").strip()
    return dataclasses.replace(header, source_ae=source_ae or None)


def _scanned_header(part10: bytes | memoryview) -> InstanceHeader | None:
    """read_header's answer by the direct scan, or None where pydicom must read the file."""
    meta = _scanned_file_meta(part10)
    if meta is None:
        return None
    ts, source_ae, start = meta
    uid = transfer_syntax_uid(ts)
    if not uid.is_transfer_syntax or not uid.is_little_endian or ts == DeflatedExplicitVRLittleEndian:
        return None
    dataset = memoryview(part10)[start:]
    scanned = scan_header(dataset, uid.is_implicit_VR, _WANTED_TAGS)
    if scanned is None or scanned.count == 0:
        return None  # dcmread says what is wrong with an empty one
    return dataclasses.replace(_from_scan(scanned, ts, dataset, start), source_ae=source_ae)


def _scanned_file_meta(part10: bytes | memoryview) -> tuple[str, str | None, int] | None:
    """(transfer syntax, source AE title, where the dataset starts) of a file meta group that
    states its length (PS3.10 7.1) and holds exactly that many bytes of explicit VR elements;
    None for anything else."""
    if len(part10) < 144 or part10[128:132] != b"DICM":
        return None
    group, element, vr, size, meta_length = _META_GROUP_LENGTH.unpack_from(part10, 132)
    start = 144 + meta_length
    if (group, element, vr, size) != (2, 0, b"UL", 4) or start > len(part10) \
            or bytes(part10[start:start + 2]) == b"\x02\x00":  # the group goes on past its length
        return None
    scanned = scan_header(memoryview(part10)[144:start], False, _META_TAGS)
    if scanned is None or scanned.stop != meta_length:
        return None
    ts = scanned.values.get(_TRANSFER_SYNTAX_TAG, b"").rstrip(b"\x00 ").decode("latin-1")
    source_ae = scanned.values.get(_SOURCE_AE_TAG, b"").decode("latin-1").strip(" \x00")
    return (ts, source_ae or None, start) if ts else None


def read_dataset_header(dataset: bytes | memoryview, transfer_syntax: str,
                        file_offset: int) -> InstanceHeader:
    """Parse a dataset as received over DIMSE (no meta); pixel offsets are shifted by
    ``file_offset``, the size of the meta written in front of it in the stored file.

    A plainly encoded little endian dataset is scanned directly (node.headerscan); anything
    else, and anything the scan declines, is read by pydicom.
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        raise ValueError("deflated datasets are parsed as Part 10 files")
    uid = transfer_syntax_uid(transfer_syntax)
    if uid.is_little_endian:
        scanned = scan_header(dataset, uid.is_implicit_VR, _WANTED_TAGS)
        if scanned is not None:
            if scanned.count == 0:
                raise InvalidDataset("the dataset is empty")
            return _from_scan(scanned, transfer_syntax, dataset, file_offset)
    fp = open_buffer(dataset)
    try:
        ds = read_dataset(fp, uid.is_implicit_VR, uid.is_little_endian, stop_when=_at_pixel_data)
    except _PARSE_ERRORS as exc:
        raise InvalidDataset(f"cannot parse the dataset: {exc}") from None
    finally:
        pixel_pos = fp.tell()
        fp.close()
    if len(ds) == 0:
        raise InvalidDataset("the dataset is empty")
    return _finish(partial(_raw_value, ds), _character_sets(ds), transfer_syntax, dataset, pixel_pos,
                   file_offset)


def _from_scan(scanned: ScannedHeader, ts: str, dataset: bytes | memoryview, file_offset: int) -> InstanceHeader:
    raw = scanned.values
    return _finish(raw.get, _charset_terms(raw.get(_CHARSET_TAG)), ts, dataset, scanned.stop, file_offset)


def _finish(raw_of: RawLookup, charsets: list[str] | None, ts: str, data: bytes | memoryview,
            pixel_pos: int, file_offset: int) -> InstanceHeader:
    try:
        attrs = attributes_from_raw(raw_of, charsets, transfer_syntax_uid(ts).is_little_endian)
    except _PARSE_ERRORS + (LookupError,) as exc:
        raise InvalidDataset(f"cannot decode the header: {exc}") from None
    for key in ("sop_class_uid", "sop_instance_uid", "study_uid", "series_uid"):
        if not attrs.get(key):
            raise InvalidDataset(f"the dataset has no {_UID_KEYWORDS[key]}")
        if not is_valid_uid(attrs[key]):
            raise InvalidDataset(f"{_UID_KEYWORDS[key]} is not a valid UID: {attrs[key][:80]!r}")
    uid = transfer_syntax_uid(ts)
    if ts == DeflatedExplicitVRLittleEndian or not uid.is_little_endian:
        pixels = PixelLayout()  # offsets into a deflated or big endian stream are of no use
    else:
        pixels = locate_pixel_data(data, pixel_pos, attrs.get("number_of_frames") or 1,
                                   explicit=not uid.is_implicit_VR)
        if file_offset and pixels.offset is not None:
            pixels = shift_layout(pixels, file_offset)
    return InstanceHeader(
        transfer_syntax=ts,
        sop_class_uid=attrs.pop("sop_class_uid"),
        sop_instance_uid=attrs.pop("sop_instance_uid"),
        study_uid=attrs.pop("study_uid"),
        series_uid=attrs.pop("series_uid"),
        attrs=attrs,
        pixels=pixels,
    )


def is_valid_uid(value: str) -> bool:
    """PS3.5 9.1: at most 64 characters, digits and dots (leniently: no empty components)."""
    return 0 < len(value) <= 64 and _UID_RE.fullmatch(value) is not None


def shift_layout(pixels: PixelLayout, by: int) -> PixelLayout:
    return PixelLayout(
        offset=pixels.offset + by if pixels.offset is not None else None,
        length=pixels.length,
        encapsulated=pixels.encapsulated,
        frames=tuple(tuple((o + by, n) for o, n in frame) for frame in pixels.frames),
    )


_UID_KEYWORDS = {
    "sop_class_uid": "SOPClassUID",
    "sop_instance_uid": "SOPInstanceUID",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
}

# catalogue attribute -> (DICOM keyword, kind); kind says how the value is stored.
HEADER_FIELDS: dict[str, tuple[str, str]] = {
    "sop_class_uid": ("SOPClassUID", "uid"),
    "sop_instance_uid": ("SOPInstanceUID", "uid"),
    "study_uid": ("StudyInstanceUID", "uid"),
    "series_uid": ("SeriesInstanceUID", "uid"),
    "specific_character_set": ("SpecificCharacterSet", "multi"),
    "patient_id": ("PatientID", "text"),
    "issuer_of_patient_id": ("IssuerOfPatientID", "text"),
    "patient_name": ("PatientName", "text"),
    "patient_birth_date": ("PatientBirthDate", "text"),
    "patient_sex": ("PatientSex", "text"),
    "study_date": ("StudyDate", "text"),
    "study_time": ("StudyTime", "text"),
    "accession_number": ("AccessionNumber", "text"),
    "study_id": ("StudyID", "text"),
    "study_description": ("StudyDescription", "text"),
    "referring_physician_name": ("ReferringPhysicianName", "text"),
    "institution_name": ("InstitutionName", "text"),
    "modality": ("Modality", "text"),
    "series_number": ("SeriesNumber", "int"),
    "series_description": ("SeriesDescription", "text"),
    "body_part_examined": ("BodyPartExamined", "text"),
    "series_date": ("SeriesDate", "text"),
    "series_time": ("SeriesTime", "text"),
    "protocol_name": ("ProtocolName", "text"),
    "instance_number": ("InstanceNumber", "int"),
    "content_date": ("ContentDate", "text"),
    "content_time": ("ContentTime", "text"),
    "image_type": ("ImageType", "multi"),
    "rows": ("Rows", "int"),
    "columns": ("Columns", "int"),
    "number_of_frames": ("NumberOfFrames", "int"),
    "samples_per_pixel": ("SamplesPerPixel", "int"),
    "photometric_interpretation": ("PhotometricInterpretation", "text"),
    "bits_allocated": ("BitsAllocated", "int"),
    "bits_stored": ("BitsStored", "int"),
    "pixel_representation": ("PixelRepresentation", "int"),
    "rescale_slope": ("RescaleSlope", "float"),
    "rescale_intercept": ("RescaleIntercept", "float"),
    "window_center": ("WindowCenter", "multi"),
    "window_width": ("WindowWidth", "multi"),
    "pixel_spacing": ("PixelSpacing", "multi"),
    "image_position_patient": ("ImagePositionPatient", "multi"),
    "image_orientation_patient": ("ImageOrientationPatient", "multi"),
    "slice_location": ("SliceLocation", "float"),
}


_TEXT_VRS = {"LO", "SH", "ST", "LT", "UC", "UT", "PN"}  # decoded with the dataset's character set
_FIELD_TAGS = {name: (keyword_dict[keyword], dictionary_VR(keyword_dict[keyword]), kind)
               for name, (keyword, kind) in HEADER_FIELDS.items()}
_CHARSET_TAG = keyword_dict["SpecificCharacterSet"]
_TRANSFER_SYNTAX_TAG = keyword_dict["TransferSyntaxUID"]
_SOURCE_AE_TAG = keyword_dict["SourceApplicationEntityTitle"]
_META_TAGS = frozenset({_TRANSFER_SYNTAX_TAG, _SOURCE_AE_TAG})
_META_GROUP_LENGTH = struct.Struct("<HH2sHL")  # (0002,0000) UL, explicit VR little endian
_WANTED_TAGS = frozenset(tag for tag, _, _ in _FIELD_TAGS.values())


RawLookup = Callable[[int], "bytes | None"]


def attributes_from_raw(raw_of: RawLookup, charsets: list[str] | None,
                        little_endian: bool = True) -> dict[str, Any]:
    """Catalogue values from the raw bytes of the header's elements (``raw_of(tag)``), text
    decoded with its character set.

    Reads the raw element bytes itself: pydicom's per-element conversion (with validation)
    costs more than the rest of a small C-STORE.
    """
    encodings = convert_encodings(charsets)
    values: dict[str, Any] = {}
    for name, (tag, vr, kind) in _FIELD_TAGS.items():
        if tag == _CHARSET_TAG:  # dcmread converts it while reading a file: take the terms
            values[name] = "\\".join(charsets) if charsets else None
            continue
        raw = raw_of(tag)
        if not raw:
            values[name] = None
            continue
        if vr in ("US", "SS", "UL", "SL"):
            fmt = ("<" if little_endian else ">") + {"US": "H", "SS": "h", "UL": "I", "SL": "i"}[vr]
            values[name] = struct.unpack_from(fmt, raw)[0] if len(raw) >= struct.calcsize(fmt) else None
            continue
        if vr == "PN":
            text = "=".join(decode_bytes(group, encodings, PN_DELIMS) for group in raw.split(b"=")).rstrip("= \x00")
        elif vr in _TEXT_VRS:
            text = decode_bytes(raw, encodings, set()).rstrip(" \x00")
        else:
            text = raw.decode("ascii", "replace").strip(" \x00")
        if kind == "uid":
            values[name] = text
        elif kind in ("int", "float"):
            values[name] = _first_number(text.split("\\")[0].strip(), int if kind == "int" else float)
        elif kind == "multi":
            values[name] = "\\".join(v.strip() for v in text.split("\\")) or None
        else:
            values[name] = text.strip() or None
    return values


def _character_sets(ds: Any) -> list[str] | None:
    """Specific Character Set terms; pydicom converts this element while reading a file."""
    elem = ds.get_item(_CHARSET_TAG)
    value = None if elem is None else elem.value
    if isinstance(value, str):
        value = [value] if value else None
    return _charset_terms(value)


def _charset_terms(value: bytes | list[str] | None) -> list[str] | None:
    if not value:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace").split("\\")
    return [str(v).strip() for v in value]


def _raw_value(ds: Any, tag: int) -> bytes | None:
    elem = ds.get_item(tag)
    if elem is None:
        return None
    value = elem.value
    if value is None or isinstance(value, bytes):
        return value
    return None  # already converted (a sequence or a value set by code): not a header string


def _first_number(text: str, kind: type) -> Any:
    if not text:
        return None
    try:
        number = kind(float(text)) if kind is int else kind(text)
    except (TypeError, ValueError, OverflowError):
        return None
    if isinstance(number, float) and not math.isfinite(number):
        return None
    return number


def locate_pixel_data(data: bytes | memoryview, pos: int, number_of_frames: int,
                      explicit: bool) -> PixelLayout:
    """Byte ranges of the top-level Pixel Data element starting at ``pos`` (if it is there).

    Truncated pixel data is an InvalidDataset: storing it would acknowledge an image that
    can never be shown.
    """
    view = memoryview(data)
    end = len(view)
    if pos + 8 > end or bytes(view[pos:pos + 4]) != _PIXEL_TAG_LE:
        return PixelLayout()
    if explicit:
        if pos + 12 > end:
            raise InvalidDataset("the dataset is truncated inside the Pixel Data element header")
        (length,) = struct.unpack_from("<I", view, pos + 8)
        value_start = pos + 12
    else:
        (length,) = struct.unpack_from("<I", view, pos + 4)
        value_start = pos + 8
    if length != _UNDEFINED:
        if value_start + length > end:
            raise InvalidDataset(
                f"the dataset is truncated: Pixel Data declares {length} bytes, "
                f"{end - value_start} are present"
            )
        return PixelLayout(offset=value_start, length=length)
    fragments, basic_offsets, first_item, stop = _read_items(view, value_start)
    frames = _group_fragments(view, fragments, basic_offsets, first_item, max(number_of_frames, 1))
    return PixelLayout(offset=value_start, length=stop - value_start, encapsulated=True, frames=frames)


def _read_items(view: memoryview, pos: int) -> tuple[list[tuple[int, int]], list[int], int, int]:
    end = len(view)
    fragments: list[tuple[int, int]] = []
    basic_offsets: list[int] = []
    first_item = -1
    index = 0
    while True:
        if pos + 8 > end:
            raise InvalidDataset("the dataset is truncated inside encapsulated Pixel Data")
        tag = bytes(view[pos:pos + 4])
        (length,) = struct.unpack_from("<I", view, pos + 4)
        if tag == _SEQ_DELIM:
            return fragments, basic_offsets, first_item, pos + 8
        if tag != _ITEM or length == _UNDEFINED:
            raise InvalidDataset("encapsulated Pixel Data holds something other than items")
        if pos + 8 + length > end:
            raise InvalidDataset("the dataset is truncated inside an encapsulated fragment")
        if index == 0:
            basic_offsets = list(struct.unpack_from(f"<{length // 4}I", view, pos + 8))
        else:
            if first_item < 0:
                first_item = pos
            fragments.append((pos + 8, length))
        index += 1
        pos += 8 + length


def _group_fragments(view: memoryview, fragments: list[tuple[int, int]], basic_offsets: list[int],
                     first_item: int, number_of_frames: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Fragments per frame (PS3.5 A.4): one frame takes all; else the Basic Offset Table;
    else one fragment a frame; else a new frame at each codestream start marker."""
    if not fragments:
        return ()
    if number_of_frames == 1:
        return (tuple(fragments),)
    if len(basic_offsets) == number_of_frames and first_item >= 0:
        starts = [first_item + off for off in basic_offsets] + [1 << 62]
        frames: list[list[tuple[int, int]]] = [[] for _ in basic_offsets]
        frame = 0
        for offset, length in fragments:
            while offset - 8 >= starts[frame + 1]:
                frame += 1
            frames[frame].append((offset, length))
        return tuple(tuple(f) for f in frames)
    if len(fragments) == number_of_frames:
        return tuple(((offset, length),) for offset, length in fragments)
    grouped: list[list[tuple[int, int]]] = []
    for offset, length in fragments:
        head = bytes(view[offset:offset + 4])
        if not grouped or head[:2] == b"\xff\xd8" or head == b"\xff\x4f\xff\x51":
            grouped.append([])
        grouped[-1].append((offset, length))
    return tuple(tuple(f) for f in grouped)
