"""The admin API (``/api/admin/...``, DELETE of a study or series) through TestClient: roles,
users, figures, and deletion that removes rows, counts and files of one study while another
stays intact, keeping the audit trail and upload-session rows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from db import accounts
from db.admin import delete_series
from db.catalogue import catalogue_stats
from db.models import Instance, Patient, Series, Study, database
from db.uploads import UploadSession
from node.runtime import Node
from tests.helpers import make_dataset, run_cli, write_config
from web.app import create_app
from tests.web_support import FakeClock, WebWorld, web  # noqa: F401 - fixture

ADMIN = "boss"


def _admin(world: WebWorld) -> dict[str, str]:
    return world.headers(ADMIN, "admin")


def _study(world: WebWorld, patient_id: str, series: dict[str, tuple[str, int]]) -> str:
    """A study of one patient: series UID -> (modality, instance count)."""
    study_uid = generate_uid()
    world.ingest(*[make_dataset(study_uid=study_uid, series_uid=uid, patient_id=patient_id, modality=modality,
                                series_number=number, instance_number=n + 1)
                   for number, (uid, (modality, count)) in enumerate(series.items(), 1) for n in range(count)])
    return study_uid


def _files(world: WebWorld, study_uid: str) -> list[Path]:
    with database.connection_context():
        rows = (Instance.select(Instance.path).join(Series).join(Study)
                .where(Study.study_uid == study_uid).tuples())
        return [world.settings.data_dir / p for (p,) in rows]


def _counts(study_uid: str) -> tuple[int, int] | None:
    with database.connection_context():
        row = Study.select(Study.num_series, Study.num_instances).where(Study.study_uid == study_uid).tuples().first()
    return row


# --- roles -----------------------------------------------------------------------------------

ROUTES = [
    ("GET", "/api/admin/stats", None),
    ("GET", "/api/admin/users/", None),
    ("POST", "/api/admin/users/", {"username": "x1", "password": "long enough pw", "role": "viewer"}),
    ("PATCH", "/api/admin/users/boss", {"role": "viewer"}),
    ("DELETE", "/api/pacs/studies/1.2.3/", None),
    ("DELETE", "/api/pacs/studies/1.2.3/series/1.2.3.4/", None),
]


@pytest.mark.parametrize("role", ["viewer", "uploader"])
def test_every_admin_route_refuses_other_roles_and_anonymous(web, role):
    _admin(web)
    for method, url, body in ROUTES:
        anonymous = web.client.request(method, url, json=body)
        assert anonymous.status_code == 401, (method, url)
        refused = web.client.request(method, url, json=body, headers=web.headers(f"a-{role}", role))
        assert refused.status_code == 403, (method, url, refused.text)
        assert refused.headers["content-type"] == "application/problem+json"
    with database.connection_context():
        assert accounts.find_user("x1") is None and accounts.find_user(ADMIN).role == "admin"


# --- figures ---------------------------------------------------------------------------------

def test_stats_are_the_figures_of_node_stats(web):
    _study(web, "P1", {generate_uid(): ("CT", 3)})
    _study(web, "P2", {generate_uid(): ("MR", 2), generate_uid(): ("CT", 1)})
    answer = web.client.get("/api/admin/stats", headers=_admin(web))
    assert answer.status_code == 200
    figures = answer.json()
    with database.connection_context():
        expected = catalogue_stats()
    assert {k: figures[k] for k in ("patients", "studies", "series", "instances", "bytes")} == {
        "patients": 2, "studies": 2, "series": 3, "instances": 6, "bytes": expected.bytes}
    assert expected.bytes > 0 and 0 < figures["diskFreeBytes"] <= figures["diskTotalBytes"]


# --- users -----------------------------------------------------------------------------------

def test_users_are_listed_added_changed_disabled_and_enabled(web):
    headers = _admin(web)
    added = web.client.post("/api/admin/users/", headers=headers,
                            json={"username": "nurse.1", "password": "long enough pw", "role": "uploader"})
    assert added.status_code == 201 and added.json()["role"] == "uploader"
    listed = web.client.get("/api/admin/users/", headers=headers).json()["users"]
    assert [(u["username"], u["role"], u["disabled"]) for u in listed] == [
        (ADMIN, "admin", False), ("nurse.1", "uploader", False)]
    pair = web.login("nurse.1", "long enough pw")

    promoted = web.client.patch("/api/admin/users/nurse.1", headers=headers, json={"role": "viewer"})
    assert promoted.status_code == 200 and promoted.json()["role"] == "viewer"
    refreshed = web.client.post("/api/token/refresh/", json={"refresh": pair["refresh"]})
    assert refreshed.status_code == 200  # the next access token carries the new role
    reader = {"Authorization": f"Bearer {refreshed.json()['access']}"}
    assert web.client.get("/api/pacs/studies/", headers=reader).status_code == 200

    disabled = web.client.patch("/api/admin/users/nurse.1", headers=headers, json={"disabled": True})
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    assert web.client.post("/api/token/", json={"username": "nurse.1", "password": "long enough pw"}).status_code == 401
    again = web.client.post("/api/token/refresh/", json={"refresh": refreshed.json()["refresh"]})
    assert again.status_code == 401  # its refresh tokens were revoked
    enabled = web.client.patch("/api/admin/users/nurse.1", headers=headers, json={"disabled": False})
    assert enabled.json()["disabled"] is False
    web.login("nurse.1", "long enough pw")


def test_user_changes_that_cannot_be_made(web):
    headers = _admin(web)
    new = {"username": "dup", "password": "long enough pw", "role": "viewer"}
    assert web.client.post("/api/admin/users/", headers=headers, json=new).status_code == 201
    cases = [
        ("post", "/api/admin/users/", new, 409),
        ("post", "/api/admin/users/", {**new, "username": "bad name"}, 400),
        ("post", "/api/admin/users/", {**new, "username": "short", "password": "short"}, 400),
        ("post", "/api/admin/users/", {**new, "username": "r", "role": "root"}, 400),
        ("post", "/api/admin/users/", {"username": "r"}, 400),
        ("patch", "/api/admin/users/nobody", {"role": "viewer"}, 404),
        ("patch", "/api/admin/users/dup", {"role": "root"}, 400),
        ("patch", "/api/admin/users/dup", {"disabled": "yes"}, 400),
        ("patch", "/api/admin/users/dup", {"password": "x"}, 400),
        ("patch", f"/api/admin/users/{ADMIN}", {"role": "viewer"}, 409),  # the last active admin
        ("patch", f"/api/admin/users/{ADMIN}", {"disabled": True}, 409),
    ]
    for method, url, body, status in cases:
        answer = getattr(web.client, method)(url, headers=headers, json=body)
        assert answer.status_code == status, (url, body, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
    assert web.client.post("/api/admin/users/", headers=headers, content=b"[1]").status_code == 400
    # with a second admin, the first may step down
    web.client.patch("/api/admin/users/dup", headers=headers, json={"role": "admin"})
    assert web.client.patch(f"/api/admin/users/{ADMIN}", headers=headers, json={"role": "viewer"}).status_code == 200


def test_user_role_from_the_command_line(tmp_path):
    config = write_config(tmp_path)
    assert run_cli(config, "user", "add", "eve", "--role", "viewer", input="eve's password\n").returncode == 0
    changed = run_cli(config, "user", "role", "eve", "--role", "uploader")
    assert changed.returncode == 0 and "uploader" in changed.stdout
    assert run_cli(config, "user", "list").stdout.split()[:3] == ["eve", "uploader", "active"]
    assert run_cli(config, "user", "role", "nobody", "--role", "admin").returncode == 1


# --- deletion --------------------------------------------------------------------------------

def test_delete_a_study_removes_its_rows_and_files_and_leaves_another_intact(web):
    doomed = _study(web, "P1", {generate_uid(): ("CT", 4), generate_uid(): ("MR", 2)})
    kept_series = generate_uid()
    kept = _study(web, "P2", {kept_series: ("CT", 3)})
    series = web.get(f"/api/pacs/studies/{doomed}/series/").json()["series"]  # audited read
    assert all(web.get(s["thumbnailUrl"]).status_code == 200 for s in series)
    thumbnails = list((web.settings.data_dir / "cache" / "thumbnails").rglob("*.jpg"))
    assert len(thumbnails) == 2
    doomed_files, kept_files = _files(web, doomed), _files(web, kept)
    with database.connection_context():
        UploadSession.create(session_id="s-1", owner="sender", file_name="a.dcm", size=1, sha256="0" * 64,
                             content_type="application/dicom", status="ACK_RECEIVED",
                             server_image_id="1.2.3", created_at=dt.datetime(2024, 1, 1),
                             updated_at=dt.datetime(2024, 1, 1))

    answer = web.client.delete(f"/api/pacs/studies/{doomed}/", headers=_admin(web))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["instances"] == 6 and len(body["seriesUids"]) == 2 and body["filesRemoved"] == 6
    assert body["studyRemoved"] is True and body["patientRemoved"] is True
    assert not any(p.exists() for p in doomed_files) and all(p.exists() for p in kept_files)
    assert not any(p.exists() for p in thumbnails)
    assert web.get(f"/api/pacs/studies/{doomed}/series/").status_code == 404
    assert web.get(f"/api/pacs/studies/{kept}/series/").json()["series"][0]["imageCount"] == 3
    listed = web.get("/api/pacs/studies/").json()
    assert [s["studyUid"] for s in listed["studies"]] == [kept] and listed["total"] == 1
    with database.connection_context():
        stats = catalogue_stats()
        assert (stats.patients, stats.studies, stats.series, stats.instances) == (1, 1, 1, 3)
        assert stats.bytes == sum(p.stat().st_size for p in kept_files)
        actions = [(e.username, e.action) for e in accounts.iter_audit(doomed)]
        assert actions == [("reader", "series"), (ADMIN, "delete-study")]
        assert UploadSession.select().count() == 1
    assert web.client.delete(f"/api/pacs/studies/{doomed}/", headers=_admin(web)).status_code == 404


def test_delete_a_series_updates_the_counts_and_modalities(web):
    ct, mr = generate_uid(), generate_uid()
    study = _study(web, "P1", {ct: ("CT", 3), mr: ("MR", 2)})
    other = _study(web, "P1", {generate_uid(): ("CT", 1)})  # same patient, another study
    mr_files = [p for p in _files(web, study) if p.exists()][3:]
    answer = web.client.delete(f"/api/pacs/studies/{study}/series/{mr}/", headers=_admin(web))
    assert answer.status_code == 200, answer.text
    assert answer.json()["instances"] == 2 and answer.json()["studyRemoved"] is False
    assert not any(p.exists() for p in mr_files)
    assert _counts(study) == (1, 3)
    listed = web.get("/api/pacs/studies/", params={"StudyInstanceUID": study}).json()["studies"][0]
    assert listed["modalitiesInStudy"] == ["CT"] and listed["numberOfInstances"] == 3
    assert web.get("/api/pacs/studies/", params={"ModalitiesInStudy": "MR"}).json()["total"] == 0
    with database.connection_context():
        patient = Patient.get(Patient.patient_id == "P1")
        assert (patient.num_studies, patient.num_series, patient.num_instances) == (2, 2, 4)
        assert [e.action for e in accounts.iter_audit(study)] == ["delete-series"]

    # the last series takes its study with it; the patient stays for its other study
    last = web.client.delete(f"/api/pacs/studies/{study}/series/{ct}/", headers=_admin(web)).json()
    assert last["studyRemoved"] is True and last["patientRemoved"] is False
    assert _counts(study) is None and _counts(other) == (1, 1)
    with database.connection_context():
        patient = Patient.get(Patient.patient_id == "P1")
        assert (patient.num_studies, patient.num_series, patient.num_instances) == (1, 1, 1)


def test_delete_answers_404_and_400(web):
    study = _study(web, "P1", {generate_uid(): ("CT", 1)})
    headers = _admin(web)
    for url, status in [
        (f"/api/pacs/studies/{generate_uid()}/", 404),
        (f"/api/pacs/studies/{study}/series/{generate_uid()}/", 404),
        (f"/api/pacs/studies/{generate_uid()}/series/{generate_uid()}/", 404),
        ("/api/pacs/studies/not-a-uid/", 400),
        (f"/api/pacs/studies/{study}/series/1..2/", 400),
    ]:
        answer = web.client.delete(url, headers=headers)
        assert answer.status_code == status, (url, answer.text)
    assert _counts(study) == (1, 1)


def test_a_deleted_series_can_be_stored_again_through_the_same_writer(web):
    """The ingest writer remembers row ids of series and studies: after a deletion it must not
    insert under a row that is gone."""
    series_uid = generate_uid()
    study = _study(web, "P1", {series_uid: ("CT", 2)})
    again = [make_dataset(study_uid=study, series_uid=series_uid, patient_id="P1", instance_number=n)
             for n in (1, 2)]
    with database.connection_context():
        delete_series(study, series_uid, ADMIN, None)
    web.ingest(again[0])
    web.ingest(again[1])
    assert _counts(study) == (1, 2)
    assert all(p.exists() for p in _files(web, study))
    assert web.get(f"/api/pacs/studies/{study}/series/").json()["series"][0]["imageCount"] == 2


@pytest.mark.parametrize("through_writer", [True, False], ids=["writer-thread", "own-connection"])
def test_deletion_on_both_catalogues_with_and_without_the_ingest_writer(make_settings, database_url,
                                                                        through_writer):
    """As ``serve`` builds the app, deletion runs in the writer thread between ingest batches;
    without an ingestor, on a connection of its own (row locks on PostgreSQL)."""
    settings = make_settings(database={"url": database_url})
    node = Node(settings)
    ingestor = node.open_store()
    try:
        with TestClient(create_app(settings, ingestor=ingestor if through_writer else None)) as client:
            world = WebWorld(settings, ingestor, client, FakeClock())
            series_uid = generate_uid()
            study = _study(world, "P1", {series_uid: ("CT", 3), generate_uid(): ("MR", 1)})
            files = _files(world, study)
            answer = client.delete(f"/api/pacs/studies/{study}/series/{series_uid}/", headers=_admin(world))
            assert answer.status_code == 200 and answer.json()["filesRemoved"] == 3
            assert sum(p.exists() for p in files) == 1
            world.ingest(make_dataset(study_uid=study, series_uid=series_uid, patient_id="P1"))
            assert _counts(study) == (2, 2)
    finally:
        node.stop()
