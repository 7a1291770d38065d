"""Generate the benchmark's input files with pydicom, cached under bench/work/data.

Both peers receive the very same files; generation is cached (a manifest with the spec) so
repeated runs measure rather than generate.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bench.harness import WORK

GENERATOR_VERSION = 1
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as generate_uid() uses by default


@dataclass(frozen=True)
class DataSpec:
    """What to generate: ``count`` instances in one study, split over ``series`` series."""

    name: str
    count: int
    rows: int
    columns: int
    series: int = 1
    modality: str = "CT"
    patient_id: str = "BENCH1"


@dataclass(frozen=True)
class GeneratedData:
    folder: Path
    count: int
    total_bytes: int

    @property
    def megabytes(self) -> float:
        """Decimal MB of the files as sent (file meta included), the MB/s basis."""
        return self.total_bytes / 1e6


SMALL_2000 = DataSpec("small-2000-64x64", count=2000, rows=64, columns=64, series=4, modality="MR")
CT_500 = DataSpec("ct-500-512x512", count=500, rows=512, columns=512, series=1, modality="CT")


def make_image(spec: DataSpec, *, study_uid: str, series_uid: str, series_number: int,
               instance_number: int) -> Dataset:
    """One valid 16-bit MONOCHROME2 image, explicit VR little endian, with file meta."""
    sop_class = CT_IMAGE_STORAGE if spec.modality == "CT" else MR_IMAGE_STORAGE
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(UID_ROOT)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientID = spec.patient_id
    ds.PatientName = "BENCH^PATIENT"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = "20240102"
    ds.StudyTime = "101010"
    ds.AccessionNumber = "BENCHACC1"
    ds.StudyID = "1"
    ds.StudyDescription = f"BENCH {spec.name}"
    ds.ReferringPhysicianName = "REF^DOC"
    ds.Modality = spec.modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"SERIES {series_number}"
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [-100.0, -100.0, float(instance_number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1.0
    ds.Rows = spec.rows
    ds.Columns = spec.columns
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
    ds.PixelData = _pixels(spec.rows, spec.columns, instance_number).tobytes()
    return ds


def _pixels(rows: int, columns: int, index: int) -> np.ndarray:
    """A disc whose radius changes with the slice, over a gradient: cheap, image-like."""
    y, x = np.indices((rows, columns), dtype=np.int32)
    cy, cx = rows // 2, columns // 2
    radius = max(rows, columns) * (0.2 + 0.2 * ((index % 50) / 50))
    disc = ((y - cy) ** 2 + (x - cx) ** 2) < radius ** 2
    image = (x + y + index) % 1024 + np.where(disc, 1000, 0)
    return image.astype(np.uint16)


def _manifest(spec: DataSpec) -> dict:
    return {"generator": GENERATOR_VERSION, "spec": asdict(spec)}


def ensure_data(spec: DataSpec, root: Path | None = None) -> GeneratedData:
    """The folder of ``spec``'s files, generated on first use and reused while the spec holds."""
    root = root or WORK / "data"
    folder = root / spec.name
    manifest_path = root / f"{spec.name}.manifest.json"  # outside the folder storescu sends
    if manifest_path.exists():
        stored = json.loads(manifest_path.read_text())
        files = sorted(folder.glob("*.dcm"))
        if {k: stored.get(k) for k in ("generator", "spec")} == _manifest(spec) and len(files) == spec.count:
            return GeneratedData(folder, spec.count, sum(f.stat().st_size for f in files))
    building = root / f"{spec.name}.partial"
    if building.exists():
        shutil.rmtree(building)
    building.mkdir(parents=True)
    study_uid = generate_uid(UID_ROOT)
    series_uids = [generate_uid(UID_ROOT) for _ in range(spec.series)]
    per_series = -(-spec.count // spec.series)
    total = 0
    for i in range(spec.count):
        s = i // per_series
        ds = make_image(spec, study_uid=study_uid, series_uid=series_uids[s], series_number=s + 1,
                        instance_number=i % per_series + 1)
        path = building / f"{i:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    if folder.exists():
        shutil.rmtree(folder)
    building.rename(folder)
    manifest_path.write_text(json.dumps(_manifest(spec) | {"bytes": total}, indent=2))
    return GeneratedData(folder, spec.count, total)
