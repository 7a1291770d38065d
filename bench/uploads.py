"""Upload scenario: the 500-slice CT study over HTTP, the node's resumable upload sessions
(``python -m node push``: outbox copy, create, metadata, tus PATCH, acknowledge) against
Orthanc's one-request REST upload (``POST /instances``).

The push is timed as a user runs it, from the command to its summary (process start, login,
the durable outbox copies and the four steps per file, with ``PARALLEL`` files in flight).
Orthanc is timed with one request at a time (its usual client) and with ``PARALLEL`` at once.
"""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.datagen import CT_500, ensure_data
from bench.harness import (BenchError, OrthancPeer, expect_counts, node_python, start_node, start_orthanc,
                           warm_page_cache)
from bench.scenario import Row, RunContext, Scenario

PARALLEL = 8  # files in flight (push --parallel) and Orthanc requests at once in the second row
PASSWORD = "bench password 1234"
# the per-user limits protect a shared node from one client; a benchmark is that one client
UNLIMITED = {"rate_per_second": 1e6, "burst": 1_000_000, "max_in_flight_per_user": 64}


def _push_seconds(ctx: RunContext, files: list[Path], folder: Path) -> float:
    with start_node(ctx.folder / "node", web=UNLIMITED) as peer:
        add = subprocess.run([node_python(), "-m", "node", "--config", str(peer.config), "user", "add", "bench",
                              "--role", "uploader"], input=PASSWORD + "\n", text=True, capture_output=True,
                             cwd=peer.folder, timeout=60)
        if add.returncode != 0:
            raise BenchError(f"node user add failed: {add.stderr.strip()}")
        base = f"http://127.0.0.1:{peer.web_port}"
        outbox = ctx.folder / "outbox"
        env = {**os.environ, "PACSNODE_USER": "bench", "PACSNODE_PASSWORD": PASSWORD}
        started = time.perf_counter()
        result = subprocess.run([node_python(), "-m", "node", "push", str(folder), "--server", base,
                                 "--outbox", str(outbox), "--parallel", str(PARALLEL), "--no-progress"],
                                env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise BenchError(f"push failed ({result.returncode}): {result.stdout[-2000:]} {result.stderr[-2000:]}")
        if any((outbox / "files").iterdir()):
            raise BenchError("push left files in its outbox")
        expect_counts(peer, patients=1, studies=1, series=CT_500.series, instances=len(files))
        ctx.note_log_problems(peer)
    return seconds


def _orthanc_seconds(ctx: RunContext, files: list[Path], parallel: int) -> float:
    with start_orthanc(ctx.folder / f"orthanc-{parallel}") as peer:
        seconds = _post_instances(peer, files, parallel)
        expect_counts(peer, patients=1, studies=1, series=CT_500.series, instances=len(files))
        ctx.note_log_problems(peer)
    return seconds


def _post_instances(peer: OrthancPeer, files: list[Path], parallel: int) -> float:
    """``POST /instances`` with each file's bytes, ``parallel`` at a time (read from the page cache)."""
    with httpx.Client(base_url=peer.base_url, timeout=120,
                      limits=httpx.Limits(max_connections=parallel)) as client:
        def send(path: Path) -> None:
            response = client.post("/instances", content=path.read_bytes(),
                                    headers={"Content-Type": "application/dicom"})
            if response.status_code != 200:
                raise BenchError(f"Orthanc POST /instances: {response.status_code} {response.text[:200]}")

        started = time.perf_counter()
        if parallel == 1:
            for path in files:
                send(path)
        else:
            with ThreadPoolExecutor(parallel) as pool:
                list(pool.map(send, files))
        return time.perf_counter() - started


def upload_ct(ctx: RunContext) -> list[Row]:
    data = ensure_data(CT_500, ctx.work / "data")
    files = sorted(p for p in data.folder.rglob("*") if p.is_file())
    warm_page_cache(data.folder)
    seconds: dict[str, float] = {}
    for label in ctx.order(["node", "Orthanc"]):
        if label == "node":
            seconds["node"] = _push_seconds(ctx, files, data.folder)
        else:
            seconds["orthanc-1"] = _orthanc_seconds(ctx, files, 1)
            seconds["orthanc-n"] = _orthanc_seconds(ctx, files, PARALLEL)
    node = len(files) / seconds["node"]
    return [
        Row(f"upload 500 CT over HTTP: push ({PARALLEL} in flight) vs POST /instances (1 at a time)", "files/s",
            node, len(files) / seconds["orthanc-1"]),
        Row(f"upload 500 CT over HTTP: push vs POST /instances ({PARALLEL} at a time)", "files/s",
            node, len(files) / seconds["orthanc-n"]),
        Row("upload 500 CT over HTTP: push vs POST /instances (1 at a time)", "MB/s",
            data.megabytes / seconds["node"], data.megabytes / seconds["orthanc-1"]),
    ]


SCENARIOS = [
    Scenario("upload-ct", "500 512x512 16-bit CT slices sent over HTTP: node push through resumable "
             "upload sessions vs Orthanc POST /instances", upload_ct),
]
