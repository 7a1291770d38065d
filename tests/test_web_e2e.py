"""End to end: ``python -m node serve`` with both listeners, DCMTK storescu in, httpx out."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from pydicom.uid import generate_uid

from tests.helpers import (
    free_port,
    make_dataset,
    node_process,
    port_refuses,
    run_cli,
    run_storescu,
    write_config,
    write_dataset,
)

PASSWORD = "end to end password"


def _wait_for_http(base: str, proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"no healthy HTTP answer at {base} within {timeout} s")


@pytest.mark.dcmtk
def test_serve_answers_http_for_what_storescu_stored(tmp_path):
    dicom_port, web_port = free_port(), free_port()
    config = write_config(tmp_path, port=dicom_port,
                          extra=f'[web]\nhost = "127.0.0.1"\nport = {web_port}\n')
    added = run_cli(config, "user", "add", "viewer", "--role", "viewer", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    study, series = generate_uid(), generate_uid()
    datasets = [make_dataset(patient_id="E2E", study_uid=study, series_uid=series, instance_number=n)
                for n in (2, 1, 3)]
    multiframe = make_dataset(patient_id="E2E", study_uid=study, series_uid=generate_uid(),
                              series_number=2, rows=8, columns=8)
    multiframe.NumberOfFrames = 4
    multiframe.PixelData = (np.arange(4 * 64, dtype=np.uint16) * 3).tobytes()
    paths = [write_dataset(ds, tmp_path / "in" / f"{i}.dcm") for i, ds in enumerate(datasets + [multiframe])]
    base = f"http://127.0.0.1:{web_port}"

    with node_process(config, dicom_port) as proc:
        _wait_for_http(base, proc)
        stored = run_storescu(dicom_port, paths)
        assert stored.returncode == 0, stored.stderr
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/api/pacs/studies/").status_code == 401
            tokens = client.post("/api/token/", json={"username": "viewer", "password": PASSWORD}).json()
            client.headers["Authorization"] = f"Bearer {tokens['access']}"

            studies = client.get("/api/pacs/studies/", params={"PatientID": "E2E"}).json()
            assert [s["studyUid"] for s in studies["studies"]] == [study]
            strip = client.get(f"/api/pacs/studies/{study}/series/").json()["series"]
            assert [s["imageCount"] for s in strip] == [3, 1]
            page = client.get(f"/api/pacs/studies/{study}/series/{series}/images/bulk").json()
            ordered = sorted(datasets, key=lambda ds: ds.InstanceNumber)
            assert [i["instanceUid"] for i in page["images"]] == [ds.SOPInstanceUID for ds in ordered]

            frame = client.get(page["images"][0]["imageUrl"])
            assert frame.status_code == 200 and frame.content == ordered[0].PixelData
            third = client.get(f"/api/pacs/instances/{multiframe.SOPInstanceUID}/frames/3")
            assert third.content == multiframe.PixelData[2 * 128:3 * 128]
            thumbnail = client.get(strip[0]["thumbnailUrl"])
            assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
            health = client.get("/healthz").json()
            assert health["checks"] == {"catalogue": "ok", "storage": "ok", "dimse": "ok"}
            assert "pacsnode_instances_stored 4.0" in client.get("/metrics").text
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    assert port_refuses(web_port) and port_refuses(dicom_port)
