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


# --- Query dataset: many small studies with varied patients, dates and modalities -----------

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SOP_CLASS_OF_MODALITY = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE,
                         "US": US_IMAGE_STORAGE, "CR": CR_IMAGE_STORAGE}
MODALITY_WEIGHTS = {"CT": 35, "MR": 30, "CR": 20, "US": 15}
STUDY_DESCRIPTIONS = {"CT": ["CT CHEST", "CT ABDOMEN", "CT HEAD"], "MR": ["MR BRAIN", "MR KNEE", "MR SPINE"],
                      "CR": ["CR CHEST PA", "CR HAND"], "US": ["US ABDOMEN", "US THYROID"]}
# Family names: ASCII ones for the wildcard row, plus Latin-1 ones that no ASCII wildcard
# could reach by folding accents (Orthanc folds them, a plain comparison does not).
FAMILY_NAMES = [
    "SMITH", "JOHNSON", "JOHNSTON", "JONES", "BROWN", "TAYLOR", "WILSON", "DAVIES", "EVANS",
    "THOMAS", "ROBERTS", "WALKER", "WRIGHT", "THOMPSON", "WHITE", "HUGHES", "EDWARDS", "GREEN",
    "HALL", "WOOD", "HARRIS", "LEWIS", "MARTIN", "JACKSON", "CLARKE", "CLARK", "TURNER", "HILL",
    "SCOTT", "COOPER", "MORRIS", "WARD", "MOORE", "KING", "WATSON", "BAKER", "HARRISON",
    "MORGAN", "PATEL", "YOUNG", "ALLEN", "MITCHELL", "ANDERSON", "LEE", "BELL", "KELLY",
]
FAMILY_NAMES_LATIN1 = ["MÜLLER", "GARCÍA", "NUÑEZ", "ÅSTRÖM", "LEFÈVRE", "FAÇADE", "ØSTERGÅRD"]
GIVEN_NAMES = [
    "JAMES", "MARY", "JOHN", "PATRICIA", "ROBERT", "JENNIFER", "MICHAEL", "LINDA", "WILLIAM",
    "ELIZABETH", "DAVID", "BARBARA", "RICHARD", "SUSAN", "JOSEPH", "JESSICA", "THOMAS", "SARAH",
    "CHARLES", "KAREN", "EMMA", "OLIVER", "AMELIA", "HARRY", "ISLA", "JACK", "AVA", "NOAH",
]
GIVEN_NAMES_LATIN1 = ["JÜRGEN", "JOSÉ", "BJÖRN", "FRANÇOIS", "SØREN", "ZOË"]


@dataclass(frozen=True)
class QuerySpec:
    """``studies`` studies over ``patients`` patients, dates over ``years`` years from
    ``first_year``; ``two_series_percent`` of studies get a second series of another modality;
    study 0 holds one series of ``big_series`` instances. Files go into ``shards`` folders so
    several storescu can load them at once."""

    name: str
    studies: int
    patients: int
    big_series: int
    rows: int = 16
    columns: int = 16
    first_year: int = 2019
    years: int = 5
    two_series_percent: int = 30
    latin1_percent: int = 5
    mixed_case_percent: int = 20
    shards: int = 4
    seed: int = 20240


QUERY_5000 = QuerySpec("query-5000-studies", studies=5000, patients=1800, big_series=250)


@dataclass(frozen=True)
class QueryData:
    """The generated files (in ``shards``) and an index of what they hold, per study."""

    folder: Path
    shards: tuple[Path, ...]
    studies: tuple[dict, ...]  # uid, patient_id, patient_name, date, modalities, series, instances
    big_study_uid: str
    big_series_uid: str
    total_bytes: int

    @property
    def instances(self) -> int:
        return sum(s["instances"] for s in self.studies)

    @property
    def series(self) -> int:
        return sum(s["series"] for s in self.studies)

    @property
    def patients(self) -> int:
        return len({s["patient_id"] for s in self.studies})


def _query_plan(spec: QuerySpec) -> tuple[list[dict], list[dict]]:
    """Patients and studies (with their series), decided by a seeded generator only."""
    import datetime
    import random

    rng = random.Random(spec.seed)
    patients = []
    for p in range(spec.patients):
        latin1 = rng.randrange(100) < spec.latin1_percent
        family = rng.choice(FAMILY_NAMES_LATIN1 if latin1 else FAMILY_NAMES)
        given = rng.choice(GIVEN_NAMES_LATIN1 if latin1 and rng.random() < 0.5 else GIVEN_NAMES)
        name = f"{family}^{given}"
        if rng.randrange(100) < spec.mixed_case_percent:
            name = "^".join(part.capitalize() for part in name.split("^"))
        birth = datetime.date(1930, 1, 1) + datetime.timedelta(days=rng.randrange(365 * 85))
        patients.append({"id": f"QP{p:06d}", "name": name, "birth": birth.strftime("%Y%m%d"),
                         "sex": rng.choice("FM")})
    first = datetime.date(spec.first_year, 1, 1)
    days = (datetime.date(spec.first_year + spec.years, 1, 1) - first).days
    modalities, weights = list(MODALITY_WEIGHTS), list(MODALITY_WEIGHTS.values())
    studies = []
    for i in range(spec.studies):
        patient = patients[i] if i < len(patients) else rng.choice(patients)
        primary = rng.choices(modalities, weights)[0]
        series = [(primary, rng.choice([1, 1, 2, 2]))]
        if rng.randrange(100) < spec.two_series_percent:
            series.append((rng.choice([m for m in modalities if m != primary]), rng.choice([1, 1, 2, 2])))
        if i == 0:
            series = [("CT", spec.big_series)]
        date = first + datetime.timedelta(days=rng.randrange(days))
        studies.append({
            "uid": generate_uid(UID_ROOT, entropy_srcs=[spec.name, str(spec.seed), "study", str(i)]),
            "patient": patient, "date": date.strftime("%Y%m%d"),
            "time": f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
            "accession": f"QA{i:07d}", "description": rng.choice(STUDY_DESCRIPTIONS[primary]),
            "series": [{"uid": generate_uid(UID_ROOT, entropy_srcs=[spec.name, str(spec.seed), "series",
                                                                    str(i), str(n)]),
                        "modality": modality, "count": count}
                       for n, (modality, count) in enumerate(series)],
        })
    return patients, studies


def _query_image(spec: QuerySpec, study: dict, index: int, series_index: int,
                 instance_number: int) -> Dataset:
    series = study["series"][series_index]
    modality = series["modality"]
    image_spec = DataSpec(spec.name, count=1, rows=spec.rows, columns=spec.columns,
                          modality=modality, patient_id=study["patient"]["id"])
    ds = make_image(image_spec, study_uid=study["uid"], series_uid=series["uid"],
                    series_number=series_index + 1, instance_number=instance_number)
    sop_class = SOP_CLASS_OF_MODALITY[modality]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.PatientName = study["patient"]["name"]
    ds.PatientBirthDate = study["patient"]["birth"]
    ds.PatientSex = study["patient"]["sex"]
    ds.StudyDate = ds.SeriesDate = study["date"]
    ds.StudyTime = study["time"]
    ds.AccessionNumber = study["accession"]
    ds.StudyID = str(index + 1)
    ds.StudyDescription = study["description"]
    ds.SeriesDescription = f"{modality} SERIES {series_index + 1}"
    return ds


def _query_index(studies: list[dict]) -> list[dict]:
    return [{"uid": s["uid"], "patient_id": s["patient"]["id"], "patient_name": s["patient"]["name"],
             "date": s["date"], "modalities": sorted({x["modality"] for x in s["series"]}),
             "series": len(s["series"]), "instances": sum(x["count"] for x in s["series"]),
             "series_uids": [x["uid"] for x in s["series"]]} for s in studies]


def ensure_query_data(spec: QuerySpec = QUERY_5000, root: Path | None = None) -> QueryData:
    """The query dataset's files (``folder/shard-N``) and index, generated on first use and
    reused while the spec and generator hold; the index sits beside the folder, not in it."""
    root = root or WORK / "data"
    folder = root / spec.name
    manifest_path = root / f"{spec.name}.manifest.json"
    index_path = root / f"{spec.name}.index.json"
    manifest = {"generator": GENERATOR_VERSION, "spec": asdict(spec)}
    shard_names = [f"shard-{n}" for n in range(spec.shards)]
    if manifest_path.exists() and index_path.exists():
        stored = json.loads(manifest_path.read_text())
        studies = json.loads(index_path.read_text())
        files = [f for name in shard_names for f in (folder / name).glob("*.dcm")]
        if ({k: stored.get(k) for k in manifest} == manifest
                and len(files) == sum(s["instances"] for s in studies)):
            return _query_data(folder, shard_names, studies, stored["bytes"])
    _, studies = _query_plan(spec)
    building = root / f"{spec.name}.partial"
    if building.exists():
        shutil.rmtree(building)
    for name in shard_names:
        (building / name).mkdir(parents=True)
    total = 0
    for i, study in enumerate(studies):
        shard = building / shard_names[i % spec.shards]
        for s, series in enumerate(study["series"]):
            for n in range(series["count"]):
                path = shard / f"{i:05d}-{s}-{n:04d}.dcm"
                _query_image(spec, study, i, s, n + 1).save_as(path, enforce_file_format=True)
                total += path.stat().st_size
    if folder.exists():
        shutil.rmtree(folder)
    building.rename(folder)
    index = _query_index(studies)
    index_path.write_text(json.dumps(index))
    manifest_path.write_text(json.dumps(manifest | {"bytes": total}, indent=2))
    return _query_data(folder, shard_names, index, total)


def _query_data(folder: Path, shard_names: list[str], studies: list[dict], total: int) -> QueryData:
    big = studies[0]
    return QueryData(folder, tuple(folder / name for name in shard_names), tuple(studies),
                     big["uid"], big["series_uids"][0], total)
