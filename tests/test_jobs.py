"""Retrieval jobs against a scripted pynetdicom archive: dropped associations retried then
failed with the reason, a remote refusing IMAGE level, cancel, restart resumes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from db.catalogue import open_database
from db.models import Instance, database
from node.runtime import Node
from scu.jobs import create_job, get_job, series_rows
from tests.helpers import free_port, make_dataset, node_process, run_cli, write_config, write_node_config

LEVEL_KEYS = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


class ScriptedArchive:
    """A Study Root archive in this process. ``move``: "send" sends the instances to the Move
    Destination (``destinations``), "abort" drops the association, "slow" sends one instance
    every ``delay`` s and stops on C-CANCEL."""

    def __init__(self, datasets: list[Dataset], image_level: bool = True, move: str = "send",
                 delay: float = 0.0) -> None:
        self.datasets = datasets
        self.image_level = image_level
        self.move = move
        self.delay = delay
        self.moves = 0
        self.destinations: dict[str, tuple[str, int]] = {}
        ae = AE(ae_title="SCRIPTED")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        for cx in AllStoragePresentationContexts[:100]:
            ae.add_requested_context(cx.abstract_syntax)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 10
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_C_FIND, self.on_find), (evt.EVT_C_MOVE, self.on_move)])
        self.port = self.server.server_address[1]

    def remotes(self) -> dict:
        return {"SCRIPTED": {"host": "127.0.0.1", "port": self.port}}

    def matching(self, identifier: Dataset) -> list[Dataset]:
        found = self.datasets
        for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            value = identifier.get(keyword, "") or ""
            values = {str(v) for v in value} if isinstance(value, MultiValue) else {str(value)} - {""}
            if values:  # a UID list arrives as a MultiValue, a single UID as a string
                found = [ds for ds in found if str(ds.get(keyword)) in values]
        return found

    def on_find(self, event):  # noqa: ANN001, ANN201
        identifier = event.identifier
        level = identifier.QueryRetrieveLevel
        if level == "IMAGE" and not self.image_level:
            yield 0xA900, None
            return
        seen: dict[str, list[Dataset]] = {}
        for ds in self.matching(identifier):
            seen.setdefault(str(ds.get(LEVEL_KEYS[level])), []).append(ds)
        for group in seen.values():
            answer = Dataset()
            answer.QueryRetrieveLevel = level
            for elem in identifier:
                if elem.keyword == "NumberOfSeriesRelatedInstances":
                    answer.NumberOfSeriesRelatedInstances = len(group)
                elif elem.keyword in group[0]:
                    answer[elem.tag] = group[0][elem.tag]
            yield 0xFF00, answer

    def on_move(self, event):  # noqa: ANN001, ANN201
        self.moves += 1
        if self.move == "abort":
            event.assoc.abort()
            yield None, None
            return
        host, port = self.destinations.get(event.move_destination, (None, None))
        yield host, port
        matches = self.matching(event.identifier)
        yield len(matches)
        for ds in matches:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            time.sleep(self.delay)
            yield 0xFF00, ds

    def stop(self) -> None:
        self.server.shutdown()


def make_series(count: int, series: int = 1, patient_id: str = "JOB1") -> list[Dataset]:
    study = make_dataset().StudyInstanceUID
    out = []
    for s in range(series):
        series_uid = make_dataset().SeriesInstanceUID
        out += [make_dataset(patient_id=patient_id, study_uid=study, series_uid=series_uid,
                             series_number=s + 1, instance_number=n + 1) for n in range(count)]
    return out


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedArchive]]:
    archives: list[ScriptedArchive] = []

    def start(*args, **kwargs) -> ScriptedArchive:  # noqa: ANN002, ANN003
        archive = ScriptedArchive(*args, **kwargs)
        archives.append(archive)
        return archive

    yield start
    for archive in archives:
        archive.stop()


@pytest.fixture
def node_for(make_settings) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def start(archive: ScriptedArchive, **retrieve: object) -> Node:
        node = Node(make_settings(remotes=archive.remotes(), retrieve={
            "retry_delay": 0.05, "max_retry_delay": 0.2, **retrieve})).start()
        archive.destinations["PACSNODE"] = ("127.0.0.1", node.dimse_address[1])
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def wait_for(predicate: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        with database.connection_context():
            value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def finished(job_id: int):  # noqa: ANN201
    view = get_job(job_id)
    return view if view.finished else None


def held_count() -> int:
    return Instance.select().count()


def test_dropped_associations_are_retried_then_failed_with_the_reason(scripted, node_for) -> None:
    archive = scripted(make_series(2), move="abort")
    node_for(archive, max_attempts=3)
    with database.connection_context():
        job_id = create_job("SCRIPTED", "move", [("PatientID", "JOB1")])
    view = wait_for(lambda: finished(job_id))
    assert view and view.state == "failed"
    assert "SCRIPTED ended the association during the C-MOVE" in view.last_error
    with database.connection_context():
        (row,) = series_rows(job_id)
    assert (row["state"], row["attempts"], row["received"]) == ("failed", 3, 0)
    assert archive.moves == 3


def test_remote_refusing_image_level_is_fetched_by_series(scripted, node_for) -> None:
    datasets = make_series(3, series=2)
    archive = scripted(datasets, image_level=False)
    node_for(archive)
    with database.connection_context():
        job_id = create_job("SCRIPTED", "move", [("StudyInstanceUID", str(datasets[0].StudyInstanceUID))])
    view = wait_for(lambda: finished(job_id))
    assert view and view.state == "completed", view
    assert (view.expected, view.received, view.series_done) == (6, 6, 2)
    with database.connection_context():
        assert held_count() == 6


def test_jobs_cancel_stops_a_running_job(scripted, node_for, tmp_path: Path) -> None:
    archive = scripted(make_series(40), move="slow", delay=0.05)
    node_for(archive)
    config = write_config(tmp_path)  # the same data folder as the node's
    with database.connection_context():
        job_id = create_job("SCRIPTED", "move", [("PatientID", "JOB1")])
    assert wait_for(lambda: held_count() >= 2)
    cancelled = run_cli(config, "jobs", "cancel", str(job_id))
    assert cancelled.returncode == 0 and "cancel requested" in cancelled.stdout
    view = wait_for(lambda: finished(job_id))
    assert view and view.state == "cancelled"
    with database.connection_context():
        assert held_count() < 40


def test_queued_job_is_cancelled_at_once_without_a_node(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra='[remotes.SOMEWHERE]\nhost = "127.0.0.1"\nport = 104')
    queued = run_cli(config, "retrieve", "--from", "SOMEWHERE", "--study", "1.2.3", "--no-wait")
    assert queued.returncode == 0, queued.stderr
    cancelled = run_cli(config, "jobs", "cancel", "1")
    assert cancelled.returncode == 0 and "job 1: cancelled" in cancelled.stdout
    listed = json.loads(run_cli(config, "jobs", "--json").stdout)
    assert [(j["id"], j["state"]) for j in listed] == [(1, "cancelled")]
    assert run_cli(config, "jobs", "cancel", "7").returncode == 1


def test_restarted_node_resumes_the_job(scripted, tmp_path: Path) -> None:
    datasets = make_series(6, series=3)
    archive = scripted(datasets, move="slow", delay=0.08)
    port = free_port()
    archive.destinations["PACSNODE"] = ("127.0.0.1", port)
    config = write_node_config(tmp_path, port=port, extra=(
        f'[remotes.SCRIPTED]\nhost = "127.0.0.1"\nport = {archive.port}\n'
        "[retrieve]\nmax_associations = 1\nretry_delay = 0.05\n"))
    db = open_database("", tmp_path / "data")

    def progress() -> tuple[str, int]:
        with db.connection_context():
            return get_job(1).state, Instance.select().count()

    with node_process(config, port):
        queued = run_cli(config, "retrieve", "--from", "SCRIPTED", "--patient", "JOB1", "--no-wait")
        assert queued.returncode == 0, queued.stderr
        deadline = time.monotonic() + 30
        while progress()[1] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    state, held = progress()  # stopped by SIGTERM part way
    assert state == "running" and 3 <= held < 18
    with node_process(config, port):
        deadline = time.monotonic() + 30
        while progress()[0] == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
    assert progress() == ("completed", 18)
    with db.connection_context():
        rows = series_rows(1)
    assert all(r["state"] == "done" and r["attempts"] == 1 for r in rows)
    db.close()
