"""HTTP scenarios: what a web viewer asks of each peer, over keep-alive connections.

The node's `/api/pacs/` routes against Orthanc's REST equivalents on the same files: a raw
frame (`/instances/{id}/frames/0/raw`), a rendered PNG (`/instances/{id}/preview`), and the
study's series list with one picture per series (Orthanc has no thumbnail route: its
`/preview` of the middle instance is the nearest). Each peer is loaded with storescu, then
measured alone (two cores: the other peer is not running).
"""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx

from bench.datagen import CT_500, DataSpec, ensure_data
from bench.harness import (BenchError, NodePeer, OrthancPeer, Peer, expect_counts, node_python,
                           run_storescu, start_node, start_orthanc, warm_page_cache)
from bench.scenario import Row, RunContext, Scenario

SERIES_20 = DataSpec("ct-20-series-512x512", count=200, rows=512, columns=512, series=20)
FRAMES = 250
CLIENTS = 5
RSS_REQUESTS = 10_000
PASSWORD = "bench password 1234"
# the per-user limits protect a shared node from one viewer; a benchmark is that one viewer
UNLIMITED = {"rate_per_second": 1e6, "burst": 1_000_000, "max_in_flight_per_user": 64}


@dataclass
class HttpTarget:
    """One peer as a viewer sees it: a base URL, auth headers, and what to ask for."""

    label: str
    base: str
    headers: dict[str, str]
    raw_frame: Callable[[str], str]  # instance id -> URL path of its first frame, as stored
    rendered: Callable[[str], str]  # instance id -> URL path of a PNG of it
    instances: list[str]  # instance ids of the series, in order

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=self.headers, timeout=60)


def _node_target(peer: NodePeer) -> HttpTarget:
    web_port = peer.web_port
    result = subprocess.run([node_python(), "-m", "node", "--config", str(peer.config), "user", "add",
                             "bench", "--role", "viewer"], input=PASSWORD + "\n", text=True,
                            capture_output=True, cwd=peer.folder, timeout=60)
    if result.returncode != 0:
        raise BenchError(f"node user add failed: {result.stderr.strip()}")
    base = f"http://127.0.0.1:{web_port}"
    token = httpx.post(base + "/api/token/", json={"username": "bench", "password": PASSWORD},
                       timeout=30).json()["access"]
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        study = client.get("/api/pacs/studies/").json()["studies"][0]["studyUid"]
        series = client.get(f"/api/pacs/studies/{study}/series/").json()["series"]
        instances = []
        for s in series:
            page = client.get(f"/api/pacs/studies/{study}/series/{s['seriesUid']}/images/bulk",
                              params={"count": 500}).json()
            instances += [image["instanceUid"] for image in page["images"]]
    return HttpTarget("node", base, headers,
                      lambda uid: f"/api/pacs/instances/{uid}/frames/1",
                      lambda uid: f"/api/pacs/instances/{uid}/frames/1/rendered?format=png",
                      instances)


def _orthanc_target(peer: OrthancPeer) -> HttpTarget:
    with httpx.Client(base_url=peer.base_url, timeout=60) as client:
        instances = []
        for series in client.get("/series").json():
            instances += client.get(f"/series/{series}").json()["Instances"]
    return HttpTarget("Orthanc", peer.base_url, {},
                      lambda uid: f"/instances/{uid}/frames/0/raw",
                      lambda uid: f"/instances/{uid}/preview", instances)


def _get_ok(client: httpx.Client, path: str) -> bytes:
    response = client.get(path)
    if response.status_code != 200:
        raise BenchError(f"GET {path}: {response.status_code} {response.text[:200]}")
    return response.content


def _ms_per_request(target: HttpTarget, path_of: Callable[[str], str], count: int) -> float:
    """Sequential requests on one keep-alive connection, after one warm-up request."""
    uids = (target.instances * (count // max(1, len(target.instances)) + 1))[:count]
    with target.client() as client:
        _get_ok(client, path_of(uids[0]))
        start = time.perf_counter()
        for uid in uids:
            _get_ok(client, path_of(uid))
        return (time.perf_counter() - start) * 1000 / count


def _concurrent_per_s(target: HttpTarget, clients: int, each: int) -> float:
    """``clients`` threads, each its own keep-alive connection, ``each`` frames apiece."""
    errors: list[Exception] = []
    barrier = threading.Barrier(clients + 1)

    def work(offset: int) -> None:
        with target.client() as client:
            uids = target.instances[offset:] + target.instances[:offset]
            barrier.wait()
            try:
                for i in range(each):
                    _get_ok(client, target.raw_frame(uids[i % len(uids)]))
            except Exception as exc:  # noqa: BLE001 - reported after the join
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(i * 37,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise BenchError(f"{target.label}: {errors[0]}")
    return clients * each / elapsed


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@contextmanager
def _loaded(ctx: RunContext, label: str, spec: DataSpec) -> Iterator[tuple[Peer, HttpTarget]]:
    """A fresh peer (the node without per-user limits) holding ``spec``'s files, and how a
    viewer reaches it."""
    data = ensure_data(spec, ctx.work / "data")
    with (start_node(ctx.folder / label, web=UNLIMITED) if label == "node"
          else start_orthanc(ctx.folder / label)) as peer:
        warm_page_cache(data.folder)
        run_storescu(peer, data.folder)
        expect_counts(peer, studies=1, series=spec.series, instances=data.count)
        yield peer, _node_target(peer) if label == "node" else _orthanc_target(peer)
        ctx.note_log_problems(peer)


def frames(ctx: RunContext) -> list[Row]:
    """250 raw frames in sequence, 5 clients at once, 250 rendered PNGs; node RSS growth."""
    figures: dict[str, dict[str, float]] = {}
    for label in ctx.order(["node", "Orthanc"]):
        with _loaded(ctx, label, CT_500) as (peer, target):
            f = figures[label] = {}
            f["raw"] = _ms_per_request(target, target.raw_frame, FRAMES)
            f["concurrent"] = _concurrent_per_s(target, CLIENTS, FRAMES)
            f["png"] = _ms_per_request(target, target.rendered, FRAMES)
            if label == "node":
                before = _rss_bytes(peer.proc.pid)
                _ms_per_request(target, target.raw_frame, RSS_REQUESTS)
                f["rss_growth"] = (_rss_bytes(peer.proc.pid) - before) / (1024 * 1024)
    node, orthanc = figures["node"], figures["Orthanc"]
    return [
        Row(f"raw frame 512x512, {FRAMES} sequential", "ms/frame", node["raw"], orthanc["raw"],
            higher_is_better=False),
        Row(f"raw frame, {CLIENTS} clients x {FRAMES}", "frames/s", node["concurrent"],
            orthanc["concurrent"]),
        Row("rendered PNG 512x512 (Orthanc /preview)", "ms/picture", node["png"], orthanc["png"],
            higher_is_better=False),
        Row(f"node RSS growth over {RSS_REQUESTS:,} frames", "MiB", node["rss_growth"], None,
            higher_is_better=False),
    ]


def _study_strip_seconds(target: HttpTarget, client: httpx.Client) -> float:
    """The thumbnail strip: the series list, then one picture per series."""
    start = time.perf_counter()
    if target.label == "node":
        study = client.get("/api/pacs/studies/").json()["studies"][0]["studyUid"]
        for s in client.get(f"/api/pacs/studies/{study}/series/").json()["series"]:
            _get_ok(client, s["thumbnailUrl"])
    else:
        study = client.get("/studies").json()[0]
        for s in client.get(f"/studies/{study}/series", params={"expand": ""}).json():
            instances = s["Instances"]
            _get_ok(client, f"/instances/{instances[len(instances) // 2]}/preview")
    return time.perf_counter() - start


def thumbnails(ctx: RunContext) -> list[Row]:
    """A 20-series study: series list and 20 thumbnails, cold (first time) and warm."""
    figures: dict[str, tuple[float, float]] = {}
    for label in ctx.order(["node", "Orthanc"]):
        with _loaded(ctx, label, SERIES_20) as (_, target):
            with target.client() as client:
                cold = _study_strip_seconds(target, client)
                warm = statistics.median(_study_strip_seconds(target, client) for _ in range(5))
            figures[label] = (cold, warm)
    return [
        Row("20 series + 20 thumbnails, cold", "ms", figures["node"][0] * 1000,
            figures["Orthanc"][0] * 1000, higher_is_better=False),
        Row("20 series + 20 thumbnails, warm", "ms", figures["node"][1] * 1000,
            figures["Orthanc"][1] * 1000, higher_is_better=False),
    ]


SCENARIOS = [
    Scenario("web-frames", "500-slice CT: raw frames (sequential, 5 clients), rendered PNG, RSS",
             frames),
    Scenario("web-thumbnails", "20-series study: series list and thumbnails, cold and warm",
             thumbnails),
]
