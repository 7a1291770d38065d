"""The upload page in Chromium against ``python -m node serve``: a folder from the "Load from
USB/DVD" picker goes through upload sessions (checksummed tus chunks) with a progress bar per file
and for the batch, non-DICOM files are skipped with a message, and the new study opens."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.viewer_fixtures import (
    SeriesSpec,
    chromium_path,
    http_json,
    screenshot,
    sign_in,
    viewer_node,
    write_phantom_study,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason="chromium not installed"),
]

# the 512 x 512 slices (512 kB each) take two 512 KiB chunks: per-file progress shows in between
SPECS = [SeriesSpec(1, "AXIAL 512", slices=3, size=512), SeriesSpec(2, "SCOUT", slices=4, size=64)]
NOT_DICOM = {"README.TXT": b"Study CD of GENERAL HOSPITAL\r\n", "AUTORUN.INF": b"[autorun]\r\nopen=viewer.exe\r\n",
             "VIEWER/logo.png": b"\x89PNG\r\n\x1a\n" + bytes(300)}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A folder as a CD or USB stick holds it: images in a subfolder, and some files that are not DICOM."""
    root = tmp_path_factory.mktemp("usb") / "STICK"
    study = write_phantom_study(root / "DICOM" / "ST000001", SPECS, patient_name="UPLOAD^USB",
                                patient_id="P-USB-7")
    for name, data in NOT_DICOM.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root, study


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with viewer_node(tmp_path_factory.mktemp("upload-node")) as running:
        yield running


WATCH = """() => {
    // every change of a file row's state and bar, and of the batch bar, as the page shows it
    window.seen = { files: {}, batch: [] };
    const note = () => {
        for (const row of document.querySelectorAll('[data-testid=upload-file]')) {
            const path = row.dataset.path, fill = row.querySelector('.bar-fill').style.width || '0%';
            const list = (window.seen.files[path] ||= []);
            const last = list[list.length - 1];
            if (!last || last.state !== row.dataset.state || last.width !== fill)
                list.push({ state: row.dataset.state, width: fill, text: row.querySelector('.file-state').textContent });
        }
        const bar = document.querySelector('[data-testid=upload-progress]');
        if (!bar) return;  // the page has moved on (to the study opened)
        const b = [Number(bar.dataset.bytesDone), Number(bar.dataset.bytesTotal), Number(bar.dataset.done)];
        const lb = window.seen.batch[window.seen.batch.length - 1];
        if (!lb || lb.join() !== b.join()) window.seen.batch.push(b);
    };
    new MutationObserver(note).observe(document.getElementById('app'),
        { subtree: true, childList: true, attributes: true, characterData: true });
}"""


def settled(page) -> None:
    """Bars ease into their width (CSS transitions): a screenshot waits until they are there."""
    page.wait_for_function("() => document.getAnimations().every(a => a.playState !== 'running')", timeout=5000)


def upload_folder(page, folder: Path) -> None:
    page.get_by_test_id("upload-drop").wait_for(timeout=10000)
    page.evaluate(WATCH)
    page.get_by_test_id("upload-folder").set_input_files(folder)
    page.get_by_test_id("upload-summary").wait_for(state="visible", timeout=60000)


def test_a_folder_upload_shows_progress_skips_non_dicom_and_opens_the_new_study(page, node, media):
    root, study = media
    patches: list[str] = []
    page.on("request", lambda r: patches.append(r.url) if r.method == "PATCH" else None)
    sign_in(page, node.base_url, "admin")
    page.get_by_test_id("nav-upload").click()
    upload_folder(page, root)

    rows = page.get_by_test_id("upload-file")
    assert rows.count() == len(study.files) + len(NOT_DICOM)
    dicom = len(study.files)
    assert page.get_by_test_id("upload-counts").inner_text() == (
        f"{dicom} stored, 0 already on the server, {len(NOT_DICOM)} skipped, 0 failed.")
    seen = page.evaluate("window.seen")
    for name in NOT_DICOM:
        path = f"STICK/{name}"
        row = page.locator(f"[data-testid=upload-file][data-path='{path}']")
        assert row.get_attribute("data-state") == "skipped"
        assert "skipped: not a DICOM file" in row.inner_text()
    for path in (f"STICK/DICOM/ST000001/{p.name}" for p in study.files):
        states = seen["files"][path]
        assert states[-1] == {"state": "stored", "width": "100%", "text": "stored"}, states
        assert "sending" in [s["state"] for s in states], states
    big = seen["files"]["STICK/DICOM/ST000001/s01_0000.dcm"]
    partway = [float(s["width"].rstrip("%")) for s in big if s["state"] == "sending"]
    assert any(0 < w < 100 for w in partway), big  # the bar moved after the first chunk
    assert len(patches) >= 3 * 2 + 4  # two chunks per 512 x 512 slice, one per scout (more on a retry)

    # the batch bar: bytes only grow, pass through values in between, end at the total
    batch = seen["batch"]
    total = batch[-1][1]
    assert batch[-1] == [total, total, dicom] and total == sum(p.stat().st_size for p in study.files)
    assert all(a[0] <= b[0] for a, b in zip(batch, batch[1:]))
    assert any(0 < done < total for done, _, _ in batch)
    bar = page.get_by_test_id("upload-progress")
    assert bar.get_attribute("data-done") == bar.get_attribute("data-total") == str(dicom)
    assert f"{dicom} / {dicom} files" in bar.inner_text()
    settled(page)
    screenshot(page, "upload-done")

    # the server holds the study; the summary opens it in the viewer
    token = node.token("admin")
    listed = http_json(node.base_url + "api/pacs/studies/?PatientID=P-USB-7", token=token)[1]
    assert [s["studyUid"] for s in listed["studies"]] == [study.study_uid]
    assert listed["studies"][0]["numberOfInstances"] == dicom
    uploaded = page.get_by_test_id("uploaded-study")
    assert uploaded.count() == 1 and "UPLOAD, USB" in uploaded.inner_text()
    uploaded.get_by_test_id("open-uploaded-study").click()
    page.wait_for_function(
        "n => document.querySelectorAll('[data-testid=series-progress][data-state=complete]').length === n",
        arg=len(SPECS), timeout=30000)
    assert page.get_by_test_id("series-thumb").count() == len(SPECS)
    settled(page)
    screenshot(page, "upload-opened-study")
    # and the study list shows it at once
    page.get_by_test_id("nav-studies").click()
    page.locator(f"[data-testid=study-row][data-study-uid='{study.study_uid}']").wait_for(timeout=10000)


def test_an_uploader_sends_a_folder_twice_and_cannot_open_the_study(page, node, media):
    """Sessions belong to their sender: the uploader's first batch is sent in full (the node keeps
    its one copy of each instance), the second finds every file on the server already."""
    root, study = media
    dicom, skipped = len(study.files), len(NOT_DICOM)
    sign_in(page, node.base_url, "sender")
    assert page.get_by_test_id("nav-studies").count() == 0  # uploaders do not read studies
    upload_folder(page, root)
    counts = page.get_by_test_id("upload-counts")
    assert counts.inner_text() == f"{dicom} stored, 0 already on the server, {skipped} skipped, 0 failed."
    page.get_by_test_id("upload-folder").set_input_files(root)
    counts.filter(has_text=f"{dicom} stored, {dicom} already on the server, {2 * skipped} skipped, 0 failed.").wait_for(
        timeout=60000)
    again = page.locator("[data-testid=upload-file][data-state=present]")
    assert again.count() == dicom and "already on the server" in again.first.inner_text()
    assert page.get_by_test_id("uploaded-study").count() == 1
    assert page.get_by_test_id("open-uploaded-study").count() == 0
    listed = http_json(node.base_url + "api/pacs/studies/?PatientID=P-USB-7", token=node.token("admin"))[1]
    assert listed["studies"][0]["numberOfInstances"] == dicom  # nothing stored twice
    settled(page)
    screenshot(page, "upload-twice-uploader")


DROP = """async files => {
    // what a drop from the file manager hands the page: a DataTransfer holding File objects
    const transfer = new DataTransfer();
    for (const [name, b64] of files) {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        transfer.items.add(new File([bytes], name, { type: name.endsWith('.dcm') ? 'application/dicom' : '' }));
    }
    const zone = document.querySelector('[data-testid=upload-drop]');
    for (const type of ['dragenter', 'dragover', 'drop'])
        zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
}"""


def test_dropped_files_a_failed_file_shows_its_error_and_a_retry_completes_it(page, node, tmp_path):
    study = write_phantom_study(tmp_path / "drop", [SeriesSpec(1, "DROPPED", slices=3, size=64)],
                                patient_name="DROP^FILES", patient_id="P-DROP-3")
    broken = study.files[1].name
    files = [(p.name, base64.b64encode(p.read_bytes()).decode()) for p in study.files]
    files.append(("report.pdf", base64.b64encode(b"%PDF-1.4 not an image").decode()))
    sessions: dict[str, str] = {}

    def remember(response) -> None:  # noqa: ANN001 - playwright Response
        if response.request.method == "POST" and response.url.endswith("/api/upload-sessions/"):
            body = response.json()
            sessions[body["sessionId"]] = body["fileName"]

    def refuse(route) -> None:  # noqa: ANN001 - playwright Route
        session_id = route.request.url.split("/api/upload-sessions/")[1].split("/")[0]
        if sessions.get(session_id) == broken:
            route.fulfill(status=400, content_type="application/problem+json",
                          body='{"title":"Bad Request","status":400,"detail":"chunk refused by a test proxy"}')
        else:
            route.continue_()

    page.on("response", remember)
    sign_in(page, node.base_url, "admin")
    page.get_by_test_id("nav-upload").click()
    page.get_by_test_id("upload-drop").wait_for(timeout=10000)
    page.route("**/api/upload-sessions/*/binary", lambda route: refuse(route) if route.request.method == "PATCH"
               else route.continue_())
    page.evaluate(DROP, files)
    counts = page.get_by_test_id("upload-counts")
    counts.filter(has_text="2 stored, 0 already on the server, 1 skipped, 1 failed.").wait_for(timeout=30000)
    failed = page.locator(f"[data-testid=upload-file][data-path='{broken}']")
    assert failed.get_attribute("data-state") == "failed"
    assert "chunk refused by a test proxy" in failed.inner_text()
    assert "skipped: not a DICOM file" in page.locator("[data-testid=upload-file][data-path='report.pdf']").inner_text()
    settled(page)
    screenshot(page, "upload-failed-file")

    page.unroute("**/api/upload-sessions/*/binary")
    failed.get_by_test_id("upload-retry").click()
    counts.filter(has_text="3 stored, 0 already on the server, 1 skipped, 0 failed.").wait_for(timeout=30000)
    assert failed.get_attribute("data-state") == "stored"
    listed = http_json(node.base_url + "api/pacs/studies/?PatientID=P-DROP-3", token=node.token("admin"))[1]
    assert listed["studies"][0]["numberOfInstances"] == 3
