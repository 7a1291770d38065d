"""Frames of stored instances: read as stored at the offsets recorded at ingest, or decoded.

Serving a native frame is one ``pread`` at ``pixel_offset + (n-1) * frame_length``; an
encapsulated frame is its fragments joined (PS3.5 A.4), returned in its transfer syntax.
Decoding (pydicom's pixel handlers, with Pillow or pylibjpeg plugins where installed) is the
fallback for rendering, for ``?decode=1``, and for files whose offsets were not recorded
(deflated or big endian).

    FrameError
    ├── NoSuchFrame     the frame number is outside 1..NumberOfFrames
    ├── NoPixelData     the instance has no (usable) pixel data
    └── CannotDecode    no installed codec decodes this transfer syntax
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from db.lookups import InstancePixels

EXPLICIT_LE = "1.2.840.10008.1.2.1"

# PS3.18 8.7.3.3.2: media types of single frames by transfer syntax
_FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


class FrameError(Exception):
    """A frame cannot be served."""


class NoSuchFrame(FrameError):
    pass


class NoPixelData(FrameError):
    pass


class CannotDecode(FrameError):
    pass


def frame_media_type(transfer_syntax: str) -> str:
    """``type; transfer-syntax=UID`` for a frame as stored (native: octet-stream)."""
    base = _FRAME_MEDIA_TYPES.get(transfer_syntax, "application/octet-stream")
    return f"{base}; transfer-syntax={transfer_syntax}"


def check_frame(inst: InstancePixels, n: int) -> None:
    if not inst.has_pixels:
        raise NoPixelData(f"instance {inst.sop_instance_uid} has no pixel data")
    if not 1 <= n <= inst.number_of_frames:
        raise NoSuchFrame(f"instance {inst.sop_instance_uid} has frames 1 to {inst.number_of_frames}, "
                          f"not {n}")


def stored_frame(inst: InstancePixels) -> bool:
    """True when frames of this instance can be served from recorded offsets."""
    return inst.pixel_offset is not None and (not inst.encapsulated or bool(inst.frame_fragments))


def read_frame(path: Path, inst: InstancePixels, n: int) -> tuple[bytes, str]:
    """Frame ``n`` (1-based) as stored, with its transfer syntax; decoded to explicit VR little
    endian when the file's offsets were not recorded."""
    check_frame(inst, n)
    if not stored_frame(inst):
        return decoded_frame_bytes(path, inst, n), EXPLICIT_LE
    with open(path, "rb", buffering=0) as fh:
        fd = fh.fileno()
        if inst.encapsulated:
            if n > len(inst.frame_fragments):
                raise NoPixelData(f"instance {inst.sop_instance_uid}: no fragments for frame {n}")
            return b"".join(_pread(fd, length, offset) for offset, length in inst.frame_fragments[n - 1]), \
                inst.transfer_syntax
        return _native_frame(fd, inst, n), inst.transfer_syntax


def _native_frame(fd: int, inst: InstancePixels, n: int) -> bytes:
    assert inst.pixel_offset is not None and inst.pixel_length is not None
    bits = inst.rows * inst.columns * inst.samples_per_pixel * inst.bits_allocated  # type: ignore[operator]
    start_bit = (n - 1) * bits
    if start_bit + bits > inst.pixel_length * 8:
        raise NoPixelData(f"instance {inst.sop_instance_uid}: the pixel data holds fewer than {n} frames")
    if bits % 8 == 0:
        return _pread(fd, bits // 8, inst.pixel_offset + start_bit // 8)
    # 1-bit data whose frames do not start on byte boundaries (PS3.5 8.1.1, little bit order)
    first, last = start_bit // 8, (start_bit + bits + 7) // 8
    raw = np.frombuffer(_pread(fd, last - first, inst.pixel_offset + first), dtype=np.uint8)
    unpacked = np.unpackbits(raw, bitorder="little")[start_bit % 8:start_bit % 8 + bits]
    return np.packbits(unpacked, bitorder="little").tobytes()


def _pread(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise NoPixelData("the stored file is shorter than its catalogue entry says")
    return data


def decode_frame(path: Path, inst: InstancePixels, n: int) -> np.ndarray:
    """Frame ``n`` as an array (rows, columns[, samples]); colour converted to RGB."""
    check_frame(inst, n)
    from pydicom import dcmread
    from pydicom.pixels import pixel_array

    try:
        if stored_frame(inst):  # pydicom reads only this frame's bytes from the file
            return pixel_array(str(path), index=n - 1)
        # deflated or big endian: pydicom's file reader (which inflates) must parse it whole
        return pixel_array(dcmread(path), index=n - 1)
    except AttributeError:
        raise NoPixelData(f"instance {inst.sop_instance_uid} has no pixel data") from None
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        raise CannotDecode(f"cannot decode {inst.transfer_syntax} here: {exc}") from None


def decoded_frame_bytes(path: Path, inst: InstancePixels, n: int) -> bytes:
    """Frame ``n`` decoded to little endian pixel bytes (``?decode=1``)."""
    array = decode_frame(path, inst, n)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def frame_array(path: Path, inst: InstancePixels, n: int) -> np.ndarray:
    """Frame ``n`` as stored values for rendering; monochrome native frames skip pydicom."""
    check_frame(inst, n)
    if (inst.samples_per_pixel == 1 and not inst.encapsulated and stored_frame(inst)
            and inst.bits_allocated in (8, 16, 32)):
        raw, _ = read_frame(path, inst, n)
        signed = inst.pixel_representation == 1
        dtype = np.dtype(f"<{'i' if signed else 'u'}{inst.bits_allocated // 8}")
        values = np.frombuffer(raw, dtype=dtype).reshape(inst.rows, inst.columns)  # type: ignore[arg-type]
        return _significant_bits(values, inst.bits_stored or inst.bits_allocated, signed)
    return decode_frame(path, inst, n)


def _significant_bits(values: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Keep BitsStored bits (PS3.5 8.1.1): mask unsigned values, sign-extend signed ones."""
    total = values.dtype.itemsize * 8
    if bits_stored >= total:
        return values
    if signed:
        shift = total - bits_stored
        return (values << shift) >> shift
    return values & np.array((1 << bits_stored) - 1, dtype=values.dtype)
