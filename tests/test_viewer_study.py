"""The built-in viewer in Chromium against ``python -m node serve`` holding studies stored by
storescu: sign-in, study list, thumbnails and progress, bounded loading, the canvas viewer
(wheel, keys, presets against a numpy reference, cine), the IndexedDB cache and token refresh."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.helpers import have_dcmtk
from tests.viewer_fixtures import (
    InFlight,
    SeriesSpec,
    chromium_path,
    screenshot,
    sign_in,
    store_with_storescu,
    viewer_node,
    window_linear,
    write_phantom_study,
)

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.browser,
    pytest.mark.skipif(not have_dcmtk(), reason="DCMTK storescu not installed"),
    pytest.mark.skipif(chromium_path() is None, reason="chromium not installed"),
]

MAIN = [
    SeriesSpec(1, "AXIAL 2.5 mm", slices=24, size=128),
    SeriesSpec(2, "AXIAL signed", slices=8, size=128, signed=True),
    SeriesSpec(3, "T1 8-bit", modality="MR", slices=6, size=96, bits=8),
    SeriesSpec(4, "MONOCHROME1", modality="MR", slices=4, size=96, photometric="MONOCHROME1"),
]
WIDE = [SeriesSpec(n, f"SERIES {n}", slices=2, size=64) for n in range(1, 21)]


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("viewer-data")
    main = write_phantom_study(folder / "main", MAIN)
    wide = write_phantom_study(folder / "wide", WIDE, patient_name="WIDE^TWENTY", patient_id="P-20")
    return main, wide


@pytest.fixture(scope="module")
def node(tmp_path_factory, studies):
    main, wide = studies
    with viewer_node(tmp_path_factory.mktemp("viewer-node")) as running:
        store_with_storescu(running.dimse_port, main.files + wide.files)
        yield running


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    errors: list[str] = []
    pg = context.new_page()
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    assert not errors, errors


def open_study(page, node, study_uid: str) -> None:
    page.goto(f"{node.base_url}#/study/{study_uid}")
    page.get_by_test_id("series-thumb").first.wait_for(timeout=10000)


def wait_all_complete(page, series_count: int, timeout: float = 30000) -> None:
    page.wait_for_function(
        "n => document.querySelectorAll('[data-testid=series-progress][data-state=complete]').length === n",
        arg=series_count, timeout=timeout)


def counter(page) -> str:
    return page.get_by_test_id("image-counter").inner_text()


def canvas_digest(page) -> str:
    return page.evaluate("""() => {
        const c = document.querySelector('[data-testid=viewport]');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let h = 0; for (let i = 0; i < d.length; i += 4) h = (Math.imul(h, 31) + d[i]) | 0;
        return String(h); }""")


def drawn_pixels(page, points: list[tuple[int, int]]) -> list[int]:
    """The red channel on the viewport canvas at image pixels (col, row)."""
    return page.evaluate("""points => {
        const v = window.pacsnode.viewer, c = document.querySelector('[data-testid=viewport]');
        const ctx = c.getContext('2d');
        return points.map(([x, y]) => { const p = v.canvasPointOf(x, y);
            return ctx.getImageData(p.x, p.y, 1, 1).data[0]; }); }""", [list(p) for p in points])


def test_sign_in_refuses_a_wrong_password_then_lists_the_studies(page, node, studies):
    page.goto(node.base_url)
    page.get_by_test_id("username").fill("reader")
    page.get_by_test_id("password").fill("wrong password")
    page.get_by_test_id("sign-in").click()
    message = page.get_by_test_id("sign-in-message")
    message.filter(has_text="not accepted").wait_for(timeout=10000)
    screenshot(page, "sign-in-refused")
    sign_in(page, node.base_url, "reader")
    rows = page.get_by_test_id("study-row")
    rows.nth(1).wait_for(timeout=10000)
    assert rows.count() == 2
    text = rows.filter(has_text="MÜLLER").inner_text()
    assert "MÜLLER, ANNA" in text and "P-40721" in text and "2024-06-11" in text
    assert page.get_by_test_id("user-name").inner_text() == "reader · viewer"
    # a viewer has no upload or admin page in the top bar
    assert page.get_by_test_id("nav-upload").count() == 0 and page.get_by_test_id("nav-admin").count() == 0
    screenshot(page, "study-list")


def test_study_list_searches_by_name_wildcard_modality_and_dates(page, node, studies):
    sign_in(page, node.base_url, "reader")
    page.get_by_test_id("study-row").nth(1).wait_for(timeout=10000)
    page.get_by_test_id("search-PatientName").fill("mül*")
    page.get_by_test_id("search-submit").click()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=study-row]').length === 1", timeout=10000)
    assert "MÜLLER" in page.get_by_test_id("study-row").inner_text()
    page.get_by_test_id("search-PatientName").fill("")
    page.get_by_test_id("search-modality").select_option("MR")
    page.get_by_test_id("search-submit").click()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=study-row]').length === 1", timeout=10000)
    page.get_by_test_id("search-modality").select_option("")
    page.get_by_test_id("search-from").fill("2025-01-01")
    page.get_by_test_id("search-submit").click()
    page.get_by_test_id("study-count").filter(has_text="No study matches").wait_for(timeout=10000)
    assert page.get_by_test_id("study-row").count() == 0


def test_twenty_series_show_their_thumbnails_and_complete_with_bounded_requests(context, page, node, studies):
    _, wide = studies
    sign_in(page, node.base_url, "reader")
    flight = InFlight(context)
    started = time.monotonic()
    open_study(page, node, wide.study_uid)
    page.wait_for_function("""() => { const imgs = [...document.querySelectorAll('[data-testid=series-thumb] img')];
        return imgs.length === 20 && imgs.every(i => i.complete && i.naturalWidth > 0); }""", timeout=15000)
    thumbnails_s = time.monotonic() - started
    wait_all_complete(page, 20)
    thumbs = page.get_by_test_id("series-thumb")
    assert thumbs.count() == 20
    uids = {thumbs.nth(i).get_attribute("data-series-uid") for i in range(20)}
    assert uids == set(wide.series)
    for bar in page.get_by_test_id("series-progress").all():
        assert bar.get_attribute("data-loaded") == bar.get_attribute("data-total") == "2"
        assert "complete" in bar.get_attribute("class")
    assert "1 / 2" in counter(page)
    assert flight.peak <= 4, f"{flight.peak} API requests in flight at once"
    assert flight.count("/frames/") == 40  # each image fetched exactly once
    assert flight.count("/thumbnail") == 20
    assert page.evaluate("window.pacsnode.api.limiter.peak") <= 4
    assert thumbnails_s < 5, f"thumbnails took {thumbnails_s:.2f} s"
    screenshot(page, "study-twenty-series")


def test_main_study_loads_every_series_to_green(context, page, node, studies):
    main, _ = studies
    sign_in(page, node.base_url, "reader")
    flight = InFlight(context)
    open_study(page, node, main.study_uid)
    # red before anything arrived is possible only for a moment; green at the end
    wait_all_complete(page, len(MAIN))
    for spec_uid, spec in main.series.items():
        bar = page.locator(f"[data-series-uid='{spec_uid}'] [data-testid=series-progress]")
        assert bar.get_attribute("data-loaded") == bar.get_attribute("data-total") == str(spec.slices)
        assert bar.inner_text() == f"{spec.slices} / {spec.slices}"
    assert flight.peak <= 4
    assert flight.count("/frames/") == sum(s.slices for s in MAIN)
    assert page.get_by_test_id("overlay-patient").inner_text().startswith("MÜLLER, ANNA")
    screenshot(page, "study-view")


def test_wheel_and_keys_move_through_images_and_change_the_pixels(page, node, studies):
    main, _ = studies
    sign_in(page, node.base_url, "reader")
    open_study(page, node, main.study_uid)
    wait_all_complete(page, len(MAIN))
    assert counter(page) == "1 / 24"
    first = canvas_digest(page)
    box = page.get_by_test_id("viewport").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 100)
    page.wait_for_function("() => document.querySelector('[data-testid=image-counter]').textContent === '2 / 24'")
    assert canvas_digest(page) != first
    page.keyboard.press("ArrowDown")
    page.wait_for_function("() => document.querySelector('[data-testid=image-counter]').textContent === '3 / 24'")
    page.keyboard.press("PageDown")
    page.wait_for_function("() => document.querySelector('[data-testid=image-counter]').textContent === '13 / 24'")
    page.keyboard.press("End")
    page.wait_for_function("() => document.querySelector('[data-testid=image-counter]').textContent === '24 / 24'")
    page.keyboard.press("ArrowUp")
    page.wait_for_function("() => document.querySelector('[data-testid=image-counter]').textContent === '23 / 24'")
    page.keyboard.press("Home")
    page.wait_for_function("() => document.querySelector('[data-testid=image-counter]').textContent === '1 / 24'")
    assert canvas_digest(page) == first
    # sensitivity 2x: one notch moves two images
    page.get_by_test_id("wheel-sensitivity").fill("2")
    page.mouse.wheel(0, 100)
    page.wait_for_function("() => document.querySelector('[data-testid=image-counter]').textContent === '3 / 24'")
    page.get_by_test_id("image-jump").fill("20")
    page.get_by_test_id("image-jump").press("Enter")
    page.wait_for_function("() => document.querySelector('[data-testid=image-counter]').textContent === '20 / 24'")
    # a cached step is drawn well within a frame budget
    steps = page.evaluate("window.pacsnode.viewer.stats.stepTimes.slice(-5)")
    assert max(steps) < 50, steps


@pytest.mark.parametrize("series_number, preset, window", [
    (1, "lung", (-600, 1500)),
    (1, "bone", (400, 1800)),
    (2, "stored", (40, 400)),
    (3, "stored", (128, 256)),
    (4, "stored", (40, 400)),
])
def test_window_presets_draw_what_the_numpy_reference_predicts(page, node, studies, series_number, preset, window):
    main, _ = studies
    uid = main.series_uid(series_number)
    spec = main.series[uid]
    sign_in(page, node.base_url, "reader")
    open_study(page, node, main.study_uid)
    wait_all_complete(page, len(MAIN))
    page.locator(f"[data-testid=series-thumb][data-series-uid='{uid}']").click()
    page.wait_for_function("n => document.querySelector('[data-testid=image-counter]').textContent === '1 / ' + n",
                           arg=spec.slices)
    page.keyboard.press("ArrowDown")
    page.wait_for_function("() => document.querySelector('[data-testid=image-counter]').textContent.startsWith('2 /')")
    page.get_by_test_id("zoom-1to1").click()
    page.locator(f"[data-testid=wl-preset][data-preset='{preset}']").click()
    values = main.pixels[(uid, 1)]
    size = spec.size
    points = [(size // 2, size // 2), (size // 4, size // 2), (int(size * 0.32), int(size * 0.5)),
              (size // 2, int(size * 0.72)), (2, 2), (int(size * 0.3), int(size * 0.56))]
    expected = window_linear(np.array([values[y, x] for x, y in points]), *window,
                             invert=spec.photometric == "MONOCHROME1")
    drawn = drawn_pixels(page, points)
    assert np.max(np.abs(np.array(drawn) - expected)) <= 1, (drawn, expected.tolist())
    assert len(set(drawn)) >= 3  # the sample covers several grey levels, not one
    screenshot(page, f"preset-{series_number}-{preset}")


def test_cine_advances_and_stop_returns_to_its_start(page, node, studies):
    main, _ = studies
    sign_in(page, node.base_url, "reader")
    open_study(page, node, main.study_uid)
    wait_all_complete(page, len(MAIN))
    page.get_by_test_id("cine-fps").fill("30")
    page.get_by_test_id("cine-fps").press("Enter")
    page.get_by_test_id("cine-play").click()
    page.wait_for_function("() => parseInt(document.querySelector('[data-testid=image-counter]').textContent) >= 6",
                           timeout=10000)
    assert page.get_by_test_id("cine-play").inner_text() == "Pause"
    page.get_by_test_id("cine-stop").click()
    page.wait_for_function("() => document.querySelector('[data-testid=image-counter]').textContent === '1 / 24'")
    shown = counter(page)
    page.wait_for_timeout(300)
    assert counter(page) == shown  # stopped means stopped


def test_a_reloaded_study_draws_from_indexeddb_without_fetching_frames(context, page, node, studies):
    main, _ = studies
    sign_in(page, node.base_url, "reader")
    open_study(page, node, main.study_uid)
    wait_all_complete(page, len(MAIN))
    flight = InFlight(context)
    page.reload()
    page.get_by_test_id("series-thumb").first.wait_for(timeout=10000)  # the session survived the reload
    wait_all_complete(page, len(MAIN))
    page.wait_for_function("() => document.querySelector('[data-testid=viewport-status]').textContent === ''")
    assert flight.count("/frames/") == 0, flight.urls
    assert flight.count("/thumbnail") == 0
    assert page.evaluate("window.pacsnode.loader.stats.fromCache") >= 1
    # a corrupt entry is dropped and fetched again, once
    key = page.evaluate("window.pacsnode.loader.series.get(window.pacsnode.viewer.seriesUid).images[5].key")
    page.evaluate("""key => new Promise((resolve, reject) => {
        const open = indexedDB.open('pacsnode-cache');
        open.onsuccess = () => { const tx = open.result.transaction('frames', 'readwrite');
            const store = tx.objectStore('frames'); const get = store.get(key);
            get.onsuccess = () => { const b = new Uint8Array(get.result); b[100] ^= 0xff; store.put(b.buffer, key); };
            tx.oncomplete = () => { open.result.close(); resolve(); }; tx.onerror = reject; }; })""", key)
    page.reload()
    wait_all_complete(page, len(MAIN))
    page.get_by_test_id("image-jump").fill("6")
    page.get_by_test_id("image-jump").press("Enter")
    page.wait_for_function("() => document.querySelector('[data-testid=image-counter]').textContent === '6 / 24'")
    page.wait_for_function("() => window.pacsnode.cache.stats.corrupt === 1")
    # the entry is dropped before the new request goes out: wait for the request to be seen
    page.wait_for_function("() => window.pacsnode.loader.stats.frameRequests >= 1")
    for _ in range(50):
        if flight.count("/frames/"):
            break
        page.wait_for_timeout(100)
    page.wait_for_timeout(300)  # a second fetch of the same frame would show up here
    assert flight.count("/frames/") == 1, flight.urls
    assert flight.count(key.split("/")[0] + "/frames/1") == 1


def test_an_expired_access_token_is_refreshed_once_for_all_waiting_requests(context, page, node, studies):
    main, _ = studies
    sign_in(page, node.base_url, "reader")
    refreshes = []
    context.on("request", lambda r: refreshes.append(r.url) if r.url.endswith("/api/token/refresh/") else None)
    page.evaluate("window.pacsnode.api.access = 'expired.token.value'")
    open_study(page, node, main.study_uid)
    wait_all_complete(page, len(MAIN))
    assert len(refreshes) == 1
    # a refresh the server refuses ends the session with a message
    page.evaluate("sessionStorage.setItem('pacsnode.refresh', 'revoked'); window.pacsnode.api.access = 'x.y.z'")
    page.get_by_test_id("nav-studies").click()
    page.get_by_test_id("sign-in-form").wait_for(timeout=10000)
    assert "session has ended" in page.get_by_test_id("sign-in-message").inner_text()
    screenshot(page, "session-ended")


def test_zoom_pan_and_overlay_controls(page, node, studies):
    main, _ = studies
    sign_in(page, node.base_url, "reader")
    open_study(page, node, main.study_uid)
    wait_all_complete(page, len(MAIN))
    page.get_by_test_id("zoom-1to1").click()
    assert "Zoom 100%" in page.get_by_test_id("overlay-display").inner_text()
    page.get_by_test_id("zoom-in").click()
    assert "Zoom 125%" in page.get_by_test_id("overlay-display").inner_text()
    before = page.evaluate("window.pacsnode.viewer.placement")
    page.get_by_test_id("tool-pan").click()
    box = page.get_by_test_id("viewport").bounding_box()
    page.mouse.move(box["x"] + 300, box["y"] + 300)
    page.mouse.down()
    page.mouse.move(box["x"] + 340, box["y"] + 320, steps=4)
    page.mouse.up()
    after = page.evaluate("window.pacsnode.viewer.placement")
    assert (after["x"] - before["x"], after["y"] - before["y"]) == (40, 20)
    page.get_by_test_id("tool-wl").click()
    page.mouse.move(box["x"] + 300, box["y"] + 300)
    page.mouse.down()
    page.mouse.move(box["x"] + 400, box["y"] + 300, steps=4)
    page.mouse.up()
    assert "W 400" not in page.get_by_test_id("overlay-display").inner_text()
    page.get_by_test_id("view-reset").click()
    assert "C 40 W 400" in page.get_by_test_id("overlay-display").inner_text()
    page.get_by_test_id("overlay-toggle").click()
    assert page.get_by_test_id("overlay-patient").is_hidden()
