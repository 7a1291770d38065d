"""Retrieve scenarios: C-MOVE and C-GET of a 500-slice CT study out of each peer, and bulk
retrieval of that study from Orthanc into the node.

- ``move-ct``: the study is loaded into a fresh peer (storescu, not timed); DCMTK ``movescu``
  asks the peer to move it to a DCMTK ``storescp``; timed until the final C-MOVE response
  (the peer sends that only after its last sub-operation), then storescp's files are counted.
- ``get-ct``: the same with ``getscu``, which receives the instances itself.
- ``retrieve-ct``: one Orthanc holds the study; timed are ``python -m node retrieve --from
  ORTHANC --study UID`` against a serving node (the command's whole wall clock: start-up,
  planning C-FINDs, the C-MOVE, the catalogue commits, the job bookkeeping), and ``movescu``
  asking the same Orthanc to move the study to a ``storescp``, which only writes files. The
  "Orthanc" column of that row is storescp's figure; the issue's target is node/storescp of at
  least 0.80 in instances/s.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pydicom import dcmread

from bench.datagen import CT_500, GeneratedData, ensure_data
from bench.harness import (BenchError, OrthancPeer, Peer, _die_with_parent, _fresh,
                           dcmtk_env, echo_ok, expect_counts, free_port, log_tail, node_python,
                           run_storescu, start_node, start_orthanc, stop_process, wait_until,
                           warm_page_cache)
from bench.scenario import Row, RunContext, Scenario

DEST_AE = "STORESCP"
ALLOW_ANY = {"DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True, "DicomAlwaysAllowGet": True}


@contextmanager
def start_storescp(folder: Path, port: int | None = None) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp writing into ``folder/in``: the destination both peers send to."""
    _fresh(folder)
    port = port or free_port()
    log_path = folder / "storescp.log"
    (folder / "in").mkdir()  # before the start: storescp checks its output folder at once
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["storescp", "-aet", DEST_AE, "-od", str(folder / "in"), str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env(),
                                start_new_session=True, preexec_fn=_die_with_parent)
    try:
        wait_until(lambda: echo_ok(port, DEST_AE), what="storescp", timeout=30, proc=proc,
                   log_path=log_path)
        yield port, folder / "in"
    finally:
        stop_process(proc)


def study_uid_of(data: GeneratedData) -> str:
    first = next(iter(sorted(data.folder.glob("*.dcm"))))
    return str(dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def load(peer: Peer, data: GeneratedData) -> None:
    """The study into the peer (not timed), counted."""
    warm_page_cache(data.folder)
    run_storescu(peer, data.folder)
    expect_counts(peer, studies=1, instances=data.count)


def _timed(cmd: list[str], what: str, timeout: float = 600.0) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, env=dcmtk_env(), timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what} took over {timeout:.0f} s") from exc
    return time.perf_counter() - start, result


def _check_files(folder: Path, expected: int, what: str, result: subprocess.CompletedProcess,
                 peer: Peer | None = None) -> None:
    got = sum(1 for p in folder.iterdir() if p.is_file())
    if result.returncode != 0 or got != expected:
        tail = f"\n--- {peer.label} log ---\n{log_tail(peer.log_path)}" if peer else ""
        raise BenchError(f"{what}: exit {result.returncode}, {got} of {expected} files received\n"
                         + "\n".join(result.stderr.splitlines()[-15:]) + tail)


def move_to_storescp(peer: Peer, study_uid: str, dest_folder: Path, expected: int,
                     ctx: RunContext) -> float:
    """movescu asks ``peer`` to move the study to storescp; seconds until the final response."""
    cmd = ["movescu", "-S", "-aet", "BENCHSCU", "-aec", peer.ae_title, "-aem", DEST_AE,
           "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
           "-to", "60", "-ta", "30", "-td", "120", peer.host, str(peer.port)]
    seconds, result = _timed(cmd, f"movescu from {peer.label}")
    _check_files(dest_folder, expected, f"C-MOVE from {peer.label}", result, peer)
    ctx.note_log_problems(peer)
    return seconds


def get_from(peer: Peer, study_uid: str, out: Path, expected: int, ctx: RunContext) -> float:
    """getscu receives the study itself over the C-GET association."""
    _fresh(out)
    cmd = ["getscu", "-S", "-aet", "BENCHSCU", "-aec", peer.ae_title, "-od", str(out),
           "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
           "-to", "60", "-ta", "30", "-td", "120", peer.host, str(peer.port)]
    seconds, result = _timed(cmd, f"getscu from {peer.label}")
    _check_files(out, expected, f"C-GET from {peer.label}", result, peer)
    ctx.note_log_problems(peer)
    return seconds


def _rows(measurement: str, seconds: dict[str, float], count: int) -> list[Row]:
    node, other = seconds["node"], seconds["Orthanc"]
    return [Row(measurement, "seconds", node, other, higher_is_better=False),
            Row(measurement, "instances/s", count / node, count / other)]


def move_ct(ctx: RunContext) -> list[Row]:
    data = ensure_data(CT_500, ctx.work / "data")
    study_uid = study_uid_of(data)
    seconds: dict[str, float] = {}
    for label in ctx.order(["node", "Orthanc"]):
        with start_storescp(ctx.folder / f"storescp-{label}") as (dest_port, dest_folder):
            if label == "node":
                with start_node(ctx.folder / "node", remotes={DEST_AE: dest_port}) as node:
                    load(node, data)
                    seconds[label] = move_to_storescp(node, study_uid, dest_folder, data.count, ctx)
            else:
                modalities = {"DicomModalities": {DEST_AE: [DEST_AE, "127.0.0.1", dest_port]}}
                with start_orthanc(ctx.folder / "orthanc", extra_config=ALLOW_ANY | modalities) as orthanc:
                    load(orthanc, data)
                    seconds[label] = move_to_storescp(orthanc, study_uid, dest_folder, data.count, ctx)
    return _rows("C-MOVE 500 CT to storescp", seconds, data.count)


def get_ct(ctx: RunContext) -> list[Row]:
    data = ensure_data(CT_500, ctx.work / "data")
    study_uid = study_uid_of(data)
    seconds: dict[str, float] = {}
    for label in ctx.order(["node", "Orthanc"]):
        out = ctx.folder / f"getscu-{label}"
        if label == "node":
            with start_node(ctx.folder / "node") as node:
                load(node, data)
                seconds[label] = get_from(node, study_uid, out, data.count, ctx)
        else:
            with start_orthanc(ctx.folder / "orthanc", extra_config=ALLOW_ANY) as orthanc:
                load(orthanc, data)
                seconds[label] = get_from(orthanc, study_uid, out, data.count, ctx)
        shutil.rmtree(out, ignore_errors=True)
    return _rows("C-GET 500 CT (getscu)", seconds, data.count)


def node_retrieve(orthanc: OrthancPeer, study_uid: str, data: GeneratedData, ctx: RunContext) -> float:
    """A serving node that Orthanc knows as PACSNODE; ``node retrieve`` timed end to end."""
    port = free_port()
    _add_modality(orthanc, "PACSNODE", port)
    with start_node(ctx.folder / "node", remotes={orthanc.ae_title: orthanc.port}, port=port) as node:
        cmd = [node_python(), "-m", "node", "--config", str(node.config), "retrieve", "--from",
               orthanc.ae_title, "--study", study_uid, "--no-progress"]
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=node.folder, capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise BenchError(f"node retrieve failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
                             f"\n--- node log ---\n{log_tail(node.log_path)}")
        expect_counts(node, studies=1, instances=data.count)
        ctx.note_log_problems(node)
    return seconds


def storescp_retrieve(orthanc: OrthancPeer, study_uid: str, data: GeneratedData, ctx: RunContext) -> float:
    """The same study moved by the same Orthanc to a storescp (files only, no index)."""
    port = free_port()
    _add_modality(orthanc, DEST_AE, port)
    with start_storescp(ctx.folder / "storescp", port) as (_, dest_folder):
        return move_to_storescp(orthanc, study_uid, dest_folder, data.count, ctx)


def _add_modality(orthanc: OrthancPeer, ae_title: str, port: int) -> None:
    import json
    import urllib.request

    body = json.dumps({"AET": ae_title, "Host": "127.0.0.1", "Port": port}).encode()
    request = urllib.request.Request(f"{orthanc.base_url}/modalities/{ae_title}", data=body, method="PUT")
    with urllib.request.urlopen(request, timeout=30):
        pass


def retrieve_ct(ctx: RunContext) -> list[Row]:
    data = ensure_data(CT_500, ctx.work / "data")
    study_uid = study_uid_of(data)
    seconds: dict[str, float] = {}
    with start_orthanc(ctx.folder / "orthanc", extra_config=ALLOW_ANY) as orthanc:
        load(orthanc, data)
        for label in ctx.order(["node", "Orthanc"]):
            if label == "node":
                seconds[label] = node_retrieve(orthanc, study_uid, data, ctx)
            else:
                seconds[label] = storescp_retrieve(orthanc, study_uid, data, ctx)
    return _rows("retrieve 500 CT from Orthanc: node vs storescp", seconds, data.count)


SCENARIOS = [
    Scenario("move-ct", "C-MOVE of a 500-slice CT study to a DCMTK storescp (movescu)", move_ct),
    Scenario("get-ct", "C-GET of a 500-slice CT study (getscu)", get_ct),
    Scenario("retrieve-ct", "node retrieve of 500 CT from Orthanc vs storescp receiving the same "
             "C-MOVE (Orthanc column = storescp; target ratio >= 0.80)", retrieve_ct),
]
