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


# --- storescu runs, catalogue inspection and stored-file checks ------------------------------

_SENDING = "I: Sending file: "
_SUCCESS = "I: Received Store Response (Success)"


def storescu_args(port: int, *options: str, ae_title: str = "PACSNODE") -> list[str]:
    """storescu with verbose output (one "Sending file" and one response line per instance)."""
    return ["storescu", "-v", "-to", "10", "-aec", ae_title, *options, "127.0.0.1", str(port)]


def run_storescu(port: int, paths: list[Path], *options: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        storescu_args(port, *options) + [str(p) for p in paths],
        capture_output=True, text=True, env=dcmtk_env(), timeout=timeout,
    )


def successful_files(lines: list[str] | str) -> list[str]:
    """Files storescu -v reports as answered with Success (its response follows the file's
    "Sending file" line; DCMTK 3.6.7 prints both on stderr)."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    current: str | None = None
    done: list[str] = []
    for line in lines:
        if line.startswith(_SENDING):
            current = line[len(_SENDING):].strip()
        elif line.startswith(_SUCCESS) and current is not None:
            done.append(current)
            current = None
    return done


class LineCollector:
    """Collects a subprocess's output lines on a thread, so a test can wait for a line
    count with a deadline instead of blocking on readline."""

    def __init__(self, stream) -> None:  # noqa: ANN001 - a text pipe
        import threading

        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:  # noqa: ANN001
        with stream:
            for line in stream:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float) -> bool:  # noqa: ANN001 - lines -> bool
        """True once predicate(lines) holds; False at end of output or after timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.lines):
                remaining = deadline - time.monotonic()
                if self._done or remaining <= 0:
                    return predicate(self.lines)
                self._cond.wait(remaining)
            return True

    def finish(self, timeout: float) -> list[str]:
        """Every line, once the stream has ended (TimeoutError if it does not end in time)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the output did not end in time")
        return list(self.lines)


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def port_refuses(port: int) -> bool:
    """True when nothing listens on the port any more."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def dataset_bytes(part10: bytes) -> bytes:
    """The encoded dataset of a Part 10 file: what follows its File Meta Information."""
    import io
    import struct

    assert part10[128:132] == b"DICM", "not a Part 10 file"
    fp = io.BytesIO(part10)
    fp.seek(132)
    # (0002,0000) UL group length is the first element of the meta (PS3.10 7.1)
    header = fp.read(12)
    assert header[:4] == b"\x02\x00\x00\x00", "the file meta has no group length"
    (group_length,) = struct.unpack("<I", header[8:12])
    return part10[132 + 12 + group_length:]


def catalogue_rows(data_dir: Path) -> dict[str, dict]:
    """SOP Instance UID -> its instance row, read straight from the SQLite catalogue."""
    import sqlite3

    con = sqlite3.connect(f"file:{data_dir / 'catalogue.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        con.row_factory = sqlite3.Row
        return {row["sop_instance_uid"]: dict(row) for row in con.execute("SELECT * FROM instance")}
    finally:
        con.close()


def sha256_file(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_node_config(folder: Path, *, port: int = 0, **kwargs: object) -> Path:
    """write_config plus a free HTTP port, so nodes started side by side (by these tests or
    by another run on the machine) never collide on the web listener."""
    path = write_config(folder, port=port, **kwargs)
    text = path.read_text()
    if "[web]" not in text:
        path.write_text(text + f'[web]\nhost = "127.0.0.1"\nport = {free_port()}\n')
    return path


def wait_for_job(job_id: int, timeout: float = 30.0):  # noqa: ANN201 - scu.jobs.JobView
    """The retrieval job's view once it has finished, or as it stands after ``timeout`` s."""
    from db.models import database
    from scu.jobs import get_job

    deadline = time.monotonic() + timeout
    while True:
        with database.connection_context():
            view = get_job(job_id)
        if view.finished or time.monotonic() > deadline:
            return view
        time.sleep(0.05)
