"""Shared test helpers: free ports, generated datasets, node subprocesses, DCMTK runs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_dataset(
    *,
    patient_id: str = "PID1",
    patient_name: str = "DOE^JOHN",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    modality: str = "CT",
    instance_number: int = 1,
    series_number: int = 1,
    rows: int = 16,
    columns: int = 16,
    study_date: str = "20240102",
    charset: str | None = None,
    **extra: object,
) -> Dataset:
    """A small, valid image dataset with its file meta (explicit VR little endian)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate = study_date
    ds.StudyTime = "101010"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.StudyDescription = "TEST STUDY"
    ds.ReferringPhysicianName = "REF^DOC"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "TEST SERIES"
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0, 0, float(instance_number)]
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    for key, value in extra.items():
        setattr(ds, key, value)
    pixels = (np.arange(rows * columns, dtype=np.uint16) * (instance_number + 1)) % 4096
    ds.PixelData = pixels.reshape(rows, columns).tobytes()
    return ds


def write_dataset(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_config(folder: Path, *, port: int = 0, ae_title: str = "PACSNODE", extra: str = "",
                 database_url: str = "", **dicom: object) -> Path:
    """A config.toml in ``folder`` with data under ``folder/data``."""
    lines = ["[node]", f'ae_title = "{ae_title}"', 'data_dir = "./data"', "[dicom]",
             'host = "127.0.0.1"', f"port = {port}"]
    for key, value in dicom.items():
        lines.append(f"{key} = {_toml(value)}")
    lines += ["[database]", f'url = "{database_url}"', extra]
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def dcmtk_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def echo_ok(port: int, ae_title: str = "PACSNODE") -> bool:
    result = subprocess.run(
        ["echoscu", "-to", "2", "-aec", ae_title, "127.0.0.1", str(port)],
        capture_output=True, env=dcmtk_env(), timeout=10,
    )
    return result.returncode == 0


def wait_for_echo(port: int, proc: subprocess.Popen | None = None, timeout: float = 20.0,
                  ae_title: str = "PACSNODE") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"node exited with {proc.returncode}: {out}")
        if echo_ok(port, ae_title):
            return
        time.sleep(0.1)
    raise TimeoutError(f"no C-ECHO answer on port {port} within {timeout} s")


@contextmanager
def node_process(config: Path, port: int, ae_title: str = "PACSNODE") -> Iterator[subprocess.Popen]:
    """``python -m node serve`` as a real subprocess, waited for by C-ECHO, stopped by SIGTERM."""
    log = open(config.parent / "node.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "node", "--config", str(config), "serve"],
        cwd=config.parent, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_echo(port, proc, ae_title=ae_title)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def run_cli(config: Path, *args: str, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node", "--config", str(config), *args],
        cwd=config.parent, capture_output=True, text=True, timeout=timeout, input=input,
    )


def have_dcmtk() -> bool:
    return shutil.which("storescu") is not None and shutil.which("echoscu") is not None
