"""Frames to 8-bit pictures: modality LUT, VOI LUT (LINEAR), MONOCHROME1 inversion; PNG/JPEG.

numpy does the arithmetic on the whole frame at once; Pillow encodes (the well-kept imaging
library for Python, with fast zlib and libjpeg-turbo). The formulas are PS3.3 C.11.1
(rescale) and C.11.2.1.2.1 (LINEAR window).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from db.lookups import InstancePixels

FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}


class RenderError(ValueError):
    """The rendering parameters cannot be honoured."""


@dataclass(frozen=True)
class Window:
    center: float
    width: float

    def __post_init__(self) -> None:
        if not self.width >= 1:
            raise RenderError(f"window width must be at least 1, got {self.width}")


def parse_window(text: str) -> Window:
    """``center,width`` as in ``?window=40,400``."""
    parts = text.split(",")
    try:
        center, width = (float(p) for p in parts)
    except ValueError:
        raise RenderError(f"window must be 'center,width' (two numbers), got {text[:40]!r}") from None
    return Window(center, width)


def modality_values(values: np.ndarray, slope: float | None, intercept: float | None) -> np.ndarray:
    """Stored values to modality values (e.g. Hounsfield units): ``v * slope + intercept``."""
    out = values.astype(np.float32)
    if slope not in (None, 1.0):
        out *= np.float32(slope)
    if intercept not in (None, 0.0):
        out += np.float32(intercept)
    return out


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """VOI LUT function LINEAR to 0..255 (PS3.3 C.11.2.1.2.1)."""
    c, w = window.center, window.width
    if w == 1:
        return np.where(values <= c - 0.5, 0, 255).astype(np.uint8)
    scaled = (values - np.float32(c - 0.5)) * np.float32(255.0 / (w - 1)) + np.float32(127.5)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.rint(scaled).astype(np.uint8)


def default_window(inst: InstancePixels, values: np.ndarray) -> Window:
    """The first stored window, else the frame's full range."""
    if inst.window_center and inst.window_width and inst.window_width[0] >= 1:
        return Window(inst.window_center[0], inst.window_width[0])
    low, high = float(values.min()), float(values.max())
    return Window((low + high + 1) / 2, max(high - low + 1, 1.0))


def render_frame(array: np.ndarray, inst: InstancePixels, window: Window | None = None) -> np.ndarray:
    """An 8-bit greyscale (rows, columns) or RGB (rows, columns, 3) picture of one frame."""
    if array.ndim == 3:  # colour: already RGB from the decoder; windowing does not apply
        if array.dtype != np.uint8:
            top = float(array.max()) or 1.0
            array = np.rint(array.astype(np.float32) * (255.0 / top)).astype(np.uint8)
        return array
    values = modality_values(array, inst.rescale_slope, inst.rescale_intercept)
    picture = apply_window(values, window or default_window(inst, values))
    if (inst.photometric_interpretation or "").strip() == "MONOCHROME1":
        picture = 255 - picture
    return picture


def encode_picture(picture: np.ndarray, fmt: str, quality: int = 90, size: int | None = None) -> bytes:
    """PNG (fast zlib level) or JPEG; ``size`` bounds the longer side, keeping the aspect."""
    if fmt not in FORMATS:
        raise RenderError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    image = Image.fromarray(picture)
    if size is not None and max(image.size) > size:
        image.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format="PNG", compress_level=1)
    else:
        image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
