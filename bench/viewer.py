"""The built-in viewer's speed, measured inside Chromium with ``performance.now()``.

    .venv/bin/python bench/viewer.py               # 20-series study, wheel steps, 500-slice CT
    .venv/bin/python bench/viewer.py --slices 200  # a smaller CT

Starts ``python -m node serve`` on free ports with the phantom studies of the browser tests
stored by storescu, signs in, and prints one line per figure: time to all thumbnails of a
20-series study (cold page and from the study list), one wheel step to the next image drawn
(cached: the viewer's own handler-to-drawn time, and dispatch-to-next-frame), the CT fully
loaded with 4 requests in flight, and the page's JS heap after it (Chromium's
``performance.memory``). Prints figures, asserts nothing: the issue's targets are read off by a
person. The studies are generated into a temporary folder under bench/work/viewer, removed after.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``tests`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.viewer_fixtures import (  # noqa: E402
    CHROMIUM_ARGS,
    InFlight,
    PhantomStudy,
    SeriesSpec,
    chromium_path,
    sign_in,
    store_with_storescu,
    viewer_node,
    write_phantom_study,
)

WORK = Path(__file__).resolve().parent / "work" / "viewer"

ALL_THUMBNAILS = """() => { const imgs = [...document.querySelectorAll('[data-testid=series-thumb] img')];
    return imgs.length === 20 && imgs.every(i => i.complete && i.naturalWidth > 0); }"""

OPEN_AND_TIME_THUMBNAILS = """async uid => {
    const t0 = performance.now();
    location.hash = '#/study/' + uid;
    for (;;) {
        await new Promise(r => requestAnimationFrame(r));
        const imgs = [...document.querySelectorAll('[data-testid=series-thumb] img')];
        if (imgs.length === 20 && imgs.every(i => i.complete && i.naturalWidth > 0)) return performance.now() - t0;
    }
}"""

WHEEL_STEPS = """async n => {
    // one synthetic wheel notch at a time; each waits for the frame it produced to be painted
    const canvas = document.querySelector('[data-testid=viewport]'), v = window.pacsnode.viewer;
    const toFrame = [], handler = [];
    for (let i = 0; i < n; i += 1) {
        const before = v.stats.stepTimes.length, t0 = performance.now();
        canvas.dispatchEvent(new WheelEvent('wheel', { deltaY: i % 40 < 20 ? 100 : -100, deltaMode: 0,
                                                       bubbles: true, cancelable: true }));
        while (v.stats.stepTimes.length === before) await new Promise(r => setTimeout(r, 0));
        handler.push(v.stats.stepTimes[v.stats.stepTimes.length - 1]);
        await new Promise(r => requestAnimationFrame(r));
        toFrame.push(performance.now() - t0);
    }
    return { handler, toFrame };
}"""

ALL_COMPLETE = """n => document.querySelectorAll('[data-testid=series-progress][data-state=complete]').length === n"""


def studies(folder: Path, slices: int) -> tuple[PhantomStudy, PhantomStudy]:
    """The 20-series study (256 x 256, two images each) and the CT (512 x 512, 16 bit)."""
    wide = write_phantom_study(folder / "wide", [SeriesSpec(n, f"SERIES {n}", slices=2, size=256)
                                                 for n in range(1, 21)],
                               patient_name="WIDE^TWENTY", patient_id="B-20")
    ct = write_phantom_study(folder / "ct", [SeriesSpec(1, "AXIAL 1 mm", slices=slices, size=512)],
                             patient_name="LONG^CT", patient_id=f"B-CT-{slices}")
    return wide, ct


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--slices", type=int, default=500, help="slices of the CT series (default 500)")
    args.add_argument("--steps", type=int, default=100, help="wheel steps to time (default 100)")
    opts = args.parse_args(argv)
    if chromium_path() is None:
        print("chromium is not installed", file=sys.stderr)
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(dir=WORK) as folder, viewer_node(Path(folder)) as node, \
            sync_playwright() as pw:
        started = time.monotonic()
        wide, ct = studies(Path(folder) / "data", opts.slices)
        print(f"generated {len(wide.files) + len(ct.files)} files in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        store_with_storescu(node.dimse_port, wide.files + ct.files)
        print(f"stored by storescu in {time.monotonic() - started:.1f} s")
        browser = pw.chromium.launch(executable_path=chromium_path(),
                                     args=CHROMIUM_ARGS + ["--enable-precise-memory-info"])
        try:
            measure(browser, node, wide, ct, opts.steps)
        finally:
            browser.close()
    return 0


def measure(browser, node, wide: PhantomStudy, ct: PhantomStudy, steps: int) -> None:  # noqa: ANN001
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    sign_in(page, node.base_url, "reader")

    # 20 series: a cold page (module load, token refresh, IndexedDB open), then from the study list
    t0 = time.monotonic()
    page.goto(f"{node.base_url}#/study/{wide.study_uid}")
    page.wait_for_function(ALL_THUMBNAILS, timeout=30000, polling="raf")
    cold = time.monotonic() - t0
    page.wait_for_function(ALL_COMPLETE, arg=20, timeout=60000)
    page.evaluate("() => { location.hash = '#/studies'; }")
    page.get_by_test_id("study-row").first.wait_for(timeout=10000)
    warm = page.evaluate(OPEN_AND_TIME_THUMBNAILS, wide.study_uid)
    print(f"20-series study, all thumbnails shown: {cold * 1000:.0f} ms (page load, measured from Python); "
          f"{warm:.0f} ms from the study list (performance.now)")

    # the CT: a fresh context, so nothing comes from IndexedDB
    context.close()
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    flight = InFlight(context)
    sign_in(page, node.base_url, "reader")
    page.get_by_test_id("study-row").first.wait_for(timeout=10000)
    loaded_ms = page.evaluate("""async ([uid, n]) => {
        const t0 = performance.now();
        location.hash = '#/study/' + uid;
        for (;;) {
            await new Promise(r => setTimeout(r, 20));
            const bar = document.querySelector('[data-testid=series-progress]');
            if (bar && bar.dataset.state === 'complete' && Number(bar.dataset.loaded) === n) return performance.now() - t0;
        }
    }""", [ct.study_uid, len(ct.files)])
    heap = page.evaluate("""() => ({ used: performance.memory.usedJSHeapSize, total: performance.memory.totalJSHeapSize,
        limit: performance.memory.jsHeapSizeLimit, frames: window.pacsnode.memory.bytes,
        framesKept: window.pacsnode.memory.map.size })""")
    frames = flight.count("/frames/")
    print(f"{len(ct.files)}-slice CT 512x512 fully loaded: {loaded_ms / 1000:.2f} s "
          f"({frames} frame requests, at most {flight.peak} API requests in flight, "
          f"limiter peak {page.evaluate('window.pacsnode.api.limiter.peak')})")
    print(f"JS heap after loading it: {heap['used'] / 1e6:.0f} MB used, {heap['total'] / 1e6:.0f} MB allocated "
          f"(limit {heap['limit'] / 1e6:.0f} MB), of which decoded frames held in memory: {heap['framesKept']} "
          f"({heap['frames'] / 1e6:.0f} MB of typed arrays, capped by the memoryMB setting)")

    # wheel: every image is in memory now, so each step is the cached path
    page.get_by_test_id("viewport").click()
    timed = page.evaluate(WHEEL_STEPS, steps)
    for name, values in (("handler to drawn", timed["handler"]), ("dispatch to next frame", timed["toFrame"])):
        values = sorted(values)
        print(f"wheel step, cached, {name}: median {statistics.median(values):.1f} ms, "
              f"p95 {values[int(0.95 * (len(values) - 1))]:.1f} ms, max {values[-1]:.1f} ms ({len(values)} steps)")
    context.close()


if __name__ == "__main__":
    sys.exit(main())
