"""The admin page in Chromium against ``python -m node serve``: catalogue figures, adding a user,
changing a role, disabling a user, deleting a series after a confirmation; and the pages and API
a viewer or uploader may not reach."""

from __future__ import annotations

import pytest

from tests.viewer_fixtures import (
    PASSWORD,
    SeriesSpec,
    chromium_path,
    http_json,
    screenshot,
    sign_in,
    store_with_storescu,
    viewer_node,
    write_phantom_study,
)
from tests.helpers import have_dcmtk

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.browser,
    pytest.mark.skipif(not have_dcmtk(), reason="DCMTK storescu not installed"),
    pytest.mark.skipif(chromium_path() is None, reason="chromium not installed"),
]

SPECS = [SeriesSpec(1, "AXIAL 2.5 mm", slices=5, size=64), SeriesSpec(2, "CORONAL MPR", slices=3, size=64),
         SeriesSpec(3, "T1 8-bit", modality="MR", slices=2, size=64, bits=8)]


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("admin-data")
    doomed = write_phantom_study(folder / "doomed", SPECS, patient_name="DELETE^ME", patient_id="P-DEL-1")
    kept = write_phantom_study(folder / "kept", SPECS[:1], patient_name="KEEP^ME", patient_id="P-KEEP-1")
    return doomed, kept


@pytest.fixture(scope="module")
def node(tmp_path_factory, studies):
    doomed, kept = studies
    users = (("admin", "admin"), ("reader", "viewer"), ("sender", "uploader"), ("locum", "viewer"))
    with viewer_node(tmp_path_factory.mktemp("admin-node"), users=users) as running:
        store_with_storescu(running.dimse_port, doomed.files + kept.files)
        yield running


def open_admin(page, node) -> None:
    sign_in(page, node.base_url, "admin")
    page.get_by_test_id("nav-admin").click()
    page.get_by_test_id("user-row").first.wait_for(timeout=10000)
    page.get_by_test_id("stat-studies").wait_for(timeout=10000)


def user_row(page, name: str):
    return page.locator(f"[data-testid=user-row][data-username='{name}']")


def api_users(node) -> dict[str, dict]:
    status, body = http_json(node.base_url + "api/admin/users/", token=node.token("admin"))
    assert status == 200, body
    return {u["username"]: u for u in body["users"]}


def test_admin_page_shows_the_figures_of_stats(page, node):
    open_admin(page, node)
    status, figures = http_json(node.base_url + "api/admin/stats", token=node.token("admin"))
    assert status == 200
    for key in ("patients", "studies", "series", "instances"):
        assert page.get_by_test_id(f"stat-{key}").inner_text() == f"{figures[key]:,}"
    assert figures["studies"] >= 1 and figures["instances"] >= 1
    assert page.get_by_test_id("stat-bytes").inner_text().endswith("B")
    assert " of " in page.get_by_test_id("stat-disk-free").inner_text()
    assert page.get_by_test_id("admin-unavailable").count() == 0
    screenshot(page, "admin-page")


def test_admin_adds_a_user_changes_a_role_and_disables_one(page, node):
    open_admin(page, node)
    page.get_by_test_id("add-user-name").fill("nurse.kim")
    page.get_by_test_id("add-user-password").fill(PASSWORD)
    page.get_by_test_id("add-user-role").select_option("uploader")
    page.get_by_test_id("add-user").click()
    user_row(page, "nurse.kim").wait_for(timeout=10000)
    assert api_users(node)["nurse.kim"]["role"] == "uploader"
    assert http_json(node.base_url + "api/token/", {"username": "nurse.kim", "password": PASSWORD})[0] == 200

    # the same name again is refused with the server's reason, and the form says so
    page.get_by_test_id("add-user-name").fill("nurse.kim")
    page.get_by_test_id("add-user-password").fill(PASSWORD)
    page.get_by_test_id("add-user").click()
    page.get_by_test_id("add-user-message").filter(has_text="exists already").wait_for(timeout=10000)

    user_row(page, "nurse.kim").get_by_test_id("user-role").select_option("viewer")
    page.wait_for_function("() => document.querySelector(\"[data-testid=user-row][data-username='nurse.kim'] select\")"
                           "?.value === 'viewer'", timeout=10000)
    page.locator(".toast").filter(has_text="nurse.kim is now viewer").wait_for(timeout=10000)
    assert api_users(node)["nurse.kim"]["role"] == "viewer"

    user_row(page, "locum").get_by_test_id("user-disable").click()
    dialog = page.get_by_test_id("confirm-dialog")
    dialog.wait_for(timeout=5000)
    assert "Disable locum?" in dialog.inner_text()
    screenshot(page, "admin-disable-confirm")
    page.get_by_test_id("confirm-ok").click()
    page.locator("[data-testid=user-row][data-username='locum'][data-state=disabled]").wait_for(timeout=10000)
    assert api_users(node)["locum"]["disabled"] is True
    status, problem = http_json(node.base_url + "api/token/", {"username": "locum", "password": PASSWORD})
    assert status == 401, problem
    assert user_row(page, "locum").get_by_test_id("user-enable").count() == 1
    screenshot(page, "admin-users")


def test_admin_deletes_a_series_only_after_confirming(page, node, studies):
    doomed, kept = studies
    token = node.token("admin")
    before = http_json(node.base_url + "api/admin/stats", token=token)[1]
    open_admin(page, node)
    page.get_by_test_id("delete-find").fill("P-DEL-1")
    page.get_by_test_id("delete-search").click()
    study = page.locator(f"[data-testid=delete-study-row][data-study-uid='{doomed.study_uid}']")
    study.wait_for(timeout=10000)
    assert study.get_by_test_id("delete-series-row").count() == 3
    assert "DELETE, ME" in study.inner_text() and page.get_by_test_id("delete-study-row").count() == 1
    coronal = doomed.series_uid(2)
    button = study.locator(f"[data-testid=delete-series][data-series-uid='{coronal}']")

    button.click()  # cancelled: nothing happens
    page.get_by_test_id("confirm-dialog").wait_for(timeout=5000)
    page.get_by_test_id("confirm-cancel").click()
    page.get_by_test_id("confirm-dialog").wait_for(state="detached", timeout=5000)
    series_url = node.base_url + f"api/pacs/studies/{doomed.study_uid}/series/"
    assert len(http_json(series_url, token=token)[1]["series"]) == 3

    button.click()
    dialog = page.get_by_test_id("confirm-dialog")
    dialog.wait_for(timeout=5000)
    text = dialog.inner_text()
    assert "series 2" in text and "CORONAL MPR" in text and "DELETE, ME" in text and "3 images" in text
    screenshot(page, "admin-delete-confirm")
    page.get_by_test_id("confirm-ok").click()
    page.get_by_test_id("delete-result").filter(has_text="Deleted series 2").wait_for(timeout=10000)
    page.wait_for_function("() => document.querySelectorAll('[data-testid=delete-series-row]').length === 2",
                           timeout=10000)
    after = http_json(node.base_url + "api/admin/stats", token=token)[1]
    assert (after["studies"], after["series"], after["instances"]) == (
        before["studies"], before["series"] - 1, before["instances"] - 3)
    page.wait_for_function("n => document.querySelector('[data-testid=stat-instances]')?.textContent === n",
                           arg=f"{after['instances']:,}", timeout=10000)
    remaining = http_json(series_url, token=token)[1]["series"]
    assert sorted(s["seriesNumber"] for s in remaining) == [1, 3]
    kept_series = http_json(node.base_url + f"api/pacs/studies/{kept.study_uid}/series/", token=token)[1]
    assert [s["imageCount"] for s in kept_series["series"]] == [5]
    screenshot(page, "admin-deleted-series")


@pytest.mark.parametrize("user, home", [("reader", "studies"), ("sender", "upload")])
def test_other_roles_cannot_reach_the_admin_page_or_its_api(page, node, studies, user, home):
    doomed, _ = studies
    sign_in(page, node.base_url, user)
    assert page.get_by_test_id("nav-admin").count() == 0
    page.goto(f"{node.base_url}#/admin")
    forbidden = page.get_by_test_id("forbidden")
    forbidden.wait_for(timeout=10000)
    assert "needs the role admin" in forbidden.inner_text()
    assert page.get_by_test_id("admin-users").count() == 0
    screenshot(page, f"admin-refused-{user}")
    token = node.token(user)
    base = node.base_url
    for method, url, body in [
        ("GET", "api/admin/stats", None), ("GET", "api/admin/users/", None),
        ("POST", "api/admin/users/", {"username": "intruder", "password": PASSWORD, "role": "admin"}),
        ("PATCH", f"api/admin/users/{user}", {"role": "admin"}),
        ("DELETE", f"api/pacs/studies/{doomed.study_uid}/", None),
        ("DELETE", f"api/pacs/studies/{doomed.study_uid}/series/{doomed.series_uid(1)}/", None),
    ]:
        status, problem = http_json(base + url, body, token=token, method=method)
        assert status == 403, (method, url, problem)
        assert problem["status"] == 403
    assert "intruder" not in api_users(node)


def test_a_viewer_cannot_reach_the_upload_page_and_the_upload_api_refuses_it(page, node):
    sign_in(page, node.base_url, "reader")
    assert page.get_by_test_id("nav-upload").count() == 0
    page.goto(f"{node.base_url}#/upload")
    page.get_by_test_id("forbidden").wait_for(timeout=10000)
    assert page.get_by_test_id("upload-drop").count() == 0
    screenshot(page, "upload-refused-viewer")
    status, problem = http_json(node.base_url + "api/upload-sessions/", {
        "fileName": "a.dcm", "size": 10, "sha256": "0" * 64, "contentType": "application/dicom"},
        token=node.token("reader"))
    assert status == 403, problem
