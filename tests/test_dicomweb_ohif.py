"""The stock OHIF viewer (npm @ohif/app, its production build, unmodified) in headless Chromium
against ``python -m node serve``: it lists the node's studies, opens one and draws its image,
with no failed request.

OHIF is served from an origin of its own by a small static server (its files as shipped, and an
``app-config.js`` written here), so every DICOMweb request crosses origins and needs the node's
CORS (``[web] cors_origins``). The app config points OHIF's DICOMweb data source at the node's
``/dicom-web`` and gives OHIF's user authentication service the bearer token of a viewer user
(an extension object in the config, the hook OHIF offers for this), so reads need no
``anonymous_read``. ``scripts/fetch-ohif.sh`` (run by ``make test``) puts the build in .ohif/.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, have_dcmtk
from tests.viewer_fixtures import (SeriesSpec, chromium, chromium_path, screenshot,
                                   store_with_storescu, viewer_node, write_phantom_study)

OHIF_VERSION = "3.13.2"  # as pinned in scripts/fetch-ohif.sh
OHIF_DIST = REPO / ".ohif" / OHIF_VERSION

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.browser,
    pytest.mark.skipif(not have_dcmtk(), reason="DCMTK storescu not installed"),
    pytest.mark.skipif(chromium_path() is None, reason="chromium not installed"),
    pytest.mark.skipif(not (OHIF_DIST / "index.html").exists(),
                       reason=f"OHIF {OHIF_VERSION} not in .ohif/ (scripts/fetch-ohif.sh needs npm)"),
]

# OHIF's DICOMweb data source, as a site would configure it for the node (see README)
APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [{
    id: 'pacsnode-bearer-token',
    preRegistration({ servicesManager }) {
      servicesManager.services.userAuthenticationService.setServiceImplementation({
        getAuthorizationHeader: () => ({ Authorization: 'Bearer ' + %(token)s }),
      });
    },
  }],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  defaultDataSourceName: 'pacsnode',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'pacsnode',
    configuration: {
      friendlyName: 'PACSNODE',
      name: 'pacsnode',
      qidoRoot: %(root)s,
      wadoRoot: %(root)s,
      wadoUriRoot: %(root)s + '/wado',
      qidoSupportsIncludeField: true,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: true },
    },
  }],
};
"""


def ohif_handler(dist: Path, app_config: dict[str, bytes]) -> type[SimpleHTTPRequestHandler]:
    """OHIF's files as shipped; ``/app-config.js`` is ours (``app_config["js"]``, set once the
    node runs); other paths are the single-page app's routes (``/viewer?...``), answered with
    its index.html."""

    class Handler(SimpleHTTPRequestHandler):
        extensions_map = {**SimpleHTTPRequestHandler.extensions_map,
                          ".js": "text/javascript", ".wasm": "application/wasm"}

        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, directory=str(dist), **kwargs)

        def log_message(self, *args) -> None:  # noqa: ANN002 - quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/app-config.js":
                config = app_config["js"]
                self.send_response(200)
                self.send_header("Content-Type", "text/javascript")
                self.send_header("Content-Length", str(len(config)))
                self.end_headers()
                self.wfile.write(config)
                return
            if not (dist / path.lstrip("/")).is_file():
                self.path = "/index.html"
            super().do_GET()

    return Handler


class StaticServer(ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ohif-data")
    chest = write_phantom_study(folder / "chest", [SeriesSpec(1, "AXIAL", slices=6),
                                                   SeriesSpec(2, "T1", modality="MR", slices=3, bits=8)])
    other = write_phantom_study(folder / "other", [SeriesSpec(1, "HEAD", slices=2, size=64)],
                                patient_name="DOE^JOHN", patient_id="P-2")
    return chest, other


@pytest.fixture(scope="module")
def ohif(tmp_path_factory, studies) -> Iterator[str]:
    """The node holding both studies, and OHIF on another origin configured for it: its URL."""
    app_config: dict[str, bytes] = {}
    server = StaticServer(("127.0.0.1", 0), ohif_handler(OHIF_DIST, app_config))
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        folder = tmp_path_factory.mktemp("ohif-node")
        with viewer_node(folder, web=f'cors_origins = ["{origin}"]',
                         users=(("reader", "viewer"),)) as node:
            store_with_storescu(node.dimse_port, [f for study in studies for f in study.files])
            root = node.base_url.rstrip("/") + "/dicom-web"
            app_config["js"] = (APP_CONFIG % {"token": json.dumps(node.token("reader")),
                                              "root": json.dumps(root)}).encode()
            yield origin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class Requests:
    """Every request of the page: failures, 4xx/5xx answers, and those sent to the node."""

    def __init__(self, page) -> None:  # noqa: ANN001 - playwright Page
        self.failed: list[str] = []
        self.refused: list[str] = []
        self.to_node: list[tuple[str, str, int, bool]] = []  # method, url, status, with token
        page.on("requestfailed", lambda r: self.failed.append(f"{r.method} {r.url}: {r.failure}"))
        page.on("response", self._answered)

    def _answered(self, response) -> None:  # noqa: ANN001 - playwright Response
        request = response.request
        if response.status >= 400:
            self.refused.append(f"{response.status} {request.method} {request.url}")
        if "/dicom-web/" in request.url:
            token = request.headers.get("authorization", "").startswith("Bearer ")
            self.to_node.append((request.method, request.url, response.status, token))

    def count(self, fragment: str) -> int:
        return sum(1 for _, url, status, _ in self.to_node if fragment in url and status == 200)


def image_drawn(canvas) -> bool:  # noqa: ANN001 - playwright Locator
    """The phantom is on OHIF's canvas (its own pixels, so the tour and banners OHIF lays over
    the page do not count): black air and lungs, grey body, white bone, in proportions no
    blank, spinner or error canvas has."""
    url = canvas.evaluate("c => c.toDataURL('image/png')")
    png = base64.b64decode(url.split(",", 1)[1])
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.uint8)
    dark, grey, bright = (pixels < 30).mean(), ((pixels > 80) & (pixels < 200)).mean(), (pixels > 230).mean()
    return dark > 0.1 and grey > 0.15 and bright > 0.002


def wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def test_ohif_lists_opens_and_draws_a_study(ohif, studies):
    chest, other = studies
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        requests = Requests(page)
        try:
            page.goto(ohif + "/")
            rows = page.locator("tr", has_text="ACC7781")
            rows.filter(has_text="MÜLLER, ANNA").wait_for(timeout=30000)
            rows.filter(has_text="DOE, JOHN").wait_for(timeout=10000)
            assert rows.count() == 2
            assert "CT\\MR" in rows.filter(has_text="MÜLLER, ANNA").inner_text()

            rows.filter(has_text="MÜLLER, ANNA").click()
            page.get_by_role("button", name="Basic Viewer").click()
            page.wait_for_url(f"**/viewer?StudyInstanceUIDs={chest.study_uid}*", timeout=30000)
            canvas = page.locator("canvas.cornerstone-canvas").first
            canvas.wait_for(timeout=30000)
            wait_for(lambda: image_drawn(canvas), 30, "the image on OHIF's canvas")
        except BaseException:
            screenshot(page, "ohif-failure")
            raise
        screenshot(page, "ohif-viewer")
        # the image came from the node's DICOMweb: searches, series metadata and frames
        assert requests.count("/dicom-web/studies?") >= 1
        assert requests.count("/metadata") >= 1
        assert requests.count("/frames/") >= 1
        assert not requests.failed, requests.failed
        assert not requests.refused, requests.refused
        assert all(token for _, _, _, token in requests.to_node), "a request without the token"
        page.close()
