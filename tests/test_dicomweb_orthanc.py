"""Differential QIDO-RS (and WADO-RS metadata): the node and Orthanc with its DICOMweb plugin,
holding the same files.

Both peers receive the same generated studies with DCMTK storescu (five studies of four
patients, ISO_IR 100, ISO_IR 192 and ASCII names, several dates, times, modalities and series);
then each search is sent to both and they must answer the same studies, series or instances
(checked against what the generated data says, too), with the same values for every attribute
both of them return. Attributes only one of them adds are ignored, except for a core set per
level that both must return. Values that name the server itself (RetrieveURL's host,
RetrieveAETitle) and SpecificCharacterSet (Orthanc transcodes answers to its default encoding;
DICOM JSON is UTF-8 either way) are not compared. Each study's WADO-RS metadata must equal
Orthanc's element for element (bulk data: a URI below the instance on both).

Orthanc 1.10.1 with the Debian DICOMweb plugin 1.7 does not decode percent-escapes in query
values, so it finds nothing for a non-ASCII PatientName (sent raw, UTF-8 gets a 400; its REST
/tools/find matches it), nor for backslash-separated UID lists, and it ignores unknown keys and
malformed dates (the node answers 400): those searches are checked on the node against the
generated data only, or not at all. The matching characters ``* ? ^ ,`` are therefore sent
unescaped to both.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import httpx
import pytest
from pydicom.uid import generate_uid

from bench.harness import ORTHANC_BINARY, start_orthanc
from tests.helpers import (free_port, make_dataset, node_process, run_cli, run_storescu,
                           wait_until, write_config, write_dataset)

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
PASSWORD = "differential qido password"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ROOT = "/dicom-web"  # both peers' DICOMweb root

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not Path(ORTHANC_BINARY).exists(), reason="Orthanc is not installed"),
    pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(),
                       reason="Orthanc's DICOMweb plugin is not installed (Debian orthanc-dicomweb)"),
    pytest.mark.skipif(not shutil.which("storescu"), reason="DCMTK is not installed"),
]

# --- the generated data ----------------------------------------------------------------------


@dataclass
class Series:
    name: str  # "A1": study letter and series number
    modality: str
    description: str
    instances: int
    uid: str = field(default_factory=generate_uid)
    sop_uids: list[str] = field(default_factory=list)


@dataclass
class Study:
    letter: str
    patient_id: str
    patient_name: str
    charset: str | None
    date: str
    time: str
    description: str
    series: list[Series]
    uid: str = field(default_factory=generate_uid)


def planned_studies() -> list[Study]:
    """Five studies of four patients (the letters name them in the expected answers)."""
    muller = {"patient_id": "P1", "patient_name": "MÜLLER^JÜRGEN", "charset": "ISO_IR 100"}
    return [
        Study("A", **muller, date="20240102", time="081500", description="CT CHEST",
              series=[Series("A1", "CT", "AXIAL", 3), Series("A2", "CT", "CORONAL", 2)]),
        Study("B", **muller, date="20240301", time="143000", description="MR KNEE",
              series=[Series("B1", "MR", "T1 SAG", 2), Series("B2", "CT", "SCOUT", 1)]),
        Study("C", "P2", "DOE^JOHN", None, "20231231", "235959", "CT HEAD",
              [Series("C1", "CT", "AXIAL", 2)]),
        Study("D", "P3", "GARCÍA^JOSÉ", "ISO_IR 192", "20240615", "120000", "MR BRAIN",
              [Series("D1", "MR", "T2 AX", 1)]),
        Study("E", "P4", "DOE^JANE", None, "20240102", "090000", "MR BRAIN",
              [Series("E1", "MR", "T1 SAG", 2), Series("E3", "MR", "T2 AX", 1)]),
    ]


@dataclass
class Data:
    studies: dict[str, Study]
    series: dict[str, Series]
    files: list[Path]

    def study_uids(self, letters: str) -> set[str]:
        return {self.studies[letter].uid for letter in letters}

    def series_uids(self, *names: str) -> set[str]:
        return {self.series[name].uid for name in names}

    def sop_uids(self, *names: str, number: int | None = None) -> set[str]:
        """SOP Instance UIDs of the named series (``number``: only that InstanceNumber)."""
        return {uid for name in names for n, uid in enumerate(self.series[name].sop_uids, 1)
                if number in (None, n)}


def generate(folder: Path) -> Data:
    files: list[Path] = []
    series_by_name: dict[str, Series] = {}
    studies = planned_studies()
    for study in studies:
        for series in study.series:
            series_by_name[series.name] = series
            for number in range(1, series.instances + 1):
                ds = make_dataset(
                    patient_id=study.patient_id, patient_name=study.patient_name,
                    charset=study.charset, study_uid=study.uid, series_uid=series.uid,
                    modality=series.modality, series_number=int(series.name[1:]),
                    instance_number=number, study_date=study.date, StudyTime=study.time,
                    AccessionNumber=f"ACC-{study.letter}", StudyID=f"S{study.letter}",
                    StudyDescription=study.description, SeriesDescription=series.description,
                    PatientBirthDate=f"19{60 + ord(study.patient_id[1]) - ord('0')}0315")
                series.sop_uids.append(ds.SOPInstanceUID)
                files.append(write_dataset(ds, folder / f"{series.name}-{number}.dcm"))
    return Data({s.letter: s for s in studies}, series_by_name, files)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    return generate(tmp_path_factory.mktemp("qido-data"))


# --- the two peers ---------------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    client: httpx.Client

    def search(self, path: str, params: dict | None = None) -> list[dict]:
        if params:
            path += "?" + query_string(params)
        response = self.client.get(path, headers={"Accept": "application/dicom+json"})
        assert response.status_code in (200, 204), (self.name, path, params, response.status_code,
                                                     response.text[:500])
        return response.json() if response.status_code == 200 and response.content else []


def query_string(params: dict) -> str:
    """Parameters with the matching characters ``* ? ^ ,`` left as they are: Orthanc's plugin
    does not decode percent-escapes in query values (``DOE%2A`` finds nothing); other
    characters, non-ASCII ones included, are percent-encoded as UTF-8."""
    return "&".join(f"{key}={quote(str(value), safe='*?^,-')}" for key, value in params.items())


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, data: Data) -> Iterator[Peer]:
    config = {"Plugins": [str(DICOMWEB_PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": ROOT + "/", "EnableWado": False}}
    with start_orthanc(tmp_path_factory.mktemp("orthanc"), ae_title="ORTHANC", timeout=30,
                       extra_config=config) as peer:
        sent = run_storescu(peer.port, data.files)  # Orthanc does not check the called AE
        assert sent.returncode == 0, sent.stderr
        with httpx.Client(base_url=peer.base_url + ROOT, timeout=20) as client:
            yield Peer("Orthanc", client)


@pytest.fixture(scope="module")
def node(tmp_path_factory, data: Data) -> Iterator[Peer]:
    folder = tmp_path_factory.mktemp("node")
    dicom_port, web_port = free_port(), free_port()
    config = write_config(folder, port=dicom_port,
                          extra=f'[web]\nhost = "127.0.0.1"\nport = {web_port}\n')
    added = run_cli(config, "user", "add", "reader", "--role", "viewer", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    base = f"http://127.0.0.1:{web_port}"
    with node_process(config, dicom_port):
        sent = run_storescu(dicom_port, data.files)
        assert sent.returncode == 0, sent.stderr
        with httpx.Client(base_url=base, timeout=20) as client:
            assert wait_until(lambda: _healthy(client), timeout=20), "the node's HTTP API did not answer"
            token = client.post("/api/token/", json={"username": "reader", "password": PASSWORD})
            assert token.status_code == 200, token.text
            client.headers["Authorization"] = f"Bearer {token.json()['access']}"
            client.base_url = httpx.URL(base + ROOT)
            yield Peer("node", client)


def _healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


# --- comparing answers -----------------------------------------------------------------------

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
NOT_COMPARED = {"00080005", "00080054"}  # SpecificCharacterSet, RetrieveAETitle
RETRIEVE_URL = "00081190"
UNORDERED = {"00080061", "00080062"}  # ModalitiesInStudy, SOPClassesInStudy
# what both must answer, with a value, for every match (PS3.18 Table 10.6.3-3 to -5)
CORE = {
    "study": ["0020000D", "00100010", "00100020", "00100030", "00100040", "00080020", "00080030",
              "00080050", "00080061", "00080090", "00200010", "00201206", "00201208"],
    "series": ["0020000D", "0020000E", "00080060", "0008103E", "00200011", "00201209"],
    "instance": ["0020000D", "0020000E", "00080018", "00080016", "00200013"],
}
UNIQUE = {"study": STUDY_UID, "series": SERIES_UID, "instance": SOP_UID}


def by_uid(answers: list[dict], level: str, peer: str) -> dict[str, dict]:
    uids = [answer[UNIQUE[level]]["Value"][0] for answer in answers]
    assert len(uids) == len(set(uids)), f"{peer} answered duplicates: {uids}"
    return dict(zip(uids, answers))


def comparable(element: dict, tag: str) -> object:
    """An element's value in a form both peers' encodings can be compared in."""
    values = element.get("Value", [])
    if element.get("vr") == "PN":
        values = [v.get("Alphabetic", "") if isinstance(v, dict) else v for v in values]
    elif element.get("vr") in ("IS", "DS"):
        values = [float(v) for v in values]
    if tag == RETRIEVE_URL:  # the same resource below each peer's own root
        values = [v.split(ROOT, 1)[-1] for v in values]
    return sorted(values) if tag in UNORDERED else values


def differences(node: dict, orthanc: dict, level: str) -> list[str]:
    found = []
    for tag in CORE[level]:
        for name, answer in (("node", node), ("Orthanc", orthanc)):
            if not answer.get(tag, {}).get("Value"):
                found.append(f"{tag}: {name} gave no value")
    for tag in sorted((node.keys() & orthanc.keys()) - NOT_COMPARED):
        mine, theirs = node[tag], orthanc[tag]
        if mine.get("vr") != theirs.get("vr"):
            found.append(f"{tag}: vr {mine.get('vr')} != Orthanc's {theirs.get('vr')}")
        elif "Value" in mine and "Value" in theirs:
            a, b = comparable(mine, tag), comparable(theirs, tag)
            if a != b:
                found.append(f"{tag}: {a!r} != Orthanc's {b!r}")
    return found


def compare(node: Peer, orthanc: Peer, level: str, path: str, params: dict | None,
            expected: set[str]) -> dict[str, dict]:
    """Both peers answer ``expected`` (unique keys) with the same values; the node's answers."""
    mine = by_uid(node.search(path, params), level, "node")
    theirs = by_uid(orthanc.search(path, params), level, "Orthanc")
    assert set(theirs) == expected, f"Orthanc answered {len(theirs)}, expected {len(expected)}"
    assert set(mine) == expected, (f"node answered {sorted(mine)}, expected {sorted(expected)} "
                                   f"(Orthanc agrees with the data)")
    problems = {uid: differences(mine[uid], theirs[uid], level) for uid in expected}
    assert not any(problems.values()), {uid[-12:]: p for uid, p in problems.items() if p}
    return mine


# --- the searches ----------------------------------------------------------------------------

STUDY_SEARCHES = [  # (query parameters, the studies that match)
    ({}, "ABCDE"),
    ({"PatientName": "DOE*"}, "CE"),
    ({"PatientName": "doe*"}, "CE"),  # person names match case-insensitively
    ({"PatientName": "D?E^J*"}, "CE"),
    ({"PatientName": "*JOHN"}, "C"),
    ({"PatientID": "P1"}, "AB"),
    ({"00100020": "P2"}, "C"),  # a key by tag
    ({"StudyDate": "20240102"}, "AE"),
    ({"StudyDate": "20240101-20240331"}, "ABE"),
    ({"StudyDate": "-20231231"}, "C"),
    ({"StudyDate": "20240301-"}, "BD"),
    ({"StudyTime": "0800-1000"}, "AE"),
    ({"ModalitiesInStudy": "MR"}, "BDE"),
    ({"ModalitiesInStudy": "CT"}, "ABC"),
    ({"AccessionNumber": "ACC-B"}, "B"),
    ({"StudyDescription": "MR*"}, "BDE"),
    ({"PatientID": "P1", "StudyDate": "20240201-"}, "B"),
    ({"PatientBirthDate": "19610315"}, "AB"),
    ({"includefield": "StudyDescription"}, "ABCDE"),
    ({"includefield": "00081030,00200010"}, "ABCDE"),
]


@pytest.mark.parametrize("params,letters", STUDY_SEARCHES, ids=lambda v: str(v) if v else "all")
def test_study_search_agrees_with_orthanc(node, orthanc, data, params, letters):
    answers = compare(node, orthanc, "study", "/studies", params, data.study_uids(letters))
    if "includefield" in params:
        assert all(a["00081030"]["Value"] for a in answers.values())


def test_study_uid_list(node, orthanc, data):
    uids = data.study_uids("AC")
    compare(node, orthanc, "study", "/studies", {"StudyInstanceUID": ",".join(sorted(uids))}, uids)


def test_study_answers_carry_decoded_names_and_counts(node, orthanc, data):
    """ISO_IR 100 and ISO_IR 192 names come back as the same Unicode text from both, and the
    computed attributes (counts, ModalitiesInStudy) equal the generated data."""
    answers = compare(node, orthanc, "study", "/studies", None, data.study_uids("ABCDE"))
    for study in data.studies.values():
        answer = answers[study.uid]
        assert answer["00100010"]["Value"] == [{"Alphabetic": study.patient_name}]
        assert sorted(answer["00080061"]["Value"]) == sorted({s.modality for s in study.series})
        assert answer["00201206"]["Value"] == [len(study.series)]
        assert answer["00201208"]["Value"] == [sum(s.instances for s in study.series)]


def test_studies_page_through_the_same_set(node, orthanc, data):
    """limit/offset pages are disjoint and together the whole set, on both (their order is
    each peer's own)."""
    for peer in (node, orthanc):
        pages = [by_uid(peer.search("/studies", {"limit": 2, "offset": offset}), "study", peer.name)
                 for offset in (0, 2, 4)]
        assert [len(page) for page in pages] == [2, 2, 1], peer.name
        assert set().union(*pages) == data.study_uids("ABCDE"), peer.name


@pytest.mark.parametrize("name,uids", [("MÜLLER^JÜRGEN", "AB"), ("müller*", "AB"),
                                       ("M?LLER^J?RGEN", "AB"), ("GARCÍA*", "D")])
def test_non_ascii_name_search_on_the_node(node, data, name, uids):
    """Orthanc's DICOMweb plugin 1.7 finds nothing for these; the node matches as C-FIND does."""
    answers = by_uid(node.search("/studies", {"PatientName": name}), "study", "node")
    assert set(answers) == data.study_uids(uids)


SERIES_SEARCHES = [  # (path with {A}.. for study UIDs, parameters, the series that match)
    ("/series", {}, ["A1", "A2", "B1", "B2", "C1", "D1", "E1", "E3"]),
    ("/series", {"Modality": "MR"}, ["B1", "D1", "E1", "E3"]),
    ("/series", {"SeriesNumber": "2"}, ["A2", "B2"]),
    ("/series", {"SeriesDescription": "T1*"}, ["B1", "E1"]),
    ("/series", {"PatientName": "DOE*"}, ["C1", "E1", "E3"]),
    ("/series", {"StudyDate": "20240102"}, ["A1", "A2", "E1", "E3"]),
    ("/series", {"StudyInstanceUID": "{B}"}, ["B1", "B2"]),
    ("/studies/{A}/series", {}, ["A1", "A2"]),
    ("/studies/{E}/series", {"Modality": "MR", "SeriesNumber": "3"}, ["E3"]),
    ("/studies/{B}/series", {"Modality": "MR"}, ["B1"]),
]


def _fill(text: str, data: Data) -> str:
    return text.format(**{letter: study.uid for letter, study in data.studies.items()})


@pytest.mark.parametrize("path,params,names", SERIES_SEARCHES,
                         ids=[f"{p} {q}" for p, q, _ in SERIES_SEARCHES])
def test_series_search_agrees_with_orthanc(node, orthanc, data, path, params, names):
    params = {key: _fill(value, data) for key, value in params.items()}
    compare(node, orthanc, "series", _fill(path, data), params, data.series_uids(*names))


def test_series_uid_list(node, orthanc, data):
    uids = data.series_uids("A1", "D1")
    compare(node, orthanc, "series", "/series", {"SeriesInstanceUID": ",".join(sorted(uids))}, uids)


INSTANCE_SEARCHES = [  # (path, parameters, series whose instances match, InstanceNumber or None)
    ("/studies/{A}/series/{A1}/instances", {}, ["A1"], None),
    ("/studies/{B}/instances", {}, ["B1", "B2"], None),
    ("/studies/{A}/instances", {"SeriesNumber": "2"}, ["A2"], None),
    ("/instances", {"Modality": "MR"}, ["B1", "D1", "E1", "E3"], None),
    ("/instances", {"SOPClassUID": MR_IMAGE_STORAGE}, ["B1", "D1", "E1", "E3"], None),
    ("/instances", {"InstanceNumber": "2"}, ["A1", "A2", "B1", "C1", "E1"], 2),
    ("/instances", {"PatientID": "P4"}, ["E1", "E3"], None),
    ("/instances", {"StudyDate": "20231231"}, ["C1"], None),
]


@pytest.mark.parametrize("path,params,names,number", INSTANCE_SEARCHES,
                         ids=[f"{p} {q}" for p, q, _, _ in INSTANCE_SEARCHES])
def test_instance_search_agrees_with_orthanc(node, orthanc, data, path, params, names, number):
    series_uids = {name: series.uid for name, series in data.series.items()}
    path = _fill(path.replace("{A1}", series_uids["A1"]), data)
    compare(node, orthanc, "instance", path, params, data.sop_uids(*names, number=number))


def test_instance_uid_list(node, orthanc, data):
    uids = {data.series["A1"].sop_uids[0], data.series["E3"].sop_uids[0]}
    compare(node, orthanc, "instance", "/instances", {"SOPInstanceUID": ",".join(sorted(uids))}, uids)


# --- WADO-RS metadata ------------------------------------------------------------------------


def _bulk_marked(answer: dict) -> dict:
    """An instance's DICOM JSON with each BulkDataURI replaced by whether it points below the
    instance's own resource (each peer names bulk data its own way, on its own host), and the
    vr of bulk data left out (Orthanc omits it there)."""
    instance = (f"{ROOT}/studies/{answer[STUDY_UID]['Value'][0]}/series/"
                f"{answer[SERIES_UID]['Value'][0]}/instances/{answer[SOP_UID]['Value'][0]}/")
    return {tag: {"BulkDataURI below the instance": instance in element["BulkDataURI"]}
            if "BulkDataURI" in element else element for tag, element in answer.items()}


@pytest.mark.parametrize("letter", "ABCDE")
def test_study_metadata_equals_orthancs(node, orthanc, data, letter):
    """Every instance's DICOM JSON (PS3.18 F.2) from /studies/{study}/metadata is Orthanc's,
    element for element: the same tags, VRs and values, names decoded from their charsets."""
    path = f"/studies/{data.studies[letter].uid}/metadata"
    mine = {a[SOP_UID]["Value"][0]: _bulk_marked(a) for a in node.search(path)}
    theirs = {a[SOP_UID]["Value"][0]: _bulk_marked(a) for a in orthanc.search(path)}
    assert set(mine) == set(theirs) == {uid for s in data.studies[letter].series for uid in s.sop_uids}
    for uid in mine:
        assert mine[uid] == theirs[uid]
