"""Start, poll and stop the node and Orthanc, and drive them with DCMTK clients.

Shared by every benchmark scenario (ingest now, query/retrieve later) so each measures both
peers the same way: a free port, a fresh store, a bounded wait by polling (never a fixed
sleep), and a stop in ``finally`` (SIGTERM, bounded wait, then SIGKILL) even on errors.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "work"
ORTHANC_BINARY = "/usr/sbin/Orthanc"


class BenchError(RuntimeError):
    """A peer failed to start, a client failed, or a count did not match: the run is invalid."""


def node_python() -> str:
    """The project's virtualenv interpreter (the one the node is installed in)."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def free_port() -> int:
    """A port that was free a moment ago on loopback (the peer binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dcmtk_env() -> dict[str, str]:
    """DCMTK clients without TCP_NODELAY pay Nagle + delayed ACK (~45-90 ms an instance)."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(check: Callable[[], bool], *, what: str, timeout: float,
               proc: subprocess.Popen | None = None, log_path: Path | None = None,
               interval: float = 0.05) -> None:
    """Poll ``check`` until true; fail early if ``proc`` exits, and after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            tail = log_tail(log_path) if log_path else ""
            raise BenchError(f"{what}: process exited with {proc.returncode}\n{tail}")
        if check():
            return
        if time.monotonic() > deadline:
            tail = log_tail(log_path) if log_path else ""
            raise BenchError(f"{what}: not ready within {timeout:.0f} s\n{tail}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, grace: float = 30.0) -> int:
    """SIGTERM (the clean stop of both peers), a bounded wait, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def _die_with_parent() -> None:
    """Runs in the child: SIGTERM it if the benchmark is killed (no ``finally`` runs then)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _descendants(pid: int) -> list[int]:
    """Child processes by walking /proc (worker processes count towards a peer's memory)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def peak_rss_bytes(pid: int, include_children: bool = True) -> int:
    """VmHWM (peak resident set) of a process, plus its live descendants' peaks.

    Summing children's peaks over-estimates when they peak at different times; for one
    process it is exact. Read it before stopping the process.
    """
    total = 0
    for p in [pid, *(_descendants(pid) if include_children else [])]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def echo_ok(port: int, ae_title: str, host: str = "127.0.0.1") -> bool:
    try:
        result = subprocess.run(
            ["echoscu", "-to", "2", "-ta", "2", "-td", "2", "-aec", ae_title, host, str(port)],
            capture_output=True, env=dcmtk_env(), timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


@dataclass
class Peer:
    """A running DICOM peer under measurement."""

    label: str
    ae_title: str
    port: int
    proc: subprocess.Popen
    folder: Path
    log_path: Path
    host: str = "127.0.0.1"

    def counts(self) -> dict[str, int]:
        """Stored patients, studies, series and instances, as the peer itself reports them."""
        raise NotImplementedError

    def peak_rss_bytes(self) -> int:
        return peak_rss_bytes(self.proc.pid)


@dataclass
class NodePeer(Peer):
    config: Path = field(default=Path())
    web_port: int = 0

    def stats(self) -> dict[str, int]:
        """``python -m node stats --json``: the catalogue's own counts."""
        result = subprocess.run(
            [node_python(), "-m", "node", "--config", str(self.config), "stats", "--json"],
            cwd=self.folder, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise BenchError(f"node stats failed ({result.returncode}): {result.stderr.strip()}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.stats().items() if k != "bytes"}


@dataclass
class OrthancPeer(Peer):
    http_port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        with urllib.request.urlopen(self.base_url + path, timeout=timeout) as response:
            return json.load(response)

    def counts(self) -> dict[str, int]:
        stats = self.get_json("/statistics")
        return {"patients": int(stats["CountPatients"]), "studies": int(stats["CountStudies"]),
                "series": int(stats["CountSeries"]), "instances": int(stats["CountInstances"])}


def write_node_config(folder: Path, port: int, ae_title: str = "PACSNODE",
                      dicom: dict[str, Any] | None = None, web: dict[str, Any] | None = None,
                      remotes: dict[str, int] | None = None) -> Path:
    """A config.toml with data under ``folder/data``, listening on loopback only, knowing
    ``remotes`` (AE title -> port on loopback)."""
    lines = ["[node]", f'ae_title = "{ae_title}"', 'data_dir = "./data"',
             "[dicom]", 'host = "127.0.0.1"', f"port = {port}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in (dicom or {}).items()]
    lines += ["[web]", 'host = "127.0.0.1"', f"port = {free_port()}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in (web or {}).items()]
    lines += ["[database]", 'url = ""']
    for ae, remote_port in (remotes or {}).items():
        lines += [f"[remotes.{ae}]", 'host = "127.0.0.1"', f"port = {remote_port}"]
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


@contextmanager
def start_node(folder: Path, *, ae_title: str = "PACSNODE", timeout: float = 60.0,
               dicom: dict[str, Any] | None = None,
               web: dict[str, Any] | None = None, remotes: dict[str, int] | None = None,
               port: int | None = None) -> Iterator[NodePeer]:
    """``python -m node serve`` with a fresh data dir on ``port`` (default: a free one);
    ready when C-ECHO works."""
    _fresh(folder)
    port = port or free_port()
    config = write_node_config(folder, port, ae_title, dicom, web, remotes)
    log_path = folder / "node.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([node_python(), "-m", "node", "--config", str(config), "serve"],
                                cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
    web_port = tomllib.loads(config.read_text())["web"]["port"]

    def http_ready() -> bool:  # the node serves HTTP after DIMSE: timed steps start after both
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/healthz", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    try:
        wait_until(lambda: echo_ok(port, ae_title), what="node", timeout=timeout,
                   proc=proc, log_path=log_path)
        wait_until(http_ready, what="node HTTP", timeout=timeout, proc=proc, log_path=log_path)
        yield NodePeer("node", ae_title, port, proc, folder, log_path, config=config, web_port=web_port)
    finally:
        stop_process(proc)


def orthanc_config(folder: Path, dicom_port: int, http_port: int, ae_title: str) -> dict[str, Any]:
    """A self-contained Orthanc config: no plugins (Debian's default would load its plugin
    folder), no auth, its own storage and index, jobs not persisted."""
    return {
        "Name": "bench",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "StorageCompression": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": False,
        "RegisteredUsers": {},
        "DicomServerEnabled": True,
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomModalities": {},
        "OrthancPeers": {},
        "LuaScripts": [],
        "SaveJobs": False,
        "HttpDescribeErrors": True,
    }


@contextmanager
def start_orthanc(folder: Path, *, ae_title: str = "ORTHANC", timeout: float = 60.0,
                  extra_config: dict[str, Any] | None = None,
                  tcp_nodelay: bool = True) -> Iterator[OrthancPeer]:
    """Orthanc with its own config on free ports; ready when GET /system answers and C-ECHO works.

    Orthanc's DICOM sockets are DCMTK's, which leave Nagle on unless TCP_NODELAY=1 is in the
    environment (Debian's build); the node sets TCP_NODELAY itself, so both get it by default.
    """
    if not Path(ORTHANC_BINARY).exists():
        raise BenchError(f"{ORTHANC_BINARY} not found (Debian package 'orthanc')")
    _fresh(folder)
    dicom_port, http_port = free_port(), free_port()
    while http_port == dicom_port:
        http_port = free_port()
    config = orthanc_config(folder, dicom_port, http_port, ae_title) | (extra_config or {})
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = folder / "orthanc.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([ORTHANC_BINARY, "--no-jobs", str(config_path)], cwd=folder,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent,
                                env=dcmtk_env() if tcp_nodelay else None)
    peer = OrthancPeer("Orthanc", ae_title, dicom_port, proc, folder, log_path, http_port=http_port)

    def http_ready() -> bool:
        try:
            return "Version" in peer.get_json("/system", timeout=2)
        except (OSError, urllib.error.URLError, ValueError):
            return False

    try:
        wait_until(http_ready, what="Orthanc HTTP", timeout=timeout, proc=proc, log_path=log_path)
        wait_until(lambda: echo_ok(dicom_port, ae_title), what="Orthanc DICOM", timeout=timeout,
                   proc=proc, log_path=log_path)
        yield peer
    finally:
        stop_process(proc)


def warm_page_cache(folder: Path) -> None:
    """Read every input file once so neither peer's run pays for a cold client-side read."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                while fh.read(1 << 20):
                    pass


def run_storescu(peer: Peer, folder: Path, *, timeout: float = 900.0,
                 calling_ae: str = "BENCHSCU") -> float:
    """Send every file under ``folder`` on one association; return wall-clock seconds.

    The client's start-up and folder scan (~0.03 s for 2,000 files) are in the figure for both peers.
    """
    cmd = ["storescu", "-aet", calling_ae, "-aec", peer.ae_title, "-ta", "30", "-td", "120",
           "+sd", "+r", peer.host, str(peer.port), str(folder)]
    start = time.perf_counter()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, env=dcmtk_env(), timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"storescu to {peer.label} took over {timeout:.0f} s") from exc
    elapsed = time.perf_counter() - start
    problems = [line for line in result.stderr.splitlines() if line.startswith(("E:", "F:"))]
    if result.returncode != 0 or problems:
        raise BenchError(f"storescu to {peer.label} failed ({result.returncode}):\n"
                         + "\n".join((problems or result.stderr.splitlines())[-15:])
                         + f"\n--- {peer.label} log ---\n{log_tail(peer.log_path)}")
    return elapsed


def expect_counts(peer: Peer, **expected: int) -> None:
    """Fail loudly when a peer holds other counts than were sent (``instances=2000, series=4``)."""
    counts = peer.counts()
    wrong = {k: counts.get(k) for k, v in expected.items() if counts.get(k) != v}
    if wrong:
        raise BenchError(f"{peer.label} holds {wrong}, expected {expected}\n"
                         f"--- {peer.label} log ---\n{log_tail(peer.log_path)}")


def log_problems(peer: Peer) -> list[str]:
    """Error lines a peer logged during the run (reported with the table, not fatal)."""
    try:
        lines = peer.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    if isinstance(peer, OrthancPeer):  # glog format: "E1124 23:50:01.123456 ..."
        return [line for line in lines if line[:1] == "E" and line[1:5].isdigit()]
    return [line for line in lines if " ERROR " in line or " CRITICAL " in line or "Traceback" in line]
