"""Query scenario: C-FIND with DCMTK findscu against the node and Orthanc holding the same
5,000 studies / ~10,000 small instances.

Each peer is started on an empty store, loaded with several storescu at once (the load is
timed and reported in a note, not a row), counted, queried, and stopped before the other
starts. Every query is timed as wall clock around the findscu process (process start
included), median of ``RUNS``; findscu runs with ``-v -sr`` so it reports each response on
one line without dumping it (findscu's default dump of 5,000 answers costs the client ~0.6 s,
which is why Orthanc's all-studies figure here is ~0.5 s rather than the ~1.0 s measured with
a plain findscu), and each run's answer count is checked against what the generated data holds. A peer that answers a different number of matches than the data (or
than the other peer) fails its row: the measurement is prefixed FAILED and a note says by how
much and which unique keys differ. The all-studies answers are also compared field by field
(names, dates, modalities, counts) with the generated data, once per peer, untimed.

Orthanc runs with its defaults for finds (StorageAccessOnFind "Always"), C-FIND allowed from
any caller and no result limits.
"""

from __future__ import annotations

import fnmatch
import re
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pydicom import dcmread

from bench.datagen import QUERY_5000, QueryData, ensure_query_data
from bench.harness import (BenchError, Peer, dcmtk_env, expect_counts, log_tail, run_storescu,
                           start_node, start_orthanc, warm_page_cache)
from bench.scenario import Row, RunContext, Scenario

RUNS = 5
CALLING_AE = "BENCHFIND"
ORTHANC_FIND_CONFIG = {"DicomAlwaysAllowFind": True, "LimitFindResults": 0, "LimitFindInstances": 0}
STUDY_KEYS = ["StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "AccessionNumber",
              "StudyDescription"]
ALL_STUDIES_KEYS = ["StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "ModalitiesInStudy",
                    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]
NAME_WILDCARD = "JOHNS*"  # matches ASCII names only (JOHNSON, JOHNSTON, in any case)
DATE_RANGE = ("20210301", "20210331")
MODALITY = "MR"

_RESPONSE = re.compile(r"^I: Received Find Response \d+ \((.*)\)\s*$", re.M)
_FINAL = re.compile(r"^I: Received Final Find Response \((.*)\)\s*$", re.M)


@dataclass(frozen=True)
class FindQuery:
    """One findscu query: ``keys`` as ``-k`` arguments (``Key`` returns, ``Key=value`` matches);
    ``expected`` is the set of unique-key values the data says must come back."""

    label: str
    level: str
    keys: tuple[str, ...]
    unique_key: str
    expected: frozenset[str]

    def args(self) -> list[str]:
        return ["-k", f"QueryRetrieveLevel={self.level}",
                *[arg for key in self.keys for arg in ("-k", key)]]


def build_queries(data: QueryData) -> list[FindQuery]:
    """The six queries of the issue, with what each must answer according to the index."""
    studies = data.studies
    per_patient: dict[str, int] = {}
    for s in studies:
        per_patient[s["patient_id"]] = per_patient.get(s["patient_id"], 0) + 1
    patient_id = min(per_patient, key=lambda pid: (-per_patient[pid], pid))  # most studies
    low, high = DATE_RANGE

    def uids(match: Callable[[dict], bool]) -> frozenset[str]:
        return frozenset(s["uid"] for s in studies if match(s))

    big = studies[0]
    assert big["uid"] == data.big_study_uid
    return [
        FindQuery(f"C-FIND all {len(studies):,} studies, counts+modalities", "STUDY",
                  tuple(ALL_STUDIES_KEYS), "StudyInstanceUID", uids(lambda s: True)),
        FindQuery(f"C-FIND PatientName={NAME_WILDCARD}", "STUDY",
                  tuple(_with(STUDY_KEYS, "PatientName", NAME_WILDCARD)), "StudyInstanceUID",
                  uids(lambda s: fnmatch.fnmatchcase(s["patient_name"].upper(), NAME_WILDCARD))),
        FindQuery(f"C-FIND StudyDate={low}-{high}", "STUDY",
                  tuple(_with(STUDY_KEYS, "StudyDate", f"{low}-{high}")), "StudyInstanceUID",
                  uids(lambda s: low <= s["date"] <= high)),
        FindQuery("C-FIND PatientID exact", "STUDY",
                  tuple(_with(STUDY_KEYS, "PatientID", patient_id)), "StudyInstanceUID",
                  uids(lambda s: s["patient_id"] == patient_id)),
        FindQuery(f"C-FIND ModalitiesInStudy={MODALITY}", "STUDY",
                  (*STUDY_KEYS, f"ModalitiesInStudy={MODALITY}"), "StudyInstanceUID",
                  uids(lambda s: MODALITY in s["modalities"])),
        FindQuery(f"C-FIND IMAGE level, {big['instances']}-instance series", "IMAGE",
                  (f"StudyInstanceUID={data.big_study_uid}",
                   f"SeriesInstanceUID={data.big_series_uid}", "SOPInstanceUID", "InstanceNumber"),
                  "InstanceNumber", frozenset(str(n) for n in range(1, big["instances"] + 1))),
    ]


def _with(keys: list[str], keyword: str, value: str) -> list[str]:
    return [f"{k}={value}" if k == keyword else k for k in keys]


def findscu_cmd(peer: Peer, query: FindQuery, *extra: str) -> list[str]:
    return ["findscu", *extra, "-S", "-aet", CALLING_AE, "-aec", peer.ae_title, "-ta", "30",
            "-td", "300", *query.args(), peer.host, str(peer.port)]


def run_find(peer: Peer, query: FindQuery) -> tuple[float, int]:
    """One timed findscu; returns (seconds, pending responses). Fails unless it ends Success."""
    cmd = findscu_cmd(peer, query, "-v", "-sr")
    start = time.perf_counter()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, env=dcmtk_env(), timeout=600)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"findscu to {peer.label} took over 600 s: {query.label}") from exc
    elapsed = time.perf_counter() - start
    final = _FINAL.findall(result.stderr)
    problems = [line for line in result.stderr.splitlines() if line.startswith(("E:", "F:"))]
    if result.returncode != 0 or problems or final != ["Success"]:
        raise BenchError(f"findscu to {peer.label} failed ({result.returncode}, final {final}): "
                         f"{query.label}\n" + "\n".join((problems or result.stderr.splitlines())[-15:])
                         + f"\n--- {peer.label} log ---\n{log_tail(peer.log_path)}")
    return elapsed, len(_RESPONSE.findall(result.stderr))


def extract_answers(peer: Peer, query: FindQuery) -> list:
    """The answers as datasets (findscu -X into a temp folder), for checks outside the timing."""
    with tempfile.TemporaryDirectory(prefix="bench-find-") as tmp:
        result = subprocess.run(findscu_cmd(peer, query, "-X", "-od", tmp), capture_output=True,
                                text=True, env=dcmtk_env(), timeout=600)
        if result.returncode != 0:
            raise BenchError(f"findscu -X to {peer.label} failed ({result.returncode}): "
                             f"{query.label}\n{result.stderr[-2000:]}")
        return [dcmread(path) for path in sorted(Path(tmp).glob("rsp*.dcm"))]


def _values(answers: list, keyword: str) -> list[str]:
    return [str(ds.get(keyword, "") or "").strip() for ds in answers]


def answer_difference(peer: Peer, query: FindQuery) -> str:
    """Which unique-key values came back that should not have, and which are missing."""
    got = _values(extract_answers(peer, query), query.unique_key)
    extra = sorted(set(got) - query.expected)
    missing = sorted(query.expected - set(got))
    dupes = len(got) - len(set(got))
    parts = [f"{len(got)} answers, expected {len(query.expected)}"]
    if missing:
        parts.append(f"missing {len(missing)} {query.unique_key} e.g. {missing[:3]}")
    if extra:
        parts.append(f"unexpected {len(extra)} e.g. {extra[:3]}")
    if dupes:
        parts.append(f"{dupes} duplicate answers")
    return "; ".join(parts)


def check_all_studies(peer: Peer, query: FindQuery, data: QueryData) -> list[str]:
    """Field-by-field check of the all-studies answers against the generated data."""
    by_uid = {s["uid"]: s for s in data.studies}
    wrong: dict[str, list[str]] = {}
    answers = extract_answers(peer, query)
    if len(answers) != len(query.expected):
        wrong["answers"] = [f"{len(answers)} extracted, expected {len(query.expected)}"]
    for ds in answers:
        uid = str(ds.get("StudyInstanceUID", ""))
        study = by_uid.get(uid)
        if study is None:
            continue  # counted by answer_difference
        got = {"PatientName": str(ds.get("PatientName", "")), "PatientID": str(ds.get("PatientID", "")),
               "StudyDate": str(ds.get("StudyDate", "")),
               "ModalitiesInStudy": sorted(_multi(ds.get("ModalitiesInStudy"))),
               "NumberOfStudyRelatedSeries": str(ds.get("NumberOfStudyRelatedSeries", "")),
               "NumberOfStudyRelatedInstances": str(ds.get("NumberOfStudyRelatedInstances", ""))}
        want = {"PatientName": study["patient_name"], "PatientID": study["patient_id"],
                "StudyDate": study["date"], "ModalitiesInStudy": study["modalities"],
                "NumberOfStudyRelatedSeries": str(study["series"]),
                "NumberOfStudyRelatedInstances": str(study["instances"])}
        for key in want:
            if got[key] != want[key]:
                wrong.setdefault(key, []).append(f"{uid[-12:]}: {got[key]!r} != {want[key]!r}")
    return [f"{query.label}: {peer.label} answered {key} wrong for {len(items)} studies, e.g. "
            + "; ".join(items[:3]) for key, items in wrong.items()]


def _multi(value) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v for v in value.split("\\") if v]
    return [str(v) for v in value]


@dataclass
class PeerResult:
    load_seconds: float
    seconds: dict[str, float]  # label -> median
    answers: dict[str, int]  # label -> answers (the same in every run, else noted)
    problems: list[str]


def load(peer: Peer, data: QueryData) -> float:
    """All shards at once, one storescu each; wall clock until the last one ends."""
    seconds: list[float] = []
    errors: list[BaseException] = []

    def send(shard: Path, n: int) -> None:
        try:
            seconds.append(run_storescu(peer, shard, calling_ae=f"BENCHLOAD{n}"))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(shard, n)) for n, shard in enumerate(data.shards)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    expect_counts(peer, patients=data.patients, studies=len(data.studies), series=data.series,
                  instances=data.instances)
    return elapsed


def measure(peer: Peer, data: QueryData, queries: list[FindQuery], ctx: RunContext) -> PeerResult:
    load_seconds = load(peer, data)
    seconds: dict[str, float] = {}
    answers: dict[str, int] = {}
    problems: list[str] = []
    for query in queries:
        runs = [run_find(peer, query) for _ in range(RUNS)]
        seconds[query.label] = statistics.median(t for t, _ in runs)
        counts = sorted({n for _, n in runs})
        answers[query.label] = counts[0]
        if counts != [len(query.expected)]:
            problems.append(f"{query.label}: {peer.label} answered {counts} over {RUNS} runs; "
                            + answer_difference(peer, query))
    problems += check_all_studies(peer, queries[0], data)
    ctx.note_log_problems(peer)
    return PeerResult(load_seconds, seconds, answers, problems)


def query_rows(ctx: RunContext) -> list[Row]:
    data = ensure_query_data(QUERY_5000, ctx.work / "data")
    queries = build_queries(data)
    warm_page_cache(data.folder)
    results: dict[str, PeerResult] = {}
    for label in ctx.order(["node", "Orthanc"]):
        if label == "node":
            with start_node(ctx.folder / "node") as peer:
                results[label] = measure(peer, data, queries, ctx)
        else:
            with start_orthanc(ctx.folder / "orthanc", extra_config=ORTHANC_FIND_CONFIG) as peer:
                results[label] = measure(peer, data, queries, ctx)
    node, orthanc = results["node"], results["Orthanc"]
    run = f"query run {ctx.index + 1}"
    ctx.notes.append(
        f"{run}: loaded {data.instances:,} instances ({len(data.studies):,} studies, "
        f"{data.series:,} series, {data.patients:,} patients, {data.total_bytes / 1e6:.1f} MB) with "
        f"{len(data.shards)} storescu at once: node {node.load_seconds:.1f} s "
        f"({data.instances / node.load_seconds:,.0f}/s), Orthanc {orthanc.load_seconds:.1f} s "
        f"({data.instances / orthanc.load_seconds:,.0f}/s)")
    ctx.notes.append(f"{run}: answers per query (node/Orthanc): " + ", ".join(
        f"{q.label.removeprefix('C-FIND ')} {node.answers[q.label]}/{orthanc.answers[q.label]}"
        for q in queries))
    ctx.notes.extend(f"{run}: {problem}" for problem in node.problems + orthanc.problems)
    rows = []
    for query in queries:
        differ = node.answers[query.label] != orthanc.answers[query.label]
        wrong = any(p.startswith(query.label + ":") for p in node.problems + orthanc.problems)
        label = query.label
        if differ or wrong:
            label = f"FAILED {label} (answers node {node.answers[query.label]}, " \
                    f"Orthanc {orthanc.answers[query.label]}, data {len(query.expected)})"
        rows.append(Row(label, f"s, median of {RUNS}", node.seconds[query.label],
                        orthanc.seconds[query.label], higher_is_better=False))
    return rows


SCENARIOS = [
    Scenario("query", f"C-FIND with findscu over {QUERY_5000.studies:,} studies / ~10,000 small "
             "instances: all studies, name wildcard, date range, PatientID, ModalitiesInStudy, "
             "IMAGE level", query_rows),
]
