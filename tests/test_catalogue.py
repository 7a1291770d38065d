"""The catalogue as the ingest path fills it, on SQLite and on PostgreSQL.

Rows, per-level counts and ModalitiesInStudy are maintained at ingest so that queries never
aggregate (db/models.py); these tests check them against what was stored.
"""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from db.catalogue import catalogue_stats, fold_name, index_batch
from db.models import Instance, Patient, Series, Study, database
from node.dicomfile import read_header
from node.ingest import Ingestor, instance_record
from node.maintenance import reindex, verify_files
from node.runtime import Node
from tests.helpers import dataset_bytes, make_dataset


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def node(make_settings, database_url: str) -> Iterator[Node]:
    """Storage and catalogue (no network) on the back end under test."""
    node = Node(make_settings(database={"url": database_url}))
    node.open_store()
    yield node
    node.stop()


@pytest.fixture
def ingestor(node: Node) -> Ingestor:
    assert node.ingestor is not None
    return node.ingestor


def ingest_all(ingestor: Ingestor, datasets: list[Dataset], threads: int = 1) -> list[str]:
    """Ingest concurrently when threads > 1, so rows share group-commit transactions."""
    encoded = [part10(ds) for ds in datasets]
    with ThreadPoolExecutor(threads) as pool:
        return [o.outcome for o in pool.map(ingestor.ingest_part10, encoded)]


def test_instance_row_describes_the_stored_file(node: Node, ingestor: Ingestor) -> None:
    """Every column a query or a frame read relies on comes from the stored instance."""
    ds = make_dataset(patient_id="PID7", patient_name="DOE^JANE", modality="MR", series_number=4,
                      instance_number=9, rows=8, columns=12, InstitutionName="GENERAL")
    data = part10(ds)
    assert ingestor.ingest_part10(data, source_ae="CT01").outcome == "stored"
    with database.connection_context():
        row = Instance.get(Instance.sop_instance_uid == ds.SOPInstanceUID)
        series, study, patient = row.series, row.series.study, row.series.study.patient
    stored = node.storage.absolute(row.path).read_bytes()
    assert stored == data  # a Part 10 file is kept byte for byte
    assert (row.size, row.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert row.sop_class_uid == ds.SOPClassUID
    assert row.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert row.source_ae == "CT01"
    assert (row.instance_number, row.rows, row.columns, row.bits_allocated) == (9, 8, 12, 16)
    assert stored[row.pixel_offset:row.pixel_offset + row.pixel_length] == ds.PixelData
    assert row.received_at is not None
    assert (series.series_uid, series.modality, series.series_number) == (ds.SeriesInstanceUID, "MR", 4)
    assert (study.study_uid, study.study_date, study.accession_number, study.institution_name) == (
        ds.StudyInstanceUID, "20240102", "ACC1", "GENERAL")
    assert study.modalities_in_study == "MR"
    assert (patient.patient_id, patient.patient_name, patient.patient_birth_date, patient.patient_sex) == (
        "PID7", "DOE^JANE", "19700101", "O")


def hierarchy() -> tuple[list[Dataset], dict[str, str]]:
    """Two patients; patient A has a CT+MR study and a CT study; B one CT study."""
    uids = {name: generate_uid() for name in ("a1", "a2", "b1", "a1_ct", "a1_mr", "a2_ct", "b1_ct")}
    datasets = []

    def series(patient: str, study: str, series_key: str, modality: str, count: int) -> None:
        for i in range(count):
            datasets.append(make_dataset(patient_id=patient, patient_name=f"{patient}^TEST",
                                         study_uid=uids[study], series_uid=uids[series_key],
                                         modality=modality, instance_number=i + 1))

    series("PA", "a1", "a1_ct", "CT", 3)
    series("PA", "a1", "a1_mr", "MR", 2)
    series("PA", "a2", "a2_ct", "CT", 1)
    series("PB", "b1", "b1_ct", "CT", 2)
    # interleave, so one group commit holds rows of several series and studies
    order = [datasets[i] for i in (0, 5, 3, 6, 1, 4, 7, 2)]
    return order, uids


def test_counts_at_patient_study_and_series_level(node: Node, ingestor: Ingestor) -> None:
    datasets, uids = hierarchy()
    assert ingest_all(ingestor, datasets, threads=4) == ["stored"] * 8
    with database.connection_context():
        patients = {p.patient_id: (p.num_studies, p.num_series, p.num_instances) for p in Patient.select()}
        studies = {s.study_uid: (s.num_series, s.num_instances, s.modalities_in_study) for s in Study.select()}
        series = {s.series_uid: s.num_instances for s in Series.select()}
        stats = catalogue_stats()
    assert patients == {"PA": (2, 3, 6), "PB": (1, 1, 2)}
    assert studies == {uids["a1"]: (2, 5, "CT\\MR"), uids["a2"]: (1, 1, "CT"), uids["b1"]: (1, 2, "CT")}
    assert series == {uids["a1_ct"]: 3, uids["a1_mr"]: 2, uids["a2_ct"]: 1, uids["b1_ct"]: 2}
    on_disk = sum(p.stat().st_size for p in node.storage.iter_files())
    assert (stats.patients, stats.studies, stats.series, stats.instances, stats.bytes) == (2, 3, 4, 8, on_disk)


def test_modalities_in_study_follow_each_new_series(ingestor: Ingestor) -> None:
    """ModalitiesInStudy (PS3.4 C.6.2.1.2) is kept up to date as series of other modalities
    arrive in later transactions, and a repeated modality is listed once."""
    study_uid = generate_uid()

    def add_series(modality: str) -> str:
        ds = make_dataset(study_uid=study_uid, modality=modality)
        ingestor.ingest_part10(part10(ds))
        with database.connection_context():
            return Study.get(Study.study_uid == study_uid).modalities_in_study

    assert add_series("MR") == "MR"
    assert add_series("CT") == "CT\\MR"
    assert add_series("MR") == "CT\\MR"
    with database.connection_context():
        study = Study.get(Study.study_uid == study_uid)
        assert (study.num_series, study.num_instances) == (3, 3)


def test_modalities_of_two_series_in_one_transaction(node: Node) -> None:
    """Both series of a study arriving in the same group commit are listed."""
    study_uid = generate_uid()
    records = [(instance_record(read_header(part10(make_dataset(study_uid=study_uid, modality=m))),
                                f"store/x/{m}.dcm", 100, "0" * 64, None), False) for m in ("MR", "CT")]
    with database.connection_context():
        with database.atomic():
            results = index_batch(records, node.catalogue.writer.cache)
        study = Study.get(Study.study_uid == study_uid)
    assert [r.outcome.value for r in results] == ["stored", "stored"]
    assert (study.modalities_in_study, study.num_series, study.num_instances) == ("CT\\MR", 2, 2)


def test_duplicate_keeps_first_copy_and_counts(node: Node, ingestor: Ingestor) -> None:
    """duplicate_policy = "ignore": a second copy (same bytes or not) changes nothing."""
    first = make_dataset(StudyDescription="FIRST")
    second = make_dataset(sop_uid=first.SOPInstanceUID, study_uid=first.StudyInstanceUID,
                          series_uid=first.SeriesInstanceUID, StudyDescription="SECOND")
    assert ingest_all(ingestor, [first, first, second]) == ["stored", "duplicate", "duplicate"]
    with database.connection_context():
        assert Instance.select().count() == 1
        row = Instance.get()
        counts = [(m.num_instances) for m in (Series.get(), Study.get(), Patient.get())]
    assert counts == [1, 1, 1]
    assert node.storage.absolute(row.path).read_bytes() == part10(first)
    assert [p.relative_to(node.storage.root).as_posix() for p in node.storage.iter_files()] == [row.path]


def test_overwrite_moves_counts_to_the_new_series(make_settings, database_url: str) -> None:
    """duplicate_policy = "overwrite" with a copy filed under another series: the old
    series loses the instance, the new one gains it, totals stay right."""
    node = Node(make_settings(database={"url": database_url}, dicom={"duplicate_policy": "overwrite"}))
    ingestor = node.open_store()
    try:
        first = make_dataset(modality="CT")
        moved = make_dataset(sop_uid=first.SOPInstanceUID, study_uid=first.StudyInstanceUID, modality="MR")
        assert ingest_all(ingestor, [first, moved]) == ["stored", "replaced"]
        with database.connection_context():
            series = {s.series_uid: s.num_instances for s in Series.select()}
            study = Study.get()
            patient = Patient.get()
            row = Instance.get()
        assert series == {first.SeriesInstanceUID: 0, moved.SeriesInstanceUID: 1}
        assert (study.num_instances, patient.num_instances) == (1, 1)
        assert row.series.series_uid == moved.SeriesInstanceUID
        assert node.storage.absolute(row.path).read_bytes() == part10(moved)
        assert len(list(node.storage.iter_files())) == 1
    finally:
        node.stop()


@pytest.mark.parametrize("charset,name,encoded", [
    ("ISO_IR 100", "MÜLLER^JÜRGEN", "MÜLLER^JÜRGEN".encode("latin-1")),
    ("ISO_IR 192", "MÜLLER^JÜRGEN", "MÜLLER^JÜRGEN".encode("utf-8")),
    ("ISO_IR 192", "山田^太郎", "山田^太郎".encode("utf-8")),
    ("ISO_IR 144", "Иванов^Иван", "Иванов^Иван".encode("iso8859-5")),
], ids=["latin1", "utf8-latin", "utf8-cjk", "cyrillic"])
def test_person_names_are_decoded_with_the_character_set(node: Node, ingestor: Ingestor, charset: str,
                                                        name: str, encoded: bytes) -> None:
    """The file keeps the sender's encoding; the catalogue holds the decoded text, and its
    case-folded form for case-insensitive PN matching (PS3.4 C.2.2.2.1)."""
    ds = make_dataset(patient_name=name, charset=charset, ReferringPhysicianName=name)
    ingestor.ingest_part10(part10(ds))
    with database.connection_context():
        patient = Patient.get()
        study = Study.get()
        row = Instance.get()
    assert patient.patient_name == name
    assert patient.patient_name_folded == fold_name(name) == name.casefold()
    assert study.referring_physician_name == name
    assert encoded in node.storage.absolute(row.path).read_bytes()


@pytest.mark.parametrize("how", ["part10", "received"])
def test_specific_character_set_is_recorded(ingestor: Ingestor, how: str) -> None:
    """Imported files and C-STORE datasets record their character set alike."""
    ds = make_dataset(patient_name="MÜLLER^JÜRGEN", charset="ISO_IR 100")
    data = part10(ds)
    if how == "part10":
        ingestor.ingest_part10(data)
    else:
        ingestor.ingest_received(dataset_bytes(data), ds.file_meta.TransferSyntaxUID,
                                 ds.SOPClassUID, ds.SOPInstanceUID)
    with database.connection_context():
        charsets = (Instance.get().specific_character_set, Study.get().specific_character_set,
                    Patient.get().specific_character_set)
    assert charsets == ("ISO_IR 100",) * 3


def test_reindex_rebuilds_rows_and_counts(node: Node, ingestor: Ingestor) -> None:
    """reindex on both back ends: same rows, same counts, files still verified."""
    datasets, _ = hierarchy()
    ingest_all(ingestor, datasets)

    def snapshot() -> tuple:
        with database.connection_context():
            return (
                sorted(Instance.select(Instance.sop_instance_uid, Instance.path, Instance.sha256,
                                       Instance.size, Instance.pixel_offset).tuples()),
                sorted(Study.select(Study.study_uid, Study.num_series, Study.num_instances,
                                    Study.modalities_in_study).tuples()),
                sorted(Patient.select(Patient.patient_id, Patient.num_studies, Patient.num_series,
                                      Patient.num_instances).tuples()),
            )

    before = snapshot()
    with database.connection_context():
        report = reindex(node.storage, node.catalogue.writer)
        verified = verify_files(node.storage)
    assert (report.indexed, report.duplicates, report.unreadable) == (8, [], [])
    assert snapshot() == before
    assert (verified.checked, verified.ok) == (8, True)
