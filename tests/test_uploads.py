"""Upload sessions over HTTP with Starlette's TestClient: the JSON resource, the tus 1.0.0
binary resource, the state machine, ownership, expiry, the events trail and a full disk."""

from __future__ import annotations

import base64
import datetime as dt
import errno
import hashlib
import os
from typing import Iterator

import pytest
from starlette.testclient import TestClient

from db.accounts import utcnow
from node.runtime import Node
from tests.helpers import make_dataset
from tests.web_support import FakeClock, WebWorld, part10_bytes
from web.app import create_app

BASE = "/api/upload-sessions/"
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


class Uploads:
    """A node with its ingest path behind the app, a movable wall clock, and request helpers."""

    def __init__(self, world: WebWorld) -> None:
        self.world = world
        self.client = world.client
        self.now = utcnow()
        world.client.app.state.ctx.uploads.now = lambda: self.now

    def headers(self, user: str = "sender", role: str = "uploader") -> dict[str, str]:
        return self.world.headers(user, role)

    def create(self, data: bytes, user: str = "sender", role: str = "uploader", **fields: object):  # noqa: ANN201
        body = {"fileName": "image.dcm", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "contentType": "application/dicom", **fields}
        return self.client.post(BASE, json=body, headers=self.headers(user, role))

    def ready(self, data: bytes, user: str = "sender", **fields: object) -> dict:
        """A session with its metadata stored, waiting for bytes."""
        created = self.create(data, user, **fields)
        assert created.status_code == 201, created.text
        session = created.json()
        answer = self.client.put(f"{BASE}{session['sessionId']}/metadata", json={"source": "test"},
                                 headers=self.headers(user))
        assert answer.status_code == 200, answer.text
        return answer.json()

    def patch(self, session: dict, offset: int, chunk: bytes, user: str = "sender",
              checksum: str | None = "sha256", **headers: str):  # noqa: ANN201
        sent = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS, **self.headers(user)}
        if checksum:
            sent["Upload-Checksum"] = f"{checksum} " + base64.b64encode(hashlib.new(checksum, chunk).digest()).decode()
        sent.update(headers)
        return self.client.patch(session["uploadUrl"], content=chunk, headers=sent)

    def head(self, session: dict, user: str = "sender"):  # noqa: ANN201
        return self.client.head(session["uploadUrl"], headers={**TUS, **self.headers(user)})

    def get(self, session: dict, user: str = "sender") -> dict:
        answer = self.client.get(f"{BASE}{session['sessionId']}", headers=self.headers(user))
        assert answer.status_code == 200, answer.text
        return answer.json()

    def post(self, session: dict, action: str, body: dict | None = None, user: str = "sender"):  # noqa: ANN201
        return self.client.post(f"{BASE}{session['sessionId']}/{action}", json=body or {},
                                headers=self.headers(user))

    def send_all(self, session: dict, data: bytes, chunk: int = 1000) -> None:
        for offset in range(0, len(data), chunk):
            answer = self.patch(session, offset, data[offset:offset + chunk])
            assert answer.status_code == 204, answer.text


def _world(make_settings, **sections: dict) -> Iterator[Uploads]:
    settings = make_settings(**sections)
    node = Node(settings)
    ingestor = node.open_store()
    clock = FakeClock()
    try:
        with TestClient(create_app(settings, clock=clock, ingestor=ingestor)) as client:
            yield Uploads(WebWorld(settings, ingestor, client, clock))
    finally:
        node.stop()


@pytest.fixture
def up(make_settings) -> Iterator[Uploads]:
    yield from _world(make_settings, uploads={"max_retries": 2})


@pytest.fixture
def dicom() -> bytes:
    return part10_bytes(make_dataset(rows=64, columns=64))


def _sop_uid(data: bytes) -> str:
    import io

    from pydicom import dcmread

    return dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID


def test_create_returns_201_then_the_same_session_for_the_same_file(up: Uploads, dicom: bytes) -> None:
    first = up.create(dicom, orderId="ORDER-1", metadata={"site": "clinic"})
    assert first.status_code == 201
    body = first.json()
    assert body["status"] == "QUEUED" and body["uploadOffset"] == 0 and body["retryCount"] == 0
    assert body["serverImageId"] is None and body["errorCode"] is None and body["errorMessage"] is None
    assert body["uploadUrl"] == f"{BASE}{body['sessionId']}/binary"
    assert first.headers["location"] == f"{BASE}{body['sessionId']}"
    assert body["metadata"] == {"site": "clinic"}
    again = up.create(dicom, orderId="ORDER-1")
    assert again.status_code == 200 and again.json()["sessionId"] == body["sessionId"]
    other_order = up.create(dicom, orderId="ORDER-2")
    assert other_order.status_code == 201 and other_order.json()["sessionId"] != body["sessionId"]
    no_order = up.create(dicom)
    assert no_order.status_code == 201
    assert up.create(dicom).json()["sessionId"] == no_order.json()["sessionId"]


@pytest.mark.parametrize("body, status", [
    ({"fileName": "a.dcm", "size": 0, "sha256": "0" * 64}, 400),
    ({"fileName": "a.dcm", "size": 10, "sha256": "xyz"}, 400),
    ({"size": 10, "sha256": "0" * 64}, 400),
    ({"fileName": "a.dcm", "size": 10, "sha256": "0" * 64, "metadata": [1]}, 400),
    ({"fileName": "a.dcm", "size": 1 << 40, "sha256": "0" * 64}, 413),
])
def test_create_checks_its_body(up: Uploads, body: dict, status: int) -> None:
    answer = up.client.post(BASE, json=body, headers=up.headers())
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/problem+json"


def test_roles_viewer_may_not_upload_and_anonymous_gets_401(up: Uploads, dicom: bytes) -> None:
    assert up.create(dicom, user="reader", role="viewer").status_code == 403
    assert up.client.post(BASE, json={}).status_code == 401
    assert up.create(dicom, user="boss", role="admin").status_code == 201


def test_metadata_first_then_identity_fields_fixed(up: Uploads, dicom: bytes) -> None:
    session = up.create(dicom).json()
    early = up.patch(session, 0, dicom)
    assert early.status_code == 409 and "metadata" in early.json()["detail"]
    stored = up.client.put(f"{BASE}{session['sessionId']}/metadata", json={"patientId": "P1"},
                           headers=up.headers()).json()
    assert stored["status"] == "METADATA_UPLOADED" and stored["metadata"] == {"patientId": "P1"}
    conflict = up.client.put(f"{BASE}{session['sessionId']}/metadata", json={"sha256": "0" * 64},
                             headers=up.headers())
    assert conflict.status_code == 409
    assert up.get(session)["sha256"] == hashlib.sha256(dicom).hexdigest()


def test_tus_options_and_head(up: Uploads, dicom: bytes) -> None:
    session = up.ready(dicom)
    options = up.client.options(session["uploadUrl"], headers=up.headers())
    assert options.status_code == 204
    assert options.headers["tus-resumable"] == "1.0.0" and options.headers["tus-version"] == "1.0.0"
    assert set(options.headers["tus-extension"].split(",")) == {"checksum", "expiration"}
    assert options.headers["tus-checksum-algorithm"] == "sha1,sha256"
    assert int(options.headers["tus-max-size"]) == up.world.settings.uploads.max_size
    head = up.head(session)
    assert head.status_code == 200
    assert head.headers["upload-offset"] == "0" and head.headers["upload-length"] == str(len(dicom))
    assert head.headers["cache-control"] == "no-store" and head.headers["tus-resumable"] == "1.0.0"
    expires = dt.datetime.strptime(head.headers["upload-expires"], "%a, %d %b %Y %H:%M:%S GMT")
    assert abs((expires - up.now).total_seconds() - up.world.settings.uploads.expire_after_seconds) < 2


def test_chunks_with_checksums_end_in_a_stored_instance(up: Uploads, dicom: bytes) -> None:
    session = up.ready(dicom)
    first = up.patch(session, 0, dicom[:3000], checksum="sha1")
    assert first.status_code == 204 and first.headers["upload-offset"] == "3000"
    assert first.headers["tus-resumable"] == "1.0.0" and "upload-expires" in first.headers
    assert up.get(session)["status"] == "BINARY_UPLOADING"
    assert up.head(session).headers["upload-offset"] == "3000"
    last = up.patch(session, 3000, dicom[3000:])
    assert last.status_code == 204 and last.headers["upload-offset"] == str(len(dicom))
    assert last.headers["upload-session-status"] == "SYNCED"
    uid = _sop_uid(dicom)
    assert last.headers["upload-server-image-id"] == uid
    state = up.get(session)
    assert state["status"] == "SYNCED" and state["serverImageId"] == uid
    stored = up.world.get(f"/api/pacs/instances/{uid}/file", user="boss", headers=up.headers("boss", "admin"))
    assert stored.status_code == 200 and stored.content == dicom
    assert not up.world.settings.data_dir.joinpath("uploads", f"{session['sessionId']}.part").exists()
    assert _catalogued_sha256(uid) == hashlib.sha256(dicom).hexdigest()


@pytest.mark.parametrize("checksum", ["sha256", "sha1", None])
def test_one_patch_file_is_catalogued_with_its_sha256(up: Uploads, dicom: bytes, checksum: str | None) -> None:
    session = up.ready(dicom)
    assert up.patch(session, 0, dicom, checksum=checksum).headers["upload-session-status"] == "SYNCED"
    assert _catalogued_sha256(_sop_uid(dicom)) == hashlib.sha256(dicom).hexdigest()


def _catalogued_sha256(sop_uid: str) -> str:
    from db.models import Instance, database

    with database.connection_context():
        return Instance.get(Instance.sop_instance_uid == sop_uid).sha256


def test_refused_chunks_change_nothing(up: Uploads, dicom: bytes) -> None:
    session = up.ready(dicom)
    assert up.patch(session, 0, dicom[:100]).status_code == 204
    wrong = up.patch(session, 50, dicom[50:200])
    assert wrong.status_code == 409 and wrong.headers["upload-offset"] == "100"
    bad_sum = up.patch(session, 100, dicom[100:200], **{"Upload-Checksum": "sha256 " + base64.b64encode(
        hashlib.sha256(b"other").digest()).decode()})
    assert bad_sum.status_code == 460
    assert up.patch(session, 100, dicom[100:200], **{"Upload-Checksum": "md5 AAAA"}).status_code == 400
    assert up.patch(session, 100, dicom[100:200], **{"Content-Type": "application/octet-stream"}).status_code == 415
    old = up.patch(session, 100, dicom[100:200], **{"Tus-Resumable": "0.2.2"})
    assert old.status_code == 412 and old.headers["tus-version"] == "1.0.0"
    assert up.patch(session, 100, dicom[100:] + b"extra").status_code == 400
    assert up.patch(session, 100, b"x", **{"Upload-Offset": "-1"}).status_code == 400
    assert up.head(session).headers["upload-offset"] == "100"
    assert up.patch(session, 100, dicom[100:]).headers["upload-session-status"] == "SYNCED"


def test_chunk_larger_than_web_body_limit_is_accepted_up_to_max_chunk(make_settings, dicom: bytes) -> None:
    for up in _world(make_settings, web={"max_body_bytes": 1000}, uploads={"max_chunk_bytes": 4096}):
        session = up.ready(dicom)
        assert up.patch(session, 0, dicom[:4096]).status_code == 204
        too_big = up.patch(session, 4096, dicom[4096:4096 + 5000])
        assert too_big.status_code == 413
        assert up.head(session).headers["upload-offset"] == "4096"
        assert up.client.post(BASE, content=b"{" + b" " * 2000 + b"}", headers={
            **up.headers(), "Content-Type": "application/json"}).status_code == 413


@pytest.mark.parametrize("chunk", [1000, 1 << 20], ids=["chunks", "one-patch"])
def test_checksum_mismatch_then_retry(up: Uploads, dicom: bytes, chunk: int) -> None:
    session = up.ready(dicom)
    corrupt = bytearray(dicom)
    corrupt[len(corrupt) // 2] ^= 0xFF
    up.send_all(session, bytes(corrupt), chunk=chunk)  # each chunk's own checksum matches
    failed = up.get(session)
    assert failed["status"] == "FAILED" and failed["errorCode"] == "CHECKSUM_MISMATCH"
    assert up.patch(session, len(dicom), b"").status_code == 409
    retried = up.post(session, "retry")
    assert retried.status_code == 200
    body = retried.json()
    assert body["status"] == "METADATA_UPLOADED" and body["uploadOffset"] == 0 and body["retryCount"] == 1
    assert body["errorCode"] is None
    up.send_all(session, dicom)
    assert up.get(session)["status"] == "SYNCED"


def test_invalid_dicom_keeps_sound_bytes_and_retries_are_capped(up: Uploads) -> None:
    junk = b"not a DICOM file at all " * 50
    session = up.ready(junk)
    up.send_all(session, junk)
    failed = up.get(session)
    assert failed["status"] == "FAILED" and failed["errorCode"] == "INVALID_DICOM" and failed["errorMessage"]
    for count in (1, 2):
        again = up.post(session, "retry")
        assert again.status_code == 200
        assert again.json()["status"] == "FAILED" and again.json()["retryCount"] == count
    exhausted = up.post(session, "retry")
    assert exhausted.status_code == 409 and "max_retries" in exhausted.json()["detail"]


def test_duplicate_under_ignore_gives_the_same_image(up: Uploads, dicom: bytes) -> None:
    first, second = up.ready(dicom, orderId="A"), up.ready(dicom, orderId="B")
    up.send_all(first, dicom, chunk=len(dicom))
    up.send_all(second, dicom, chunk=len(dicom))
    a, b = up.get(first), up.get(second)
    assert a["status"] == b["status"] == "SYNCED" and a["serverImageId"] == b["serverImageId"]
    trail = up.client.get(f"{BASE}{second['sessionId']}/events", headers=up.headers()).json()["events"]
    assert "duplicate" in trail[-1]["detail"]


def test_duplicate_under_reject_fails_the_second(make_settings, dicom: bytes) -> None:
    for up in _world(make_settings, dicom={"duplicate_policy": "reject"}):
        first, second = up.ready(dicom, orderId="A"), up.ready(dicom, orderId="B")
        up.send_all(first, dicom, chunk=len(dicom))
        up.send_all(second, dicom, chunk=len(dicom))
        assert up.get(first)["status"] == "SYNCED"
        refused = up.get(second)
        assert refused["status"] == "FAILED" and refused["errorCode"] == "DUPLICATE_INSTANCE"


def test_acknowledge_and_invalid_transitions(up: Uploads, dicom: bytes) -> None:
    session = up.ready(dicom)
    assert up.post(session, "acknowledge", {"serverImageId": "1.2.3"}).status_code == 409
    assert up.post(session, "retry").status_code == 409
    up.send_all(session, dicom, chunk=len(dicom))
    uid = up.get(session)["serverImageId"]
    assert up.post(session, "acknowledge", {"serverImageId": "1.2.3"}).status_code == 409
    assert up.post(session, "acknowledge", {}).status_code == 400
    acked = up.post(session, "acknowledge", {"serverImageId": uid})
    assert acked.status_code == 200 and acked.json()["status"] == "ACK_RECEIVED"
    assert up.post(session, "acknowledge", {"serverImageId": uid}).status_code == 200
    metadata = up.client.put(f"{BASE}{session['sessionId']}/metadata", json={}, headers=up.headers())
    assert metadata.status_code == 409
    assert up.patch(session, len(dicom), b"").status_code == 409
    assert up.client.delete(f"{BASE}{session['sessionId']}", headers=up.headers()).status_code == 405
    # the same file again: the acknowledged session, not a new upload
    again = up.create(dicom)
    assert again.status_code == 200 and again.json()["status"] == "ACK_RECEIVED"


def test_another_users_session_is_404_but_admin_sees_it(up: Uploads, dicom: bytes) -> None:
    session = up.ready(dicom)
    other = "intruder"
    up.headers(other, "uploader")
    sid = session["sessionId"]
    assert up.client.get(f"{BASE}{sid}", headers=up.headers(other)).status_code == 404
    assert up.head(session, user=other).status_code == 404
    assert up.patch(session, 0, dicom, user=other).status_code == 404
    assert up.client.get(f"{BASE}{sid}/events", headers=up.headers(other)).status_code == 404
    assert up.client.put(f"{BASE}{sid}/metadata", json={}, headers=up.headers(other)).status_code == 404
    assert up.client.get(f"{BASE}not-a-uuid", headers=up.headers()).status_code == 404
    assert up.client.get(BASE, headers=up.headers(other)).json()["sessions"] == []
    admin = up.headers("boss", "admin")
    assert up.client.get(f"{BASE}{sid}", headers=admin).json()["owner"] == "sender"
    assert [s["sessionId"] for s in up.client.get(BASE, headers=admin).json()["sessions"]] == [sid]
    # the same file from another user is that user's own session
    assert up.create(dicom, user=other).status_code == 201


def test_list_filters_by_status_and_order(up: Uploads, dicom: bytes) -> None:
    done = up.ready(dicom, orderId="O1")
    up.send_all(done, dicom, chunk=len(dicom))
    waiting = up.ready(b"x" * 10, orderId="O2")
    bad = up.ready(b"y" * 10, orderId="O1")
    up.send_all(bad, b"y" * 10)

    def ids(query: str) -> set[str]:
        answer = up.client.get(BASE + query, headers=up.headers())
        assert answer.status_code == 200, answer.text
        return {s["sessionId"] for s in answer.json()["sessions"]}

    assert ids("?status=synced") == {done["sessionId"]}
    uid = up.get(done)["serverImageId"]
    assert up.post(done, "acknowledge", {"serverImageId": uid}).status_code == 200
    assert ids("?status=synced") == ids("?status=ack_received") == {done["sessionId"]}
    assert ids("?status=pending") == {waiting["sessionId"]}
    assert ids("?status=failed") == {bad["sessionId"]}
    assert ids("?orderId=O1") == {done["sessionId"], bad["sessionId"]}
    assert ids("?status=failed,synced&orderId=O1") == {done["sessionId"], bad["sessionId"]}
    assert up.client.get(BASE + "?status=bogus", headers=up.headers()).status_code == 400


def test_abandoned_upload_expires_and_its_bytes_are_freed(up: Uploads, dicom: bytes) -> None:
    session = up.ready(dicom)
    assert up.patch(session, 0, dicom[:500]).status_code == 204
    part = up.world.settings.data_dir / "uploads" / f"{session['sessionId']}.part"
    assert part.stat().st_size == 500
    waiting = up.ready(b"z" * 100)
    up.now += dt.timedelta(seconds=up.world.settings.uploads.expire_after_seconds + 1)
    late = up.client.put(f"{BASE}{waiting['sessionId']}/metadata", json={}, headers=up.headers())
    assert late.status_code == 409 and up.get(waiting)["status"] == "EXPIRED"
    assert up.head(session).status_code == 410
    assert up.patch(session, 500, dicom[500:]).status_code == 410
    assert up.get(session)["status"] == "EXPIRED"
    assert not part.exists()
    fresh = up.create(dicom)
    assert fresh.status_code == 201 and fresh.json()["sessionId"] != session["sessionId"]


def test_sweep_expires_without_a_request(up: Uploads, dicom: bytes) -> None:
    session = up.ready(dicom)
    assert up.patch(session, 0, dicom[:500]).status_code == 204
    sessions = up.client.app.state.ctx.uploads
    assert sessions.expire_abandoned(up.now) == 0
    later = up.now + dt.timedelta(seconds=up.world.settings.uploads.expire_after_seconds + 1)
    assert sessions.expire_abandoned(later) == 1
    assert not (up.world.settings.data_dir / "uploads" / f"{session['sessionId']}.part").exists()
    trail = up.client.get(f"{BASE}{session['sessionId']}/events", headers=up.headers()).json()["events"]
    assert trail[-1]["to"] == "EXPIRED" and trail[-1]["user"] == "system" and "500 bytes freed" in trail[-1]["detail"]


def test_expiry_sweeper_thread_expires_on_its_own(up: Uploads, dicom: bytes) -> None:
    from tests.helpers import wait_until
    from web.uploads_sweep import ExpirySweeper

    session = up.ready(dicom)
    up.now += dt.timedelta(seconds=up.world.settings.uploads.expire_after_seconds + 1)
    from db import uploads as sessions_table
    from db.models import database

    def stored_status() -> str:  # read the row itself: a GET would expire the session on its own
        with database.connection_context():
            return sessions_table.get_session(session["sessionId"]).status

    assert stored_status() == "METADATA_UPLOADED"
    sweeper = ExpirySweeper(up.client.app.state.ctx.uploads).start()
    try:
        assert wait_until(lambda: stored_status() == "EXPIRED", timeout=10)
    finally:
        sweeper.stop()
    assert not sweeper._thread.is_alive()


def test_events_trail_records_every_transition(up: Uploads, dicom: bytes) -> None:
    session = up.ready(dicom)
    up.send_all(session, dicom)
    uid = up.get(session)["serverImageId"]
    assert up.post(session, "acknowledge", {"serverImageId": uid}).status_code == 200
    events = up.client.get(f"{BASE}{session['sessionId']}/events", headers=up.headers()).json()["events"]
    assert [(e["from"], e["to"]) for e in events] == [
        (None, "QUEUED"), ("QUEUED", "METADATA_UPLOADED"), ("METADATA_UPLOADED", "BINARY_UPLOADING"),
        ("BINARY_UPLOADING", "SYNCED"), ("SYNCED", "ACK_RECEIVED")]
    assert {e["user"] for e in events} == {"sender"}
    assert all(e["at"].endswith("Z") for e in events)


def test_full_disk_fails_the_chunk_with_507_and_loses_nothing(up: Uploads, dicom: bytes,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    session = up.ready(dicom)
    assert up.patch(session, 0, dicom[:1000]).status_code == 204
    real_pwrite = os.pwrite

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("web.uploads_parts.os.pwrite", full)
    refused = up.patch(session, 1000, dicom[1000:2000])
    assert refused.status_code == 507 and refused.json()["title"] == "Insufficient Storage"
    assert up.head(session).headers["upload-offset"] == "1000"
    part = up.world.settings.data_dir / "uploads" / f"{session['sessionId']}.part"
    assert part.read_bytes() == dicom[:1000]
    monkeypatch.setattr("web.uploads_parts.os.pwrite", real_pwrite)
    assert up.patch(session, 1000, dicom[1000:]).headers["upload-session-status"] == "SYNCED"


def test_read_only_server_answers_503(make_settings, dicom: bytes) -> None:
    settings = make_settings()
    node = Node(settings)
    node.open_store()
    try:
        with TestClient(create_app(settings, clock=FakeClock())) as client:
            up = Uploads(WebWorld(settings, node.ingestor, client, FakeClock()))
            session = up.ready(dicom)
            answer = up.patch(session, 0, dicom)
            assert answer.status_code == 503 and answer.headers["retry-after"]
            assert up.head(session).headers["upload-offset"] == "0"
    finally:
        node.stop()


def test_cors_exposes_the_tus_headers(make_settings, dicom: bytes) -> None:
    origin = "https://viewer.example"
    for up in _world(make_settings, web={"cors_origins": [origin]}):
        session = up.ready(dicom)
        preflight = up.client.options(session["uploadUrl"], headers={
            "Origin": origin, "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization,content-type,tus-resumable,upload-offset,upload-checksum"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "PATCH" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert all(h in allowed for h in ("authorization", "tus-resumable", "upload-offset", "upload-checksum"))
        head = up.client.head(session["uploadUrl"], headers={**TUS, **up.headers(), "Origin": origin})
        exposed = head.headers["access-control-expose-headers"].lower()
        for name in ("upload-offset", "upload-length", "upload-expires", "tus-resumable", "location", "etag"):
            assert name in exposed
        refused = up.client.options(session["uploadUrl"], headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "PATCH"})
        assert refused.status_code == 400


def test_no_cors_headers_without_origins(up: Uploads, dicom: bytes) -> None:
    answer = up.client.get("/healthz", headers={"Origin": "https://viewer.example"})
    assert "access-control-allow-origin" not in answer.headers


def test_whole_flow_on_both_catalogues(make_settings, database_url: str, dicom: bytes) -> None:
    """The statements written by hand in db.uploads, on SQLite and on PostgreSQL."""
    for up in _world(make_settings, database={"url": database_url}):
        session = up.ready(dicom, orderId="O1", metadata={"k": "v"})
        assert up.create(dicom, orderId="O1").json()["sessionId"] == session["sessionId"]
        assert up.patch(session, 0, dicom[:2000]).status_code == 204
        assert up.patch(session, 0, dicom[:2000]).status_code == 409
        assert up.patch(session, 2000, dicom[2000:]).headers["upload-session-status"] == "SYNCED"
        state = up.get(session)
        assert state["metadata"] == {"source": "test"} and state["uploadOffset"] == len(dicom)
        assert up.post(session, "acknowledge", {"serverImageId": state["serverImageId"]}).json()["status"] == \
            "ACK_RECEIVED"
        events = up.client.get(f"{BASE}{session['sessionId']}/events", headers=up.headers()).json()["events"]
        assert [e["to"] for e in events] == ["QUEUED", "METADATA_UPLOADED", "BINARY_UPLOADING", "SYNCED",
                                             "ACK_RECEIVED"]
        listed = up.client.get(BASE + "?status=synced&orderId=O1", headers=up.headers()).json()["sessions"]
        assert [s["sessionId"] for s in listed] == [session["sessionId"]]


def test_a_chunk_cut_off_by_a_disconnect_keeps_nothing(up: Uploads, dicom: bytes) -> None:
    import anyio

    session = up.ready(dicom)
    app = up.client.app
    token = up.headers()["Authorization"].encode()
    messages = [{"type": "http.request", "body": dicom[:500], "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "PATCH", "path": session["uploadUrl"], "raw_path": session["uploadUrl"].encode(),
             "query_string": b"", "root_path": "", "scheme": "http", "server": ("testserver", 80),
             "client": ("127.0.0.1", 1234), "http_version": "1.1", "asgi": {"version": "3.0"},
             "headers": [(b"authorization", token), (b"tus-resumable", b"1.0.0"), (b"upload-offset", b"0"),
                         (b"content-type", OCTETS.encode()), (b"content-length", str(len(dicom)).encode())]}
    anyio.run(app, scope, receive, send)
    assert sent[0]["status"] == 400
    assert up.head(session).headers["upload-offset"] == "0"
