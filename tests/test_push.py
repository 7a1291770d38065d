"""Upload sessions end to end against a real ``python -m node serve``: the stock tuspy client,
kill -9 mid-upload and resume, and the ``push`` client (twice, offline then --sync, five at once)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import (REPO, free_port, make_dataset, node_process, run_cli, sha256_file, wait_until,
                           write_config, write_dataset)
from tests.viewer_fixtures import PASSWORD, add_user, http_json, wait_for_http

EX_TEMPFAIL = 75


@dataclass
class Site:
    """A node's config (not necessarily running) and where its HTTP API answers."""

    config: Path
    dimse_port: int
    base_url: str

    def token(self, user: str = "sender") -> str:
        status, body = http_json(self.base_url + "api/token/", {"username": user, "password": PASSWORD})
        assert status == 200, body
        return body["access"]

    def instances(self) -> int:
        result = run_cli(self.config, "stats", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["instances"]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    dimse, http = free_port(), free_port()
    (tmp_path / "node").mkdir()
    config = write_config(tmp_path / "node", port=dimse, extra=f'[web]\nhost = "127.0.0.1"\nport = {http}\n')
    for name, role in (("admin", "admin"), ("sender", "uploader")):
        add_user(run_cli, config, name, role)
    return Site(config, dimse, f"http://127.0.0.1:{http}/")


@contextmanager
def started(site: Site) -> Iterator[subprocess.Popen]:
    """``python -m node serve`` until the block ends (SIGTERM), once its HTTP API answers."""
    with node_process(site.config, site.dimse_port) as proc:
        wait_for_http(site.base_url + "healthz", proc)
        yield proc


def write_files(folder: Path, count: int, size: int = 128, **fields: object) -> list[Path]:
    return [write_dataset(make_dataset(instance_number=i + 1, rows=size, columns=size, **fields),
                          folder / f"img{i:03d}.dcm") for i in range(count)]


def push(site: Site, *args: str, outbox: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PACSNODE_USER": "sender", "PACSNODE_PASSWORD": PASSWORD}
    return subprocess.run([sys.executable, "-m", "node", "push", *args, "--server", site.base_url,
                           "--outbox", str(outbox), "--no-progress"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def summary_of(result: subprocess.CompletedProcess) -> dict[str, int]:
    counts = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep and not line.startswith(" "):
            counts[key] = int(value.split()[0])
    return counts


def queue_rows(outbox: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(outbox / "queue.sqlite3") as con:
        return con.execute("SELECT status, server_image_id FROM items").fetchall()


def new_session(site: Site, token: str, path: Path) -> dict:
    status, session = http_json(site.base_url + "api/upload-sessions/", {
        "fileName": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)}, token)
    assert status == 201, session
    status, session = http_json(f"{site.base_url}api/upload-sessions/{session['sessionId']}/metadata",
                                {"via": "tuspy"}, token, method="PUT")
    assert status == 200 and session["status"] == "METADATA_UPLOADED", session
    return session


def session_state(site: Site, token: str, session_id: str) -> dict:
    status, body = http_json(f"{site.base_url}api/upload-sessions/{session_id}", token=token)
    assert status == 200, body
    return body


def test_stock_tuspy_client_uploads_with_checksums(site: Site, tmp_path: Path) -> None:
    from tusclient import client as tus

    path = write_files(tmp_path / "in", 1, size=256)[0]
    with started(site):
        token = site.token()
        session = new_session(site, token, path)
        with path.open("rb") as stream:  # tuspy leaves a file it opened itself open
            uploader = tus.TusClient(site.base_url.rstrip("/") + "/api/upload-sessions/",
                                     headers={"Authorization": f"Bearer {token}"}).uploader(
                file_stream=stream, url=site.base_url.rstrip("/") + session["uploadUrl"], chunk_size=40000,
                upload_checksum=True)
            uploader.upload()
        assert uploader.offset == path.stat().st_size
        state = session_state(site, token, session["sessionId"])
        assert state["status"] == "SYNCED" and state["serverImageId"]
        assert site.instances() == 1


def test_kill_9_mid_upload_resumes_from_the_acknowledged_offset(site: Site, tmp_path: Path) -> None:
    from tusclient import client as tus

    path = write_files(tmp_path / "in", 1, size=256)[0]
    chunk = 30000
    with started(site) as proc:
        token = site.token()
        session = new_session(site, token, path)
        url = site.base_url.rstrip("/") + session["uploadUrl"]
        with path.open("rb") as stream:
            uploader = tus.TusClient(url, headers={"Authorization": f"Bearer {token}"}).uploader(
                file_stream=stream, url=url, chunk_size=chunk)
            for _ in range(3):
                uploader.upload_chunk()
        proc.kill()  # SIGKILL: no clean stop, the acknowledged chunks must be on disk already
        proc.wait(timeout=20)
    with started(site):
        token = site.token()
        url = site.base_url.rstrip("/") + session["uploadUrl"]
        with path.open("rb") as stream:
            resumed = tus.TusClient(url, headers={"Authorization": f"Bearer {token}"}).uploader(
                file_stream=stream, url=url, chunk_size=chunk)
            assert resumed.offset == 3 * chunk  # HEAD: where the server was when it was killed
            resumed.upload()
        state = session_state(site, token, session["sessionId"])
        assert state["status"] == "SYNCED"
        status, stored = http_json(f"{site.base_url}api/pacs/instances/{state['serverImageId']}/", token=site.token("admin"))
        assert status == 200, stored
        assert site.instances() == 1


def test_push_twice_stores_one_instance_and_empties_the_outbox(site: Site, tmp_path: Path) -> None:
    files = write_files(tmp_path / "in", 6)
    (tmp_path / "in" / "readme.txt").write_text("not an image")
    outbox = tmp_path / "outbox"
    with started(site):
        first = push(site, str(tmp_path / "in"), outbox=outbox)
        assert first.returncode == 0, first.stdout + first.stderr
        assert summary_of(first) == {"queued now": 6, "stored": 6, "already on the server": 0,
                                     "skipped (not DICOM)": 1, "failed": 0, "left in the outbox": 0}
        second = push(site, *map(str, files), outbox=outbox)
        assert second.returncode == 0, second.stdout + second.stderr
        assert summary_of(second)["already on the server"] == 6 and summary_of(second)["stored"] == 0
        assert site.instances() == 6
    assert list((outbox / "files").iterdir()) == []
    rows = queue_rows(outbox)
    assert len(rows) == 12 and {status for status, _ in rows} == {"done"} and all(uid for _, uid in rows)


def test_offline_push_then_sync_delivers_everything(site: Site, tmp_path: Path) -> None:
    write_files(tmp_path / "in", 5, size=64)
    outbox = tmp_path / "outbox"
    offline = push(site, str(tmp_path / "in"), "--max-attempts", "2", "--retry-delay", "0.05", outbox=outbox)
    assert offline.returncode == EX_TEMPFAIL, offline.stdout + offline.stderr
    assert summary_of(offline)["left in the outbox"] == 5 and "push --sync" in offline.stdout
    assert len(list((outbox / "files").iterdir())) == 5
    assert {status for status, _ in queue_rows(outbox)} == {"queued"}
    with started(site):
        synced = push(site, "--sync", outbox=outbox)
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert summary_of(synced)["stored"] == 5
        assert site.instances() == 5
        token = site.token()
        status, listing = http_json(site.base_url + "api/upload-sessions/?status=synced", token=token)
        assert status == 200 and {s["status"] for s in listing["sessions"]} == {"ACK_RECEIVED"}
        assert len(listing["sessions"]) == 5
    assert list((outbox / "files").iterdir()) == []
    assert {status for status, _ in queue_rows(outbox)} == {"done"}


def test_push_killed_server_then_sync_resumes_the_same_session(site: Site, tmp_path: Path) -> None:
    big = write_files(tmp_path / "in", 1, size=1448)[0]  # about 4 MB, sent in 4 kB chunks
    outbox = tmp_path / "outbox"
    env = {**os.environ, "PACSNODE_USER": "sender", "PACSNODE_PASSWORD": PASSWORD}
    with started(site) as proc:
        token = site.token()
        client = subprocess.Popen([sys.executable, "-m", "node", "push", str(big), "--server", site.base_url,
                                   "--outbox", str(outbox), "--no-progress", "--chunk-size", "4096",
                                   "--max-attempts", "2", "--retry-delay", "0.05"],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, stdin=subprocess.DEVNULL)
        try:
            def sending() -> dict | None:
                status, body = http_json(site.base_url + "api/upload-sessions/?status=pending", token=token)
                moving = [s for s in body.get("sessions", []) if s["uploadOffset"] > 0]
                return moving[0] if status == 200 and moving else None

            assert wait_until(lambda: sending() is not None, timeout=60)
            proc.kill()  # kill -9 in the middle of the upload
            proc.wait(timeout=20)
            output, _ = client.communicate(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    assert client.returncode == EX_TEMPFAIL, output
    assert len(list((outbox / "files").iterdir())) == 1
    with started(site):
        token = site.token()
        status, listing = http_json(site.base_url + "api/upload-sessions/?status=pending", token=token)
        assert status == 200 and len(listing["sessions"]) == 1
        interrupted = listing["sessions"][0]
        assert 0 < interrupted["uploadOffset"] < big.stat().st_size  # what was acknowledged before the kill
        synced = push(site, "--sync", "--chunk-size", "4096", outbox=outbox)
        assert synced.returncode == 0, synced.stdout + synced.stderr
        state = session_state(site, token, interrupted["sessionId"])  # the same session, resumed
        assert state["status"] == "ACK_RECEIVED"
        status, events = http_json(f"{site.base_url}api/upload-sessions/{interrupted['sessionId']}/events",
                                   token=token)
        assert [e["to"] for e in events["events"]].count("METADATA_UPLOADED") == 1  # never restarted from 0
        assert site.instances() == 1
    assert list((outbox / "files").iterdir()) == []


def test_five_clients_at_once(site: Site, tmp_path: Path) -> None:
    shared = write_files(tmp_path / "shared", 1, size=64, sop_uid="1.2.3.4.5.6.7.8.9")[0]
    folders = []
    for n in range(5):
        folder = tmp_path / f"client{n}"
        write_files(folder, 4, size=64, patient_id=f"P{n}")
        folders.append(folder)
    with started(site):
        with ThreadPoolExecutor(5) as pool:
            results = list(pool.map(lambda n: push(site, str(folders[n]), str(shared),
                                                   outbox=tmp_path / f"outbox{n}"), range(5)))
        for result in results:
            assert result.returncode == 0, result.stdout + result.stderr
            assert summary_of(result)["left in the outbox"] == 0
        assert sum(summary_of(r)["stored"] + summary_of(r)["already on the server"] for r in results) == 25
        assert site.instances() == 21  # 5 x 4 own files, and the shared one once
    for n in range(5):
        assert list((tmp_path / f"outbox{n}" / "files").iterdir()) == []


def test_push_without_credentials_refuses_and_keeps_the_files(site: Site, tmp_path: Path) -> None:
    write_files(tmp_path / "in", 1, size=32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSNODE_")}
    result = subprocess.run([sys.executable, "-m", "node", "push", str(tmp_path / "in"), "--server", site.base_url,
                             "--outbox", str(tmp_path / "outbox")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "PACSNODE_PASSWORD" in result.stderr
    assert len(list((tmp_path / "outbox" / "files").iterdir())) == 1


def test_outbox_keeps_queued_copies_and_drops_unqueued_ones(tmp_path: Path) -> None:
    from node.push_queue import Outbox

    files = write_files(tmp_path / "in", 2, size=16)
    outbox = Outbox(tmp_path / "outbox")
    items, repeats = outbox.add(files, "http://node", None)
    again, repeats = outbox.add(files[:1], "http://node", None)  # already waiting: not queued twice
    assert (len(items), again, repeats) == (2, [], 1)
    assert outbox.path_of(items[0]).read_bytes() == files[0].read_bytes()
    assert items[0].sha256 == sha256_file(files[0]) and items[0].status == "queued"
    stray = outbox.files / "left-by-a-crash-before-its-commit.dcm"
    stray.write_bytes(b"x")
    outbox.finish(items[1], "1.2.3", already_present=False)
    outbox.close()
    reopened = Outbox(tmp_path / "outbox")
    try:
        assert not stray.exists() and not reopened.path_of(items[1]).exists()
        assert reopened.path_of(items[0]).exists()
        assert [i.item_id for i in reopened.pending("http://node")] == [items[0].item_id]
    finally:
        reopened.close()


@contextmanager
def _fake_node(answer, *, close_after_each: bool = False) -> Iterator[str]:
    """A small HTTP/1.1 server on a free port: ``answer(method, path, authorization)`` gives
    (status, headers, JSON body). ``close_after_each`` drops every connection after its answer
    without saying so, as a server does to a keep-alive connection it finds idle."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, headers, body = answer(self.command, self.path, self.headers.get("Authorization", ""))
            data = json.dumps(body).encode()
            self.send_response(status)
            for name, value in {**headers, "Content-Type": "application/json",
                                "Content-Length": str(len(data))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = close_after_each

        do_GET = do_POST = do_PATCH = _answer

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/node"
    finally:
        server.shutdown()
        server.server_close()


def test_api_renews_an_expired_token_and_waits_out_rate_limits() -> None:
    from node.push_http import Api, CredentialsRefused

    seen: list[tuple[str, str]] = []
    answers = {"limited": 2}

    def node(method: str, path: str, auth: str):
        seen.append((path, auth))
        if path == "/node/api/token/":
            return 200, {}, {"access": "a1", "refresh": "r1"}
        if path == "/node/api/token/refresh/":
            return 200, {}, {"access": "a2", "refresh": "r2"}
        if auth != "Bearer a2":
            return 401, {}, {"detail": "expired"}
        if answers["limited"]:
            answers["limited"] -= 1
            return 429, {"Retry-After": "0"}, {"detail": "slow down"}
        return 200, {}, {"ok": True}

    with _fake_node(node) as base:
        api = Api(base, "sender", "pw")
        try:
            api.login()
            assert api.call("GET", "api/upload-sessions/").json() == {"ok": True}
        finally:
            api.close()
    assert [path for path, _ in seen] == ["/node/api/token/", "/node/api/upload-sessions/", "/node/api/token/refresh/",
                                          *["/node/api/upload-sessions/"] * 3]

    with _fake_node(lambda method, path, auth: (401, {}, {"detail": "no such user"})) as base:
        api = Api(base, "sender", "wrong")
        try:
            with pytest.raises(CredentialsRefused, match="no such user"):
                api.login()
        finally:
            api.close()


def test_api_sends_again_on_a_new_connection_when_the_server_dropped_the_idle_one() -> None:
    from node.push_http import Api, Unreachable

    def node(method: str, path: str, auth: str):
        return (200, {}, {"access": "a", "refresh": "r"}) if path.endswith("/token/") else (200, {}, {"path": path})

    with _fake_node(node, close_after_each=True) as base:
        api = Api(base, "sender", "pw")
        try:
            api.login()
            for n in range(3):  # each one finds the connection of the one before closed
                assert api.call("GET", f"api/upload-sessions/{n}").json() == {"path": f"/node/api/upload-sessions/{n}"}
        finally:
            api.close()
    api = Api(base, "sender", "pw")  # the server is gone now
    try:
        with pytest.raises(Unreachable):
            api.call("GET", "api/upload-sessions/")
    finally:
        api.close()
