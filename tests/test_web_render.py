"""Rendered frames and thumbnails against a numpy reference of PS3.3 windowing; gzip of JSON."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import examples

from node.render import Window, apply_window
from tests.helpers import make_dataset
from tests.web_support import web  # noqa: F401 - fixture


def reference_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 as written, element by element, in float64."""
    x = x.astype(np.float64)
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    with np.errstate(divide="ignore", invalid="ignore"):  # width 1: only the two outer cases apply
        y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    y = np.where(x <= low, 0.0, np.where(x > high, 255.0, y))
    return np.rint(y).astype(np.uint8)


def _ct(rows: int = 32, columns: int = 32, **extra) -> object:
    """Signed 12-bit CT values from -1024 to 2000, with rescale slope 1 and intercept -24."""
    ds = make_dataset(rows=rows, columns=columns, **extra)
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -24
    values = np.linspace(-1000, 2000, rows * columns).astype(np.int16).reshape(rows, columns)
    ds.PixelData = values.tobytes()
    return ds, values


def _png(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def _close(actual: np.ndarray, expected: np.ndarray) -> None:
    diff = np.abs(actual.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


@pytest.mark.parametrize("center,width", [(40, 400), (-600, 1500), (0, 1), (1000.5, 2.0), (300, 4000)])
def test_apply_window_matches_the_standard_formula(center, width):
    values = np.linspace(-3000, 3000, 10001).astype(np.float32)
    _close(apply_window(values, Window(center, width)), reference_window(values, center, width))


def test_rendered_png_applies_rescale_and_the_given_window(web):
    ds, stored = _ct()
    web.ingest(ds)
    response = web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1/rendered",
                       params={"window": "40,400", "format": "png"})
    assert response.headers["content-type"] == "image/png"
    _close(_png(response), reference_window(stored * 1.0 - 24, 40, 400))


def test_rendered_png_uses_the_stored_window_by_default(web):
    ds, stored = _ct(WindowCenter=[300, 40], WindowWidth=[1000, 400])
    web.ingest(ds)
    picture = _png(web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1/rendered"))
    _close(picture, reference_window(stored - 24.0, 300, 1000))


def test_without_a_stored_window_the_full_range_is_shown(web):
    ds, stored = _ct()
    del ds.WindowCenter
    del ds.WindowWidth
    web.ingest(ds)
    picture = _png(web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1/rendered"))
    assert picture.min() == 0 and picture.max() == 255
    assert np.all(np.diff(picture.ravel().astype(int)) >= 0)  # the ramp stays a ramp


def test_monochrome1_is_inverted(web):
    ds, stored = _ct(PhotometricInterpretation="MONOCHROME1")
    web.ingest(ds)
    picture = _png(web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1/rendered",
                           params={"window": "500,3000"}))
    _close(picture, 255 - reference_window(stored - 24.0, 500, 3000))


def test_bits_above_bits_stored_are_ignored(web):
    ds = make_dataset(rows=4, columns=4)
    ds.BitsStored, ds.HighBit, ds.RescaleIntercept = 12, 11, 0
    values = np.arange(16, dtype=np.uint16) * 200
    ds.PixelData = (values | 0xF000).tobytes()  # overlay bits set above bit 11
    web.ingest(ds)
    picture = _png(web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1/rendered",
                           params={"window": "1500,3001"}))
    _close(picture.ravel(), reference_window(values, 1500, 3001))


def test_jpeg_and_size(web):
    ds, _ = _ct(rows=64, columns=32)
    web.ingest(ds)
    response = web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1/rendered",
                       params={"format": "jpeg", "quality": 70, "size": 16})
    assert response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and image.size == (8, 16)


def test_colour_images_render_as_rgb(web):
    path = Path(examples.rgb_color.filename)
    web.ingestor.ingest_part10(path.read_bytes())
    uid = examples.rgb_color.SOPInstanceUID
    picture = _png(web.get(f"/api/pacs/instances/{uid}/frames/1/rendered"))
    assert picture.shape == (240, 320, 3)
    assert np.array_equal(picture, examples.rgb_color.pixel_array)


@pytest.mark.parametrize("params", [{"window": "40"}, {"window": "a,b"}, {"window": "40,0"},
                                    {"format": "gif"}, {"quality": "0"}, {"size": "0"}])
def test_bad_render_parameters_are_400(web, params):
    ds, _ = _ct()
    web.ingest(ds)
    response = web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1/rendered", params=params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


def test_rendered_frames_answer_304_per_parameters(web):
    ds, _ = _ct()
    web.ingest(ds)
    url = f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1/rendered"
    first = web.get(url, params={"window": "40,400"})
    assert first.headers["cache-control"] == "private, max-age=86400, immutable"
    etag = first.headers["etag"]
    assert web.get(url, params={"window": "40,400"}, headers={"If-None-Match": etag}).status_code == 304
    assert web.get(url, params={"window": "40,401"}, headers={"If-None-Match": etag}).status_code == 200


def test_thumbnail_is_a_small_jpeg_cached_on_disk(web):
    ds, _ = _ct(rows=300, columns=200)
    web.ingest(ds)
    url = f"/api/pacs/instances/{ds.SOPInstanceUID}/thumbnail"
    first = web.get(url)
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    size = web.settings.web.thumbnail_size
    assert max(Image.open(io.BytesIO(first.content)).size) == size
    cached = list((web.settings.data_dir / "cache" / "thumbnails").rglob("*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == first.content
    cached[0].write_bytes(b"from the cache")  # the second answer must come from the disk
    assert web.get(url).content == b"from the cache"
    assert web.get(url, headers={"If-None-Match": first.headers["etag"]}).status_code == 304


def test_thumbnail_of_a_multiframe_instance_shows_its_middle_frame(web):
    ds = make_dataset(rows=8, columns=8, RescaleIntercept=0, WindowCenter=127.5, WindowWidth=256)
    ds.NumberOfFrames = 3
    ds.PixelData = np.repeat(np.array([0, 255, 0], dtype=np.uint16), 64).tobytes()
    web.ingest(ds)
    picture = np.asarray(Image.open(io.BytesIO(web.get(
        f"/api/pacs/instances/{ds.SOPInstanceUID}/thumbnail").content)))
    assert picture.mean() > 200


def test_json_is_gzipped_and_pixels_are_not(web):
    web.ingest(*[make_dataset(patient_id=f"P{i}") for i in range(10)])
    listing = web.get("/api/pacs/studies/", headers={"Accept-Encoding": "gzip"})
    assert listing.headers["content-encoding"] == "gzip"
    assert len(listing.json()["studies"]) == 10  # httpx inflates it
    ds, _ = _ct(rows=64, columns=64)
    web.ingest(ds)
    frame = web.get(f"/api/pacs/instances/{ds.SOPInstanceUID}/frames/1", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in frame.headers
