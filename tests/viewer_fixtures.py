"""Data and servers for the web viewer's browser tests: a CT/MR phantom study, the node with its
HTTP API, users, and Chromium driven by Playwright."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.helpers import (CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, REPO, dcmtk_env, free_port, node_process,
                           run_cli, storescu_args, write_config)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "correct horse battery staple"
ARTIFACTS = REPO / "test-artifacts"


@dataclass(frozen=True)
class SeriesSpec:
    """One series of the phantom: how many slices and how its pixels are stored."""

    number: int
    description: str
    modality: str = "CT"
    slices: int = 8
    size: int = 128
    signed: bool = False          # PixelRepresentation 1, intercept 0 (else 12-bit, intercept -1024)
    bits: int = 16                # 8 or 16 (MR and MONOCHROME1 series)
    photometric: str = "MONOCHROME2"


@dataclass
class PhantomStudy:
    study_uid: str
    patient_name: str
    patient_id: str
    files: list[Path] = field(default_factory=list)
    series: dict[str, SeriesSpec] = field(default_factory=dict)          # series UID -> spec
    pixels: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # (series UID, index) -> modality values

    def series_uid(self, number: int) -> str:
        return next(uid for uid, spec in self.series.items() if spec.number == number)


def phantom_hu(z: float, size: int) -> np.ndarray:
    """A chest-like slice in Hounsfield units: air, body, two lungs, a spine, and a bright
    sphere that moves with ``z`` (0..1) so every slice differs."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size - 0.5
    hu = np.full((size, size), -1000.0)
    body = (x / 0.44) ** 2 + (y / 0.34) ** 2 <= 1
    hu[body] = 40 + 25 * np.sin(9 * x[body]) * np.cos(7 * y[body])
    lung_r = 0.11 * (1.2 - 0.6 * abs(z - 0.5))
    for cx in (-0.18, 0.18):
        hu[((x - cx) / (lung_r * 1.1)) ** 2 + ((y + 0.02) / (lung_r * 1.6)) ** 2 <= 1] = -820
    hu[(x ** 2 + (y - 0.22) ** 2) <= 0.05 ** 2] = 700
    hu[(x ** 2 + (y - 0.22) ** 2) <= 0.025 ** 2] = 250
    sx, sy = -0.25 + 0.5 * z, 0.05
    hu[((x - sx) ** 2 + (y - sy) ** 2) <= 0.04 ** 2] = 180
    return hu


def _dataset(study: PhantomStudy, spec: SeriesSpec, series_uid: str, index: int) -> tuple[Dataset, np.ndarray]:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = CT_IMAGE_STORAGE if spec.modality == "CT" else MR_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = study.patient_name, study.patient_id
    ds.PatientBirthDate, ds.PatientSex = "19580314", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.study_uid, series_uid
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240611", "093000", "ACC7781", "1"
    ds.StudyDescription = "CT CHEST WITH CONTRAST"
    ds.InstitutionName = "GENERAL HOSPITAL"
    ds.ReferringPhysicianName = "REF^DOC"
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = spec.modality, spec.number, spec.description
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0, 0, float(index * 2.5)]
    ds.PixelSpacing = [0.7, 0.7]
    ds.Rows = ds.Columns = spec.size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, spec.photometric
    z = index / max(1, spec.slices - 1)
    hu = phantom_hu(z, spec.size)
    if spec.bits == 8:
        stored = np.clip((hu + 1000) / 2000 * 255, 0, 255).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.WindowCenter, ds.WindowWidth = 128, 256
        values = stored.astype(np.float64)
    elif spec.signed:
        stored = np.round(hu).astype(np.int16)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]
        values = stored.astype(np.float64)
    else:
        stored = np.round(hu + 1024).clip(0, 4095).astype(np.uint16)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.WindowCenter, ds.WindowWidth = 40, 400
        values = stored.astype(np.float64) - 1024
    ds.PixelData = stored.tobytes()
    return ds, values


def write_phantom_study(folder: Path, specs: list[SeriesSpec], *, patient_name: str = "MÜLLER^ANNA",
                        patient_id: str = "P-40721") -> PhantomStudy:
    study = PhantomStudy(generate_uid(), patient_name, patient_id)
    folder.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        series_uid = generate_uid()
        study.series[series_uid] = spec
        for i in range(spec.slices):
            ds, values = _dataset(study, spec, series_uid, i)
            ds.SpecificCharacterSet = "ISO_IR 192"
            path = folder / f"s{spec.number:02d}_{i:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            study.files.append(path)
            study.pixels[(series_uid, i)] = values
    return study


def window_linear(values: np.ndarray, center: float, width: float, invert: bool = False) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (VOI LUT function LINEAR) to 0..255, the numpy reference."""
    width = max(width, 1.0)
    out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    out = np.where(values <= center - 0.5 - (width - 1) / 2, 0, out)
    out = np.where(values > center - 0.5 + (width - 1) / 2, 255, out)
    out = np.round(np.clip(out, 0, 255))
    return 255 - out if invert else out


def store_with_storescu(port: int, files: list[Path]) -> None:
    result = subprocess.run(storescu_args(port) + [str(p) for p in files], capture_output=True, text=True,
                            env=dcmtk_env(), timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


def add_user(run_cli, config: Path, name: str, role: str) -> None:
    result = run_cli(config, "user", "add", name, "--role", role, input=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr


def http_json(url: str, body: dict | None = None, token: str | None = None, method: str | None = None,
              timeout: float = 10) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"))
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        exc.close()
        return exc.code, json.loads(payload or b"{}")


def wait_for_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError as exc:
            exc.close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"no HTTP answer from {url} within {timeout} s")


def chromium_path() -> str | None:
    return shutil.which("chromium")


class InFlight:
    """Counts the page's API requests (not the token endpoints) and the most at once."""

    def __init__(self, context, prefix: str = "/api/pacs/") -> None:
        self.prefix = prefix
        self.now = 0
        self.peak = 0
        self.urls: list[str] = []
        self._open: set[int] = set()
        context.on("request", self._started)
        context.on("requestfinished", self._ended)
        context.on("requestfailed", self._ended)

    def _ours(self, request) -> bool:
        return self.prefix in request.url

    def _started(self, request) -> None:
        if self._ours(request):
            self._open.add(id(request))
            self.urls.append(request.url)
            self.now += 1
            self.peak = max(self.peak, self.now)

    def _ended(self, request) -> None:
        if id(request) in self._open:
            self._open.discard(id(request))
            self.now -= 1

    def count(self, fragment: str) -> int:
        return sum(1 for url in self.urls if fragment in url)

    def reset(self) -> None:
        self.urls.clear()
        self.peak = self.now


@dataclass
class RunningNode:
    config: Path
    dimse_port: int
    base_url: str

    def token(self, user: str) -> str:
        status, body = http_json(self.base_url + "api/token/", {"username": user, "password": PASSWORD})
        assert status == 200, body
        return body["access"]


@contextmanager
def viewer_node(folder: Path, *, web: str = "", users: tuple[tuple[str, str], ...] = (
        ("admin", "admin"), ("reader", "viewer"), ("sender", "uploader"))) -> Iterator[RunningNode]:
    """``python -m node serve`` with its HTTP API on a free port, and the given users."""
    dimse, http = free_port(), free_port()
    config = write_config(folder, port=dimse,
                          extra=f'[web]\nhost = "127.0.0.1"\nport = {http}\n{web}\n')
    for name, role in users:
        add_user(run_cli, config, name, role)
    with node_process(config, dimse) as proc:
        base = f"http://127.0.0.1:{http}/"
        wait_for_http(base + "healthz", proc)
        yield RunningNode(config, dimse, base)


@contextmanager
def chromium() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, timeout=30000)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page, base_url: str, user: str, password: str = PASSWORD) -> None:
    page.goto(base_url)
    page.get_by_test_id("username").fill(user)
    page.get_by_test_id("password").fill(password)
    page.get_by_test_id("sign-in").click()
    page.get_by_test_id("user-name").wait_for(timeout=10000)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
