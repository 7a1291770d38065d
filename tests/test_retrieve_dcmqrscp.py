"""DCMTK dcmqrscp as the remote archive: query, a C-MOVE retrieval job, and a destination
it does not know (0xA801), which fails the job at once with the reason."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from db.models import Instance, database
from node.runtime import Node
from scu.association import remote_named
from scu.find import query_remote
from scu.jobs import create_job, series_rows
from tests.helpers import dcmtk_env, free_port, make_dataset, wait_for_echo, wait_for_job, write_dataset

pytestmark = [pytest.mark.dcmtk,
              pytest.mark.skipif(not shutil.which("dcmqrscp"), reason="dcmqrscp not installed")]


class Dcmqrscp:
    def __init__(self, folder: Path, node_port: int) -> None:
        self.port = free_port()
        storage = folder / "db"
        storage.mkdir(parents=True)
        config = folder / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
            f"HostTable BEGIN\npacsnode = (PACSNODE, 127.0.0.1, {node_port})\nHostTable END\n"
            "VendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\nDCMQRSCP {storage} RW (100, 1024mb) ANY\nAETable END\n")
        self.log = open(folder / "dcmqrscp.log", "w")
        # --fork (the default): its single-process mode crashes after the first association (3.6.7)
        self.proc = subprocess.Popen(["dcmqrscp", "-c", str(config), str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=dcmtk_env())
        try:
            wait_for_echo(self.port, self.proc, ae_title="DCMQRSCP")
        except Exception:
            self.stop()
            raise

    def store(self, files: list[Path]) -> None:
        result = subprocess.run(["storescu", "-aec", "DCMQRSCP", "127.0.0.1", str(self.port),
                                 *map(str, files)], capture_output=True, text=True, env=dcmtk_env(),
                                timeout=60)
        assert result.returncode == 0, result.stderr

    def remotes(self) -> dict:
        return {"DCMQRSCP": {"host": "127.0.0.1", "port": self.port}}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def archive_and_node(tmp_path: Path, make_settings) -> Iterator[tuple[Dcmqrscp, Node, list]]:
    node_port = free_port()
    archive = Dcmqrscp(tmp_path / "dcmqrscp", node_port)
    study = make_dataset(patient_id="QR1").StudyInstanceUID
    datasets = []
    for number in (1, 2):
        series = make_dataset().SeriesInstanceUID
        datasets += [make_dataset(patient_id="QR1", study_uid=study, series_uid=series,
                                  series_number=number, instance_number=n) for n in (1, 2, 3)]
    archive.store([write_dataset(ds, tmp_path / "in" / f"{n}.dcm") for n, ds in enumerate(datasets)])
    node = Node(make_settings(dicom={"port": node_port}, remotes=archive.remotes(),
                              retrieve={"retry_delay": 0.05})).start()
    try:
        yield archive, node, datasets
    finally:
        node.stop()
        archive.stop()


def test_query_and_move_job_from_dcmqrscp(archive_and_node) -> None:
    archive, node, datasets = archive_and_node
    settings = node.settings
    remote = remote_named(settings, "DCMQRSCP")
    studies = query_remote(settings, remote, "STUDY", [("PatientID", "QR1")])
    assert [r["StudyInstanceUID"] for r in studies] == [str(datasets[0].StudyInstanceUID)]
    images = query_remote(settings, remote, "IMAGE", [
        ("StudyInstanceUID", str(datasets[0].StudyInstanceUID)),
        ("SeriesInstanceUID", str(datasets[0].SeriesInstanceUID))])
    assert len(images) == 3
    with database.connection_context():
        job_id = create_job("DCMQRSCP", "move", [("PatientID", "QR1")])
    view = wait_for_job(job_id)
    assert view.state == "completed", view
    assert (view.expected, view.received, view.series) == (6, 6, 2)
    with database.connection_context():
        assert Instance.select().count() == 6


def test_destination_unknown_to_the_remote_is_final(archive_and_node, make_settings) -> None:
    archive, node, _ = archive_and_node
    node.stop()  # the same data folder, now under an AE title dcmqrscp does not know
    other = Node(make_settings(node={"ae_title": "OTHERNODE"}, remotes=archive.remotes())).start()
    try:
        with database.connection_context():
            job_id = create_job("DCMQRSCP", "move", [("PatientID", "QR1")])
        view = wait_for_job(job_id)
    finally:
        other.stop()
    assert view.state == "failed"
    assert "DCMQRSCP does not know OTHERNODE as a move destination (0xA801)" in view.last_error
    with database.connection_context():
        assert [r["attempts"] for r in series_rows(job_id)] == [1, 1]
