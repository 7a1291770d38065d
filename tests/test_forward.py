"""Forwarding ([[forward]] rules): config checks, the queue filled in the storing commit, and
delivery to a DCMTK storescp, also after the destination was down and across a restart."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from db.forwarding import FAILED, QUEUED, ForwardItem
from db.models import database
from node.config import Settings, settings_from_mapping
from node.errors import ConfigError
from node.runtime import Node
from tests.helpers import dcmtk_env, free_port, make_dataset, run_storescu, wait_for_echo, wait_until
from tests.test_scu_store import StoreSCP, dataset_bytes, part10

# pynetdicom drops the socket of a refused connection unclosed (scu.association._close_socket)
REFUSED_CONNECTION_LEAK = pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")
FAST_RETRY = {"retry_delay": 0.2, "max_retry_delay": 0.4, "max_attempts": 3}


def forward_settings(tmp_path: Path, remotes: dict[str, int], rules: list[dict[str, str]],
                     **retrieve: Any) -> Settings:
    raw = {"node": {"data_dir": "data"}, "dicom": {"host": "127.0.0.1", "port": 0},
           "remotes": {ae: {"host": "127.0.0.1", "port": port} for ae, port in remotes.items()},
           "forward": rules, "retrieve": {**FAST_RETRY, **retrieve}}
    return settings_from_mapping(raw, base_dir=tmp_path)


@contextmanager
def storescp_on(folder: Path, port: int, ae_title: str = "STORESCP") -> Iterator[StoreSCP]:
    """DCMTK storescp on a given port (a destination that comes back on its old address)."""
    (folder / "in").mkdir(parents=True, exist_ok=True)
    with open(folder / "storescp.log", "a") as log:
        proc = subprocess.Popen(["storescp", "-v", "-aet", ae_title, "-od", str(folder / "in"), str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env())
        try:
            wait_for_echo(port, proc, ae_title=ae_title)
            yield StoreSCP(port, folder / "in", folder / "storescp.log")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def series_files(folder: Path, count: int, **kwargs: Any) -> dict[str, Path]:
    """SOP Instance UID -> a Part 10 file of one generated series."""
    first = make_dataset(**kwargs)
    files = {}
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, count + 1):
        ds = make_dataset(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID,
                          instance_number=n, **kwargs)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(part10(ds))
        files[str(ds.SOPInstanceUID)] = path
    return files


def queue_rows() -> list[ForwardItem]:
    with database.connection_context():
        return list(ForwardItem.select().order_by(ForwardItem.id))


def send(node: Node, files: dict[str, Path], calling_ae: str = "SCANNER") -> None:
    result = run_storescu(node.dimse_address[1], list(files.values()), "-aet", calling_ae)
    assert result.returncode == 0, result.stderr


def arrived(scp: StoreSCP, uids: set[str], timeout: float = 30.0) -> dict[str, bytes]:
    assert wait_until(lambda: uids <= set(scp.received()), timeout), \
        f"{len(uids - set(scp.received()))} of {len(uids)} did not arrive"
    return scp.received()


# --- configuration -----------------------------------------------------------------------------


def test_rules_are_parsed_into_frozen_settings(tmp_path: Path) -> None:
    settings = forward_settings(tmp_path, {"ARCHIVE": 104, "AI": 105},
                                [{"to": "ARCHIVE"}, {"to": "AI", "modality": "CT", "calling_ae": "CT1"}])
    archive, ai = settings.forward
    assert (archive.to, archive.modality, archive.calling_ae) == ("ARCHIVE", None, None)
    assert (ai.to, ai.modality, ai.calling_ae) == ("AI", "CT", "CT1")
    assert archive.matches("MR", None) and ai.matches("CT", "CT1 ")
    assert not ai.matches("MR", "CT1") and not ai.matches("CT", "OTHER")
    with pytest.raises(AttributeError):
        ai.to = "ARCHIVE"  # type: ignore[misc]


@pytest.mark.parametrize(("rules", "message"), [
    ([{"to": "NOWHERE"}], "forward[0].to: 'NOWHERE' is not under [remotes] (known: ARCHIVE)"),
    ([{"to": "ARCHIVE"}, {"to": "ARCHIVE", "modalty": "CT"}], "forward[1].modalty: unknown key"),
    ([{"to": "ARCHIVE", "modality": 3}], "forward[0].modality: expected a string, got 3"),
    ([{"modality": "CT"}], "forward[0].to: missing value"),
    ([{"to": "ARCHIVE", "calling_ae": "A" * 17}], "forward[0].calling_ae: not a valid AE title"),
    ({"to": "ARCHIVE"}, "forward: expected [[forward]] tables"),
])
def test_wrong_rules_fail_with_the_key_path(tmp_path: Path, rules: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        forward_settings(tmp_path, {"ARCHIVE": 104}, rules)
    assert str(caught.value).startswith(message)


# --- the queue, without a network ----------------------------------------------------------------


def test_matching_instances_are_queued_in_the_storing_commit(tmp_path: Path) -> None:
    settings = forward_settings(tmp_path, {"ARCHIVE": 104, "AI": 105},
                                [{"to": "ARCHIVE"}, {"to": "AI", "modality": "CT", "calling_ae": "CT1"}])
    node = Node(settings)
    ingestor = node.open_store()
    try:
        ct = make_dataset(modality="CT")
        mr = make_dataset(modality="MR")
        ingestor.ingest_part10(part10(ct), source_ae="CT1")
        ingestor.ingest_part10(part10(mr), source_ae="CT1")
        ingestor.ingest_part10(part10(ct), source_ae="CT1")  # a duplicate kept once is not new
        rows = [(r.destination, r.sop_instance_uid, r.state, r.attempts) for r in queue_rows()]
    finally:
        node.stop()
    assert rows == [("ARCHIVE", ct.SOPInstanceUID, QUEUED, 0), ("AI", ct.SOPInstanceUID, QUEUED, 0),
                    ("ARCHIVE", mr.SOPInstanceUID, QUEUED, 0)]


# --- delivery to DCMTK storescp -------------------------------------------------------------------


@pytest.mark.dcmtk
def test_instances_stored_by_storescu_arrive_as_stored(tmp_path: Path) -> None:
    port = free_port()
    with storescp_on(tmp_path / "dest", port) as scp:
        node = Node(forward_settings(tmp_path, {"STORESCP": port}, [{"to": "STORESCP"}])).start()
        try:
            files = series_files(tmp_path / "in", 12)
            send(node, files)
            received = arrived(scp, set(files))
            assert wait_until(lambda: not queue_rows(), 10)
        finally:
            node.stop()
    for uid, path in files.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(path.read_bytes())
    assert scp.associations() <= 12 // 2  # batched, never one association per instance


@pytest.mark.dcmtk
def test_modality_and_calling_ae_filters(tmp_path: Path) -> None:
    ct_port, ai_port = free_port(), free_port()
    with storescp_on(tmp_path / "ct", ct_port, "CTARCHIVE") as ct_scp, \
            storescp_on(tmp_path / "ai", ai_port, "AI") as ai_scp:
        settings = forward_settings(tmp_path, {"CTARCHIVE": ct_port, "AI": ai_port},
                                    [{"to": "CTARCHIVE", "modality": "CT"},
                                     {"to": "AI", "calling_ae": "SCANNER1"}])
        node = Node(settings).start()
        try:
            ct_other = series_files(tmp_path / "a", 2, modality="CT")
            mr_scanner = series_files(tmp_path / "b", 3, modality="MR")
            mr_other = series_files(tmp_path / "c", 2, modality="MR")
            send(node, ct_other, "OTHER")
            send(node, mr_scanner, "SCANNER1")
            send(node, mr_other, "OTHER")
            arrived(ct_scp, set(ct_other))
            arrived(ai_scp, set(mr_scanner))
            assert wait_until(lambda: not queue_rows(), 10)
        finally:
            node.stop()
    assert set(ct_scp.received()) == set(ct_other)
    assert set(ai_scp.received()) == set(mr_scanner)


@pytest.mark.dcmtk
@REFUSED_CONNECTION_LEAK
def test_downed_destination_keeps_its_queue_and_catches_up(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here yet
    node = Node(forward_settings(tmp_path, {"STORESCP": port}, [{"to": "STORESCP"}])).start()
    try:
        files = series_files(tmp_path / "in", 5)
        send(node, files)
        assert wait_until(lambda: all(r.last_error for r in queue_rows()) and len(queue_rows()) == 5, 15)
        rows = queue_rows()
        assert {r.state for r in rows} == {QUEUED} and {r.attempts for r in rows} == {0}
        assert "STORESCP" in rows[0].last_error
        with storescp_on(tmp_path / "dest", port) as scp:
            arrived(scp, set(files))
            assert wait_until(lambda: not queue_rows(), 10)
    finally:
        node.stop()


@pytest.mark.dcmtk
@REFUSED_CONNECTION_LEAK
def test_restart_with_a_queue_delivers(tmp_path: Path) -> None:
    port = free_port()
    settings = forward_settings(tmp_path, {"STORESCP": port}, [{"to": "STORESCP"}])
    node = Node(settings).start()
    try:
        files = series_files(tmp_path / "in", 4)
        send(node, files)
        assert wait_until(lambda: all(r.last_error for r in queue_rows()) and len(queue_rows()) == 4, 15)
    finally:
        node.stop()
    assert len(queue_rows()) == 4 and all(r.owner is None for r in queue_rows())
    with storescp_on(tmp_path / "dest", port) as scp:
        node = Node(settings).start()
        try:
            arrived(scp, set(files))
            assert wait_until(lambda: not queue_rows(), 10)
        finally:
            node.stop()


# --- failures the destination reports -----------------------------------------------------------


@contextmanager
def answering_scp(status: int) -> Iterator[tuple[int, list[str]]]:
    """A pynetdicom storage SCP that answers every C-STORE with ``status``."""
    seen: list[str] = []

    def handle(event: Any) -> int:
        seen.append(str(event.request.AffectedSOPInstanceUID))
        return status

    ae = AE(ae_title="FAILING")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()


@pytest.mark.parametrize(("status", "attempts"), [(0xA700, 3), (0xA900, 1)],
                         ids=["out-of-resources-retried", "final-status"])
def test_failed_instances_give_up_with_the_reason(tmp_path: Path, status: int, attempts: int) -> None:
    with answering_scp(status) as (port, seen):
        node = Node(forward_settings(tmp_path, {"FAILING": port}, [{"to": "FAILING"}])).start()
        try:
            ds = make_dataset()
            node.ingestor.ingest_part10(part10(ds), source_ae="SCANNER")
            assert wait_until(lambda: [r.state for r in queue_rows()] == [FAILED], 20)
        finally:
            node.stop()
    (row,) = queue_rows()
    assert row.attempts == attempts and len(seen) == attempts
    assert row.last_error.startswith(f"0x{status:04X}")
