"""WADO-RS retrieves sent by sendfile(2) (web.zerocopy) through a real uvicorn server in this
process: the same bytes as the copying path, the path really taken, and a body cut, never
wrong, when a file changes or the client leaves."""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Iterator

import httpx
import pytest
from pydicom.uid import generate_uid

from db import accounts
from db.models import database
from node.passwords import hash_password
from node.runtime import Node
from tests.helpers import make_dataset
from tests.web_support import PASSWORD, part10_bytes
from web import zerocopy
from web.dicomweb import wado
from web.server import WebServer

ACCEPT = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
BOUNDARY = "fixed-test-boundary"
SERIES_SIZE = 6  # of 512 x 512 x 16 bits: more than a loopback socket takes in one sendfile


@dataclass
class Served:
    base: str
    headers: dict[str, str]
    series_url: str
    study_url: str
    instance_url: str
    server: WebServer


@pytest.fixture
def served(make_settings, monkeypatch) -> Iterator[Served]:
    """The node's HTTP server (web.server: uvicorn, httptools) on a free port, one series."""
    monkeypatch.setattr(wado, "new_boundary", lambda: BOUNDARY)  # bodies comparable byte for byte
    settings = make_settings(web={"host": "127.0.0.1", "port": 0})
    node = Node(settings)
    ingestor = node.open_store()
    study, series = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(SERIES_SIZE)]
    for i, sop in enumerate(sops):
        ingestor.ingest_part10(part10_bytes(make_dataset(study_uid=study, series_uid=series, sop_uid=sop,
                                                         instance_number=i + 1, rows=512, columns=512)))
    with database.connection_context():
        accounts.create_user("reader", hash_password(PASSWORD), "viewer")
    server = WebServer(settings).start()
    try:
        base = "http://%s:%d" % server.address
        token = httpx.post(f"{base}/api/token/", json={"username": "reader", "password": PASSWORD},
                           timeout=10).json()["access"]
        root = f"{base}/dicom-web/studies/{study}"
        yield Served(base, {"Authorization": f"Bearer {token}", **ACCEPT}, f"{root}/series/{series}", root,
                     f"{root}/series/{series}/instances/{sops[2]}", server)
    finally:
        server.stop()
        node.stop()


@pytest.fixture
def sendfile_calls(monkeypatch) -> list[int]:
    """The byte counts asked of every os.sendfile call made in this process (noted
    before the call: the client may have every byte before the server's thread runs again)."""
    calls: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", counting)
    return calls


def _get(url: str, headers: dict[str, str]) -> httpx.Response:
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert int(response.headers["content-length"]) == len(response.content)
    return response


def _tasks_settle(server: WebServer, timeout: float = 5.0) -> bool:
    """True once uvicorn holds no request task (none hung after a failed body)."""
    deadline = time.monotonic() + timeout
    while server.server.server_state.tasks and time.monotonic() < deadline:
        time.sleep(0.02)
    return not server.server.server_state.tasks


def test_sendfile_sends_the_bytes_the_copying_path_sends(served, sendfile_calls, monkeypatch):
    for url in (served.series_url, served.study_url, served.instance_url):
        del sendfile_calls[:]
        zero_copy = _get(url, served.headers)
        files = (SERIES_SIZE if url != served.instance_url else 1)
        assert len(sendfile_calls) >= files and sum(sendfile_calls) >= files * 512 * 512 * 2
        del sendfile_calls[:]
        with monkeypatch.context() as m:
            m.setattr(zerocopy, "file_sender", lambda scope, send: None)  # as over TLS or h11
            copied = _get(url, served.headers)
        assert not sendfile_calls and zero_copy.content == copied.content
        assert zero_copy.headers["content-type"] == copied.headers["content-type"]
        assert zero_copy.content.startswith(f"--{BOUNDARY}\r\n".encode())


def test_single_part_instance_is_sent_as_stored(served, sendfile_calls):
    one = _get(served.instance_url, {**served.headers, "Accept": "application/dicom; transfer-syntax=*"})
    assert one.content[128:132] == b"DICM" and sum(sendfile_calls) >= len(one.content)


def test_head_sends_no_body(served, sendfile_calls):
    head = httpx.head(served.series_url, headers=served.headers, timeout=10)
    assert head.status_code == 200 and int(head.headers["content-length"]) > 0 and not sendfile_calls


def _cut_body(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """(announced length, bytes received) of a body the server cut."""
    with httpx.stream("GET", url, headers=headers, timeout=10) as response:
        assert response.status_code == 200
        got = bytearray()
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in response.iter_raw():
                got += chunk
        return int(response.headers["content-length"]), bytes(got)


def test_a_file_truncated_after_listing_cuts_the_body(served, sendfile_calls, monkeypatch, caplog):
    real = wado.StoredFilesResponse

    def truncating(heads, paths, sizes, tail, media):  # noqa: ANN001, ANN202
        response = real(heads, paths, sizes, tail, media)
        os.truncate(paths[3], sizes[3] // 2)  # after the Content-Length was computed
        return response

    monkeypatch.setattr(wado, "StoredFilesResponse", truncating)
    with caplog.at_level(logging.ERROR):
        length, got = _cut_body(served.series_url, served.headers)
        assert _tasks_settle(served.server)  # the server logs once the client saw the cut
    assert len(got) < length and b"Internal Server Error" not in got and got.count(b"\r\n--" + BOUNDARY.encode()) == 2
    assert "got shorter" in caplog.text
    monkeypatch.undo()
    assert _get(served.instance_url, served.headers).status_code == 200
    assert _tasks_settle(served.server)


def test_a_file_cut_while_it_is_sent_cuts_the_body(served, monkeypatch, caplog):
    real = os.sendfile
    files: list[int] = []

    def truncating(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        if in_fd not in files:
            files.append(in_fd)
            if len(files) == 2:  # after the size check, before the kernel reads it
                os.truncate(f"/proc/self/fd/{in_fd}", count // 3)  # the file it reads, by name
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", truncating)
    with caplog.at_level(logging.ERROR):
        length, got = _cut_body(served.series_url, served.headers)
        assert _tasks_settle(served.server)  # the server logs once the client saw the cut
    assert len(got) < length and b"Internal Server Error" not in got
    assert "got shorter while it was being sent" in caplog.text
    monkeypatch.undo()
    assert _get(served.instance_url, served.headers).status_code == 200
    assert _tasks_settle(served.server)


def test_a_client_leaving_mid_body_leaves_nothing_behind(served, sendfile_calls, caplog):
    host, port = served.server.address
    path = served.series_url.removeprefix(served.base)
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in served.headers.items()) + "\r\n").encode()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            with socket.create_connection((host, port), timeout=10) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                sock.sendall(request)
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
                # closing with unread bytes resets the connection (RST) mid-file
        assert _tasks_settle(served.server)
    assert sendfile_calls and "Exception in ASGI application" not in caplog.text
    assert _get(served.series_url, served.headers).content.count(b"\r\n--" + BOUNDARY.encode()) == SERIES_SIZE


def test_files_that_refuse_sendfile_are_copied(served, monkeypatch):
    expected = _get(served.series_url, served.headers).content

    def refusing(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        raise OSError(errno.EINVAL, "sendfile not supported for this file")

    monkeypatch.setattr(os, "sendfile", refusing)
    assert _get(served.series_url, served.headers).content == expected


def test_a_client_that_stops_reading_is_cut_off(served, monkeypatch, caplog):
    monkeypatch.setattr(zerocopy, "STALL_SECONDS", 0.5)
    real = zerocopy._write_parts

    def small_send_buffer(fd: int, parts: list) -> None:  # so that the series does not fit in it
        sock = socket.socket(fileno=os.dup(fd))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        sock.close()
        real(fd, parts)

    monkeypatch.setattr(zerocopy, "_write_parts", small_send_buffer)
    host, port = served.server.address
    path = served.series_url.removeprefix(served.base)
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in served.headers.items()) + "\r\n").encode()
    with caplog.at_level(logging.ERROR), socket.create_connection((host, port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(request)
        first = sock.recv(65536)
        head, _, body = first.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        deadline = time.monotonic() + 10
        while "took no byte" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)  # takes nothing meanwhile, until the server has given up on it
        got = len(body)
        try:
            while chunk := sock.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            pass
        assert _tasks_settle(served.server)
    assert got < length and "took no byte" in caplog.text
    assert _get(served.instance_url, served.headers).status_code == 200
