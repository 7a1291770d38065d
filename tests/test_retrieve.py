"""Retrieval jobs against Orthanc as the remote archive: C-MOVE to the node's own AE and
C-GET, skipping what is held, priority order, the CLI following a running node."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Callable, Iterator

import pytest

from db.models import Instance, database
from node.runtime import Node
from scu.jobs import create_job, series_rows
from tests.helpers import free_port, make_dataset, node_process, run_cli, wait_for_job, write_node_config
from tests.test_scu_find import OrthancArchive, orthanc_archive, pytestmark  # noqa: F401

FAST_RETRY = {"retry_delay": 0.05, "max_retry_delay": 0.2}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Iterator[OrthancArchive]:
    yield from orthanc_archive(tmp_path_factory.mktemp("orthanc-retrieve"))


def make_study(patient_id: str, series_sizes: list[int]) -> list[list]:
    """One study; one list of datasets per series."""
    study = make_dataset(patient_id=patient_id).StudyInstanceUID
    out = []
    for number, size in enumerate(series_sizes, start=1):
        series = make_dataset().SeriesInstanceUID
        out.append([make_dataset(patient_id=patient_id, study_uid=study, series_uid=series,
                                 series_number=number, instance_number=n) for n in range(1, size + 1)])
    return out


def part10(ds) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture
def retrieving_node(make_settings, archive) -> Iterator[Callable[..., Node]]:
    """A running node on a free port that Orthanc knows as PACSNODE."""
    nodes: list[Node] = []

    def start(**retrieve: object) -> Node:
        port = free_port()
        archive.add_modality("PACSNODE", port)
        node = Node(make_settings(dicom={"port": port}, remotes=archive.remotes(),
                                  retrieve={**FAST_RETRY, **retrieve})).start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def held(uids: list[str]) -> set[str]:
    with database.connection_context():
        return {u for (u,) in Instance.select(Instance.sop_instance_uid)
                .where(Instance.sop_instance_uid.in_(uids)).tuples()}


@pytest.mark.parametrize("method", ["move", "get"])
def test_job_fetches_what_is_missing_in_priority_order(retrieving_node, archive, method) -> None:
    series = make_study("RET-" + method, [4, 3])
    archive.upload([ds for s in series for ds in s])
    node = retrieving_node(method=method)
    node.ingestor.ingest_part10(part10(series[0][0]))  # already here: not fetched again
    with database.connection_context():
        job_id = create_job("ORTHANC", method, [("StudyInstanceUID", str(series[0][0].StudyInstanceUID))],
                            priority=[str(series[1][0].SeriesInstanceUID)])
    view = wait_for_job(job_id)
    assert view.state == "completed", view
    assert (view.expected, view.received, view.series, view.series_done) == (7, 7, 2, 2)
    everything = [str(ds.SOPInstanceUID) for s in series for ds in s]
    assert held(everything) == set(everything)
    with database.connection_context():
        rows = series_rows(job_id)
        sources = dict(Instance.select(Instance.sop_instance_uid, Instance.source_ae).tuples())
    assert [r["series_uid"] for r in rows] == [str(series[1][0].SeriesInstanceUID),
                                               str(series[0][0].SeriesInstanceUID)]
    assert all(r["state"] == "done" for r in rows)
    assert sources[str(series[0][0].SOPInstanceUID)] is None  # the copy that was here stays
    if method == "move":
        assert sources[str(series[0][1].SOPInstanceUID)] == "ORTHANC"


def test_destination_unknown_to_orthanc_fails_after_the_attempts(retrieving_node, archive) -> None:
    """Orthanc 1.10 answers a C-MOVE to an AE it does not know with 0xC000 (not 0xA801): a
    processing failure, tried max_attempts times, then the series fails with the status."""
    series = make_study("RET-C000", [1])
    archive.upload(series[0])
    retrieving_node(method="move", max_attempts=2)
    archive.remove_modality("PACSNODE")
    with database.connection_context():
        job_id = create_job("ORTHANC", "move", [("PatientID", "RET-C000")])
    view = wait_for_job(job_id)
    assert view.state == "failed" and "0xC000" in view.last_error
    with database.connection_context():
        assert series_rows(job_id)[0]["attempts"] == 2


def test_retrieve_command_follows_the_serving_node(tmp_path: Path, archive) -> None:
    series = make_study("RET-CLI", [2, 2])
    archive.upload([ds for s in series for ds in s])
    port = free_port()
    archive.add_modality("PACSNODE", port)
    config = write_node_config(tmp_path, port=port, extra=(
        f'[remotes.ORTHANC]\nhost = "127.0.0.1"\nport = {archive.port}\n'
        '[retrieve]\nmax_associations = 2\nretry_delay = 0.1\n'))
    queued = run_cli(config, "retrieve", "--from", "ORTHANC", "--patient", "RET-CLI", "--no-wait")
    assert queued.returncode == 0, queued.stderr
    with node_process(config, port):
        result = run_cli(config, "retrieve", "--from", "ORTHANC", "-k", "PatientID=RET-CLI", timeout=60)
        listed = run_cli(config, "jobs", "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "completed" in result.stdout and "4 of 4 instances" in result.stdout
    jobs = json.loads(listed.stdout)
    assert [j["state"] for j in jobs] == ["completed", "completed"]  # the queued one ran too
    shown = run_cli(config, "jobs", "show", str(jobs[0]["id"]))
    assert shown.returncode == 0 and str(series[0][0].SeriesInstanceUID) in shown.stdout
