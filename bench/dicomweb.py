"""DICOMweb scenarios: the node's /dicom-web against Orthanc's DICOMweb plugin (Debian
orthanc-dicomweb) on the same files, as a web viewer or a dicomweb client asks.

- ``dicomweb-ct``: a 2x250-slice 512x512 CT study. Series metadata (250 instances, DICOM JSON),
  the whole series retrieved as ``multipart/related; type="application/dicom"`` (streamed by
  the client, parts and bytes counted), and single frames (``frames/1`` of 250 instances in
  sequence, ``multipart/related; type="application/octet-stream"``).
- ``dicomweb-qido``: QIDO-RS ``/studies`` over the query scenario's 5,000 studies / ~10,000
  instances (the same generated data and load as ``bench/query.py``): all studies, a name
  wildcard, a date range, a PatientID, ModalitiesInStudy.

Each peer is loaded with storescu and measured alone (two cores: the other is not running).
Every answer is first checked once with httpx, decoded (instance count of the metadata, parts
and bytes of the retrieve, frame sizes, QIDO matches against the generated data; a wrong
answer fails the run), then timed with curl: one process, one keep-alive connection, one
warm-up request, curl's own per-transfer time (request to last byte, bodies discarded), so a
Python client's parsing is not in the figures. Each run also notes the floor under the series
retrieve rows: the same number of the study's files sent raw (sendfile(2), no framing, no
lookups) by a bare server in this process to the same curl, timed the same way. Timings are medians of ``RUNS`` (frames: the
mean over 250 instances, each instance's frame asked for once, as a viewer scrolling a series
does; the series retrieve before has read the files into the page cache for both peers). Requests say ``Accept-Encoding: gzip, deflate`` as browsers do:
Orthanc gzips single-frame answers then, the node does not compress pixels. Orthanc runs its plugin with its defaults (metadata read
from the stored files, "Full") and without find limits; the node with the per-user rate
limits lifted (a benchmark is one busy viewer).
"""

from __future__ import annotations

import fnmatch
import socket
import statistics
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx

from bench.datagen import QUERY_5000, DataSpec, ensure_data, ensure_query_data
from bench.harness import (BenchError, NodePeer, Peer, expect_counts, node_python, run_storescu,
                           start_node, start_orthanc, warm_page_cache)
from bench.query import DATE_RANGE, MODALITY, NAME_WILDCARD, ORTHANC_FIND_CONFIG, load
from bench.scenario import Row, RunContext, Scenario

CT_2X250 = DataSpec("ct-2x250-512x512", count=500, rows=512, columns=512, series=2)
RUNS = 5
FRAMES = 250
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ORTHANC_DICOMWEB = {"Plugins": [PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
NODE_WEB = {"rate_per_second": 1e6, "burst": 1_000_000, "max_in_flight_per_user": 64}
PASSWORD = "bench password 1234"
DICOM_JSON = {"Accept": "application/dicom+json"}
# as stored: neither peer transcodes (the files are explicit VR little endian)
PART10_PARTS = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
FRAME_PARTS = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
FRAME_BYTES = 512 * 512 * 2
ACCEPT_ENCODING = "gzip, deflate"  # what browsers and python-requests (dicomweb-client) send


@dataclass
class Service:
    """A peer's DICOMweb root as a client sees it."""

    label: str
    root: str
    headers: dict[str, str]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.root, timeout=300,
                            headers={"Accept-Encoding": ACCEPT_ENCODING, **self.headers})


def orthanc_service(peer: Peer) -> Service:
    return Service("Orthanc", peer.base_url + "/dicom-web", {})


def node_service(peer: NodePeer) -> Service:
    """A viewer user and its access token on the node."""
    result = subprocess.run([node_python(), "-m", "node", "--config", str(peer.config), "user", "add",
                             "bench", "--role", "viewer"], input=PASSWORD + "\n", text=True,
                            capture_output=True, cwd=peer.folder, timeout=60)
    if result.returncode != 0:
        raise BenchError(f"node user add failed: {result.stderr.strip()}")
    base = f"http://127.0.0.1:{peer.web_port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            answer = httpx.post(base + "/api/token/", json={"username": "bench", "password": PASSWORD},
                                timeout=30)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise BenchError("the node's HTTP API did not answer") from None
            time.sleep(0.05)
    if answer.status_code != 200:
        raise BenchError(f"node token: {answer.status_code} {answer.text[:200]}")
    return Service("node", base + "/dicom-web", {"Authorization": f"Bearer {answer.json()['access']}"})


def _get(client: httpx.Client, path: str, headers: dict[str, str], what: str) -> httpx.Response:
    response = client.get(path, headers=headers)
    if response.status_code != 200:
        raise BenchError(f"{what}: GET {path}: {response.status_code} {response.text[:300]}")
    return response


def curl_seconds(service: Service, urls: list[str], headers: dict[str, str]) -> list[float]:
    """Each URL's transfer time (request sent to last byte read, curl's ``time_total``), all
    on one keep-alive connection of one curl process: a lean C client, so the figures are the
    servers' and not a Python client's. Bodies are discarded as received (not decoded)."""
    args = ["curl", "-s", "-w", "%{http_code} %{time_total}\\n", *["-o", "/dev/null"] * len(urls)]
    for key, value in {"Accept-Encoding": ACCEPT_ENCODING, **service.headers, **headers}.items():
        args += ["-H", f"{key}: {value}"]
    args += [service.root + url for url in urls]  # each -o above takes one URL, in order
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise BenchError("curl is not installed (Debian package curl)") from None
    lines = result.stdout.split()
    codes, times = lines[0::2], [float(t) for t in lines[1::2]]
    if result.returncode != 0 or len(times) != len(urls) or set(codes) != {"200"}:
        raise BenchError(f"{service.label}: curl {urls[0]}... exited {result.returncode}, "
                         f"statuses {sorted(set(codes))}, {len(times)}/{len(urls)} answers")
    return times


def median_seconds(service: Service, url: str, headers: dict[str, str]) -> float:
    """One warm-up request, then the median of ``RUNS``."""
    return statistics.median(curl_seconds(service, [url] * (RUNS + 1), headers)[1:])


# --- the CT study: metadata, retrieve, frames ------------------------------------------------


def _study_layout(service: Service, client: httpx.Client) -> tuple[str, str, list[str]]:
    """The study, its first series (by SeriesNumber) and that series' instances, by QIDO."""
    studies = _get(client, "/studies", DICOM_JSON, service.label).json()
    study = studies[0]["0020000D"]["Value"][0]
    series = _get(client, f"/studies/{study}/series", DICOM_JSON, service.label).json()
    first = min(series, key=lambda s: s["00200011"]["Value"][0])["0020000E"]["Value"][0]
    found = _get(client, f"/studies/{study}/series/{first}/instances", DICOM_JSON, service.label).json()
    instances = [i["00080018"]["Value"][0] for i in found]
    if len(studies) != 1 or len(series) != 2 or len(instances) != CT_2X250.count // 2:
        raise BenchError(f"{service.label}: {len(studies)} studies, {len(series)} series, "
                         f"{len(instances)} instances in the first; expected 1, 2, 250")
    return study, first, instances


def _metadata(service: Service, client: httpx.Client, path: str, count: int) -> None:
    answer = _get(client, path, DICOM_JSON, service.label).json()
    if len(answer) != count or any("7FE00010" in a and "Value" in a["7FE00010"] for a in answer):
        raise BenchError(f"{service.label}: series metadata has {len(answer)} instances (expected "
                         f"{count}) or inline pixel data")


def _multipart(service: Service, client: httpx.Client, path: str, headers: dict[str, str],
               parts: int, least_bytes: int) -> None:
    """Stream a multipart answer, counting its parts by their delimiters and its bytes
    (decoded: Orthanc gzips multipart answers for a client that accepts gzip)."""
    with client.stream("GET", path, headers=headers) as response:
        if response.status_code != 200:
            raise BenchError(f"{service.label}: GET {path}: {response.status_code}")
        ctype = response.headers.get("content-type", "")
        boundary = next((p.split("=", 1)[1].strip().strip('"') for p in ctype.split(";")
                         if p.strip().lower().startswith("boundary=")), None)
        if not ctype.startswith("multipart/related") or not boundary:
            raise BenchError(f"{service.label}: GET {path}: Content-Type {ctype!r}")
        delimiter = b"--" + boundary.encode()
        seen, total, tail = 0, 0, b""
        for chunk in response.iter_bytes(1 << 20):
            total += len(chunk)
            window = tail + chunk
            seen += window.count(delimiter)
            tail = window[-(len(delimiter) - 1):]
    # n parts have n delimiters and one close delimiter (``--boundary--``)
    if seen - 1 != parts or total < least_bytes:
        raise BenchError(f"{service.label}: GET {path}: {seen - 1} parts, {total:,} bytes; "
                         f"expected {parts} parts, at least {least_bytes:,} bytes")


@dataclass
class CtFigures:
    metadata: float
    retrieve: float
    frame_ms: float


def measure_ct(service: Service) -> CtFigures:
    """Checks each answer once (decoded, with httpx), then times it with curl."""
    with service.client() as client:
        study, series, instances = _study_layout(service, client)
        base = f"/studies/{study}/series/{series}"
        frames = [f"{base}/instances/{uid}/frames/1" for uid in instances[:FRAMES]]
        _metadata(service, client, base + "/metadata", len(instances))
        _multipart(service, client, base, PART10_PARTS, len(instances), len(instances) * FRAME_BYTES)
        for url in (frames[0], frames[len(frames) // 2], frames[-1]):
            _multipart(service, client, url, FRAME_PARTS, 1, FRAME_BYTES)
    metadata = median_seconds(service, base + "/metadata", DICOM_JSON)
    retrieve = median_seconds(service, base, PART10_PARTS)
    frame_ms = statistics.mean(curl_seconds(service, frames[:1] + frames, FRAME_PARTS)[1:]) * 1000
    return CtFigures(metadata, retrieve, frame_ms)


@contextmanager
def bare_sendfile_server(paths: list[Path]) -> Iterator[str]:
    """An HTTP/1.1 server answering every request with ``paths``' bytes one after another by
    sendfile(2) and nothing else (no framing, no lookups): the floor of sending those bytes
    to curl on this machine, against which the peers' series retrieve is read."""
    sizes = [path.stat().st_size for path in paths]
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % sum(sizes))
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # shut down
                return
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's transports
                pending = b""
                while data := conn.recv(65536):
                    pending += data
                    while b"\r\n\r\n" in pending:
                        pending = pending.split(b"\r\n\r\n", 1)[1]
                        conn.sendall(head)
                        for path, size in zip(paths, sizes):
                            with open(path, "rb") as fh:
                                conn.sendfile(fh, 0, size)

    thread = threading.Thread(target=serve, name="bare-sendfile", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        listener.close()
        thread.join(timeout=10)


def floor_note(ctx: RunContext, data_folder: Path, count: int) -> None:
    """A note with the floor of the series retrieve: ``count`` of the study's files sent by
    ``bare_sendfile_server`` to the same curl, timed the same way."""
    paths = sorted(data_folder.glob("*.dcm"))[:count]
    with bare_sendfile_server(paths) as root:
        seconds = median_seconds(Service("bare sendfile", root, {}), "/", {})
    megabytes = sum(path.stat().st_size for path in paths) / 1e6
    ctx.notes.append(f"dicomweb-ct run {ctx.index + 1}: {count} of the study's files ({megabytes:.0f} MB) "
                     f"sent raw by a bare sendfile(2) loop to the same curl: {seconds * 1000:.1f} ms, "
                     f"median of {RUNS} (the floor under the series retrieve rows on this machine)")


def require_plugin() -> None:
    if not Path(PLUGIN).exists():
        raise BenchError(f"{PLUGIN} not found (Debian package orthanc-dicomweb)")


def ct_rows(ctx: RunContext) -> list[Row]:
    require_plugin()
    data = ensure_data(CT_2X250, ctx.work / "data")
    figures: dict[str, CtFigures] = {}
    for label in ctx.order(["node", "Orthanc"]):
        with (start_node(ctx.folder / label, web=NODE_WEB) if label == "node"
              else start_orthanc(ctx.folder / label, extra_config=ORTHANC_DICOMWEB)) as peer:
            warm_page_cache(data.folder)
            run_storescu(peer, data.folder)
            expect_counts(peer, studies=1, series=CT_2X250.series, instances=data.count)
            service = node_service(peer) if label == "node" else orthanc_service(peer)
            figures[label] = measure_ct(service)
            ctx.note_log_problems(peer)
    floor_note(ctx, data.folder, CT_2X250.count // CT_2X250.series)
    node, orthanc = figures["node"], figures["Orthanc"]
    return [
        Row("DICOMweb series metadata, 250 instances", f"ms, median of {RUNS}",
            node.metadata * 1000, orthanc.metadata * 1000, higher_is_better=False),
        Row("DICOMweb series retrieve, 250 x 512x512 (multipart)", f"ms, median of {RUNS}",
            node.retrieve * 1000, orthanc.retrieve * 1000, higher_is_better=False),
        Row(f"DICOMweb one frame, {FRAMES} in sequence", "ms/frame", node.frame_ms,
            orthanc.frame_ms, higher_is_better=False),
    ]


# --- QIDO over 5,000 studies -----------------------------------------------------------------


@dataclass(frozen=True)
class QidoSearch:
    label: str
    params: dict[str, str]
    expected: frozenset[str]  # StudyInstanceUIDs


def qido_searches(studies: tuple[dict, ...]) -> list[QidoSearch]:
    """The study-level searches of the query scenario, as QIDO-RS parameters."""
    per_patient: dict[str, int] = {}
    for s in studies:
        per_patient[s["patient_id"]] = per_patient.get(s["patient_id"], 0) + 1
    patient_id = min(per_patient, key=lambda pid: (-per_patient[pid], pid))
    low, high = DATE_RANGE

    def uids(match: Callable[[dict], bool]) -> frozenset[str]:
        return frozenset(s["uid"] for s in studies if match(s))

    counts = "ModalitiesInStudy,NumberOfStudyRelatedSeries,NumberOfStudyRelatedInstances"
    return [
        QidoSearch(f"QIDO all {len(studies):,} studies, counts+modalities",
                   {"includefield": counts}, uids(lambda s: True)),
        QidoSearch(f"QIDO PatientName={NAME_WILDCARD}", {"PatientName": NAME_WILDCARD},
                   uids(lambda s: fnmatch.fnmatchcase(s["patient_name"].upper(), NAME_WILDCARD))),
        QidoSearch(f"QIDO StudyDate={low}-{high}", {"StudyDate": f"{low}-{high}"},
                   uids(lambda s: low <= s["date"] <= high)),
        QidoSearch("QIDO PatientID exact", {"PatientID": patient_id},
                   uids(lambda s: s["patient_id"] == patient_id)),
        QidoSearch(f"QIDO ModalitiesInStudy={MODALITY}", {"ModalitiesInStudy": MODALITY},
                   uids(lambda s: MODALITY in s["modalities"])),
    ]


def _query(params: dict[str, str]) -> str:
    """Query text with ``* , -`` as they are (Orthanc's plugin does not decode %2A)."""
    return "/studies?" + "&".join(f"{k}={v}" for k, v in params.items())


def measure_qido(service: Service, searches: list[QidoSearch]) -> dict[str, float]:
    """Checks each search's matches once (httpx), then times it with curl."""
    with service.client() as client:
        for search in searches:
            found = {a["0020000D"]["Value"][0]
                     for a in _get(client, _query(search.params), DICOM_JSON, service.label).json()}
            if found != search.expected:
                raise BenchError(f"{service.label}: {search.label}: {len(found)} studies, expected "
                                 f"{len(search.expected)} ({len(found - search.expected)} unexpected)")
    return {s.label: median_seconds(service, _query(s.params), DICOM_JSON) for s in searches}


def qido_rows(ctx: RunContext) -> list[Row]:
    require_plugin()
    data = ensure_query_data(QUERY_5000, ctx.work / "data")
    searches = qido_searches(data.studies)
    warm_page_cache(data.folder)
    figures: dict[str, dict[str, float]] = {}
    for label in ctx.order(["node", "Orthanc"]):
        with (start_node(ctx.folder / label, web=NODE_WEB) if label == "node"
              else start_orthanc(ctx.folder / label,
                                 extra_config=ORTHANC_FIND_CONFIG | ORTHANC_DICOMWEB)) as peer:
            load(peer, data)
            service = node_service(peer) if label == "node" else orthanc_service(peer)
            figures[label] = measure_qido(service, searches)
            ctx.note_log_problems(peer)
    ctx.notes.append(f"dicomweb-qido run {ctx.index + 1}: matches per search (both peers, checked "
                     "against the data): " + ", ".join(f"{s.label.removeprefix('QIDO ')} "
                                                       f"{len(s.expected)}" for s in searches))
    return [Row(s.label, f"ms, median of {RUNS}", figures["node"][s.label] * 1000,
                figures["Orthanc"][s.label] * 1000, higher_is_better=False) for s in searches]


SCENARIOS = [
    Scenario("dicomweb-ct", "DICOMweb on a 2x250-slice CT study: series metadata, series "
             "retrieve (multipart), single frames", ct_rows),
    Scenario("dicomweb-qido", f"QIDO-RS over {QUERY_5000.studies:,} studies: all, name wildcard, "
             "date range, PatientID, ModalitiesInStudy", qido_rows),
]
