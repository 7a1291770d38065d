"""C-FIND SCP: DCMTK findscu (-P, -S) end to end, plus pynetdicom for the status corner cases."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from node.runtime import Node
from tests.helpers import dcmtk_env, make_dataset

STUDY_A, STUDY_B, STUDY_C = ("1.2.826.0.1.3680043.10.1583.7.1", "1.2.826.0.1.3680043.10.1583.7.2",
                             "1.2.826.0.1.3680043.10.1583.7.3")


def _store(node: Node, **kwargs) -> None:
    buffer = io.BytesIO()
    make_dataset(**kwargs).save_as(buffer, enforce_file_format=True)
    node.ingestor.ingest_part10(buffer.getvalue())


def _load(node: Node) -> Node:
    _store(node, patient_id="P1", patient_name="MÜLLER^JÜRGEN", charset="ISO_IR 100",
           study_uid=STUDY_A, study_date="20210115", modality="CT")
    _store(node, patient_id="P1", patient_name="MÜLLER^JÜRGEN", charset="ISO_IR 100",
           study_uid=STUDY_A, study_date="20210115", modality="MR", series_number=2)
    _store(node, patient_id="P2", patient_name="DOE^JOHN", study_uid=STUDY_B,
           study_date="20210201", modality="MR")
    _store(node, patient_id="P3", patient_name="ROE^JANE", study_uid=STUDY_C,
           study_date="20201231", modality="CT")
    return node


@pytest.fixture(params=[True, False], ids=["fast-path", "stock-pynetdicom"])
def loaded_node(make_settings, request) -> Iterator[Node]:
    """The same answers must come back with and without scp.fastpath / direct encoding."""
    node = Node(make_settings(), fast_path=request.param).start()
    try:
        yield _load(node)
    finally:
        node.stop()


def findscu(node: Node, tmp_path: Path, model: str, *keys: str, extra: tuple[str, ...] = (),
            query_file: Path | None = None) -> tuple[list[Dataset], str]:
    """Run findscu, return the extracted responses and its log output."""
    out = tmp_path / f"responses-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    args = ["findscu", "-v", model, "-aec", "PACSNODE", "-to", "5", "-ta", "5", "-td", "5", "-X",
            "-od", str(out), *extra]
    for key in keys:
        args += ["-k", key]
    args += ["127.0.0.1", str(node.dimse_address[1])]
    if query_file is not None:
        args.append(str(query_file))
    result = subprocess.run(args, capture_output=True, encoding="utf-8", errors="replace",
                            env=dcmtk_env(), timeout=30)
    responses = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return responses, result.stdout + result.stderr


@pytest.mark.dcmtk
def test_study_root_non_ascii_wildcard_and_counts(loaded_node, tmp_path):
    found, _ = findscu(loaded_node, tmp_path, "-S", "QueryRetrieveLevel=STUDY",
                       "SpecificCharacterSet=ISO_IR 192", "PatientName=müller*",
                       "StudyInstanceUID", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
                       "AccessionNumber", "PatientComments")
    assert len(found) == 1
    answer = found[0]
    assert str(answer.PatientName) == "MÜLLER^JÜRGEN"
    assert answer.StudyInstanceUID == STUDY_A
    assert list(answer.ModalitiesInStudy) == ["CT", "MR"]
    assert answer.NumberOfStudyRelatedInstances == 2
    assert answer.AccessionNumber == "ACC1"
    assert "PatientComments" in answer and not answer.PatientComments  # unknown: present, empty
    assert answer.RetrieveAETitle == "PACSNODE"
    assert answer.QueryRetrieveLevel == "STUDY"
    assert "StudyDate" not in answer  # only what was asked


@pytest.mark.dcmtk
def test_query_in_latin1_is_decoded_with_its_character_set(loaded_node, tmp_path):
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 100"
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = "MÜLLER*"
    query.StudyInstanceUID = ""
    path = tmp_path / "query.dcm"
    query.save_as(path, implicit_vr=False, little_endian=True)
    assert b"M\xdcLLER*" in path.read_bytes()  # really sent as ISO 8859-1
    found, _ = findscu(loaded_node, tmp_path, "-S", query_file=path)
    assert [a.StudyInstanceUID for a in found] == [STUDY_A]
    assert found[0].SpecificCharacterSet == "ISO_IR 100"
    assert str(found[0].PatientName) == "MÜLLER^JÜRGEN"


@pytest.mark.dcmtk
def test_patient_root_levels(loaded_node, tmp_path):
    patients, _ = findscu(loaded_node, tmp_path, "-P", "QueryRetrieveLevel=PATIENT", "PatientID=P1",
                          "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries")
    assert [(p.PatientID, p.NumberOfPatientRelatedStudies, p.NumberOfPatientRelatedSeries)
            for p in patients] == [("P1", 1, 2)]
    series, _ = findscu(loaded_node, tmp_path, "-P", "QueryRetrieveLevel=SERIES", "PatientID=P1",
                        f"StudyInstanceUID={STUDY_A}", "SeriesInstanceUID", "Modality=MR")
    assert [s.Modality for s in series] == ["MR"]


@pytest.mark.dcmtk
def test_ranges_lists_and_modalities(loaded_node, tmp_path):
    def uids(*keys: str) -> list[str]:
        found, _ = findscu(loaded_node, tmp_path, "-S", "QueryRetrieveLevel=STUDY", *keys)
        return sorted(a.StudyInstanceUID for a in found)

    assert uids("StudyDate=20210101-") == [STUDY_A, STUDY_B]
    assert uids("StudyDate=-20210115") == [STUDY_A, STUDY_C]
    assert uids(f"StudyInstanceUID={STUDY_B}\\{STUDY_C}") == [STUDY_B, STUDY_C]
    assert uids("ModalitiesInStudy=MR") == [STUDY_A, STUDY_B]
    assert uids("PatientName=DOE*", "StudyDate=20210101-20210131") == []


@pytest.mark.dcmtk
@pytest.mark.parametrize("keys", [
    ("QueryRetrieveLevel=SERIES", "SeriesInstanceUID"),  # no StudyInstanceUID above it
    ("QueryRetrieveLevel=FRAME", "StudyInstanceUID"),
    ("QueryRetrieveLevel=STUDY", "StudyDate=20210231-2021"),
])
def test_bad_identifiers_fail_and_node_keeps_serving(loaded_node, tmp_path, keys):
    found, output = findscu(loaded_node, tmp_path, "-S", *keys)
    assert found == []
    assert "Error: DataSetDoesNotMatchSOPClass" in output, output  # 0xA900
    again, _ = findscu(loaded_node, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID")
    assert len(again) == 3


@pytest.mark.dcmtk
def test_cancel_stops_the_stream(loaded_node, tmp_path, monkeypatch):
    import scp.find

    for i in range(40):
        _store(loaded_node, patient_id=f"C{i}", study_date="20200101")
    def slowed(answer):
        def slow_answer(*args):  # 40 answers take 2 s: the cancel arrives long before the end
            time.sleep(0.05)
            return answer(*args)
        return slow_answer

    monkeypatch.setattr(scp.find, "answer_bytes", slowed(scp.find.answer_bytes))
    monkeypatch.setattr(scp.find, "answer_dataset", slowed(scp.find.answer_dataset))
    found, output = findscu(loaded_node, tmp_path, "-S", "QueryRetrieveLevel=STUDY",
                            "StudyInstanceUID", extra=("--cancel", "1"))
    assert 1 <= len(found) < 43
    assert "Received Final Find Response (Cancel: MatchingTerminatedDueToCancelRequest)" in output, output


def _find(node: Node, identifier: Dataset, calling: str = "TESTSCU",
          model=StudyRootQueryRetrieveInformationModelFind) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", node.dimse_address[1], ae_title="PACSNODE")
    assert assoc.is_established
    try:
        return [(status.Status, ds) for status, ds in assoc.send_c_find(identifier, model)]
    finally:
        assoc.release()


def _study_query(**keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for key, value in keys.items():
        setattr(ds, key, value)
    return ds


def test_result_cap_ends_with_out_of_resources(make_settings):
    node = Node(make_settings(dicom={"max_find_results": 2})).start()
    try:
        _load(node)
        responses = _find(node, _study_query())
    finally:
        node.stop()
    assert [s for s, _ in responses] == [0xFF00, 0xFF00, 0xA700]


def test_known_caller_requirement(make_settings):
    settings = make_settings(dicom={"query_requires_known_caller": True},
                             remotes={"KNOWNAE": {"host": "127.0.0.1", "port": 104}})
    node = Node(settings).start()
    try:
        _load(node)
        assert [s for s, _ in _find(node, _study_query(), calling="STRANGER")] == [0x0124]
        assert [s for s, _ in _find(node, _study_query(), calling="KNOWNAE")] == [0xFF00] * 3 + [0]
    finally:
        node.stop()


def test_unsupported_optional_key_matching_is_flagged_and_sequences_unsupported(loaded_node):
    responses = _find(loaded_node, _study_query(StudyComments="anything", PatientID="P2"))
    assert [s for s, _ in responses] == [0xFF01, 0x0000]
    sequence_match = _study_query()
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    sequence_match.ReferencedStudySequence = [item]
    assert [s for s, _ in _find(loaded_node, sequence_match)] == [0xC000]
    sequence_return = _study_query(PatientID="P2")
    sequence_return.ReferencedStudySequence = []
    (status, answer), (final, _) = _find(loaded_node, sequence_return)
    assert (status, final) == (0xFF00, 0) and answer.ReferencedStudySequence == []


def test_unsupported_information_model_is_refused_at_negotiation(loaded_node):
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", loaded_node.dimse_address[1], ae_title="PACSNODE")
    try:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        assert accepted == {PatientRootQueryRetrieveInformationModelFind}
    finally:
        assoc.release()
