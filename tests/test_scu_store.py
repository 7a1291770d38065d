"""C-STORE SCU against DCMTK storescp: stored bytes as stored, one association per batch,
conversion where the peer needs it, failures counted, the ``send`` command."""

from __future__ import annotations

import io
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from db.models import database
from db.query import Query, StoredInstance, retrieve_instances
from node.config import load_settings
from node.runtime import Node
from scu.association import Remote, associate, client_ae, remote_named
from scu.errors import AssociationFailed, UnknownRemote
from scu.store import can_decompress, contexts_for, send_instances
from tests.helpers import (
    dcmtk_env,
    free_port,
    make_dataset,
    run_cli,
    wait_for_echo,
    write_config,
)

pytestmark = pytest.mark.dcmtk

# A compressed syntax no installed codec decodes (which ones do depends on what is installed).
NO_CODEC = next(ts for ts in (JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1) if not can_decompress(ts))


@dataclass
class StoreSCP:
    port: int
    folder: Path
    log: Path

    def received(self) -> dict[str, bytes]:
        """SOP Instance UID -> the file storescp wrote."""
        files = {}
        for path in self.folder.iterdir():
            data = path.read_bytes()
            files[str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = data
        return files

    def associations(self) -> int:
        return self.log.read_text().count("Association Received")


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    """DCMTK storescp on a free port (``start("+xa")`` accepts every syntax it knows)."""
    running: list[tuple[subprocess.Popen, object]] = []

    def start(*options: str, ae_title: str = "STORESCP") -> StoreSCP:
        folder = tmp_path / f"storescp{len(running)}"
        (folder / "in").mkdir(parents=True)
        port = free_port()
        log = open(folder / "storescp.log", "w")
        proc = subprocess.Popen(["storescp", "-v", "-aet", ae_title, "-od", str(folder / "in"),
                                 *options, str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env())
        running.append((proc, log))
        wait_for_echo(port, proc, ae_title=ae_title)
        return StoreSCP(port, folder / "in", folder / "storescp.log")

    yield start
    for proc, log in running:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()  # type: ignore[attr-defined]


def dataset_bytes(part10_bytes: bytes) -> bytes:
    """What follows the File Meta Information (its group length is its first element)."""
    assert part10_bytes[128:132] == b"DICM"
    (group_length,) = struct.unpack("<I", part10_bytes[140:144])
    return part10_bytes[144 + group_length:]


def part10(ds) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def make_series(syntaxes: list[str]) -> list:
    """One series, one instance per transfer syntax given."""
    first = make_dataset()
    out = []
    for n, ts in enumerate(syntaxes, start=1):
        ds = make_dataset(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID,
                          instance_number=n)
        if ts == RLELossless:
            ds.compress(RLELossless)
        elif ts == NO_CODEC:  # no encoder either: opaque fragments are enough to be sent
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
            ds.PixelData = encapsulate([b"\xff\xd8" + bytes(62) + b"\xff\xd9"])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = NO_CODEC
        else:
            ds.file_meta.TransferSyntaxUID = ts
        out.append(ds)
    return out


@pytest.fixture
def store_with(make_settings) -> Iterator[Callable[..., tuple[Node, list[StoredInstance]]]]:
    """A node store holding the given datasets, with ``remotes`` configured."""
    nodes: list[Node] = []

    def build(datasets: list, remotes: dict) -> tuple[Node, list[StoredInstance]]:
        node = Node(make_settings(remotes=remotes))
        nodes.append(node)
        ingestor = node.open_store()
        for ds in datasets:
            ingestor.ingest_part10(part10(ds))
        query = Query(level="STUDY", matchers=(("StudyInstanceUID", datasets[0].StudyInstanceUID),))
        with database.connection_context():
            return node, retrieve_instances(query)

    yield build
    for node in nodes:
        node.stop()


def remote_table(scp: StoreSCP, name: str = "STORESCP") -> dict:
    return {name: {"host": "127.0.0.1", "port": scp.port}}


def test_contexts_propose_each_stored_syntax_first() -> None:
    inst = [StoredInstance("1.2.3", str(n), ts, "x", "s", "se")
            for n, ts in enumerate([ExplicitVRLittleEndian, ExplicitVRLittleEndian,
                                    ImplicitVRLittleEndian, NO_CODEC])]
    proposed = [(cx.abstract_syntax, list(cx.transfer_syntax)) for cx in contexts_for(inst)]
    assert proposed == [("1.2.3", [ImplicitVRLittleEndian]), ("1.2.3", [NO_CODEC]),
                        ("1.2.3", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    only_jpeg = contexts_for(inst[3:])  # undecodable: no plain fallback
    assert [list(cx.transfer_syntax) for cx in only_jpeg] == [[NO_CODEC]]


def test_send_keeps_stored_bytes_and_syntax_on_one_association(storescp, store_with) -> None:
    scp = storescp("+xa")
    datasets = make_series([ExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                            RLELossless])
    node, instances = store_with(datasets, remote_table(scp))
    settings = node.settings
    before = scp.associations()  # the C-ECHO that found it listening
    summary = send_instances(settings, remote_named(settings, "STORESCP"), instances)
    assert [r.outcome for r in summary.results] == ["success"] * 4
    received = scp.received()
    assert scp.associations() == before + 1
    for inst in instances:
        sent = received[inst.sop_instance_uid]
        stored = (settings.data_dir / inst.path).read_bytes()
        assert dcmread(io.BytesIO(sent)).file_meta.TransferSyntaxUID == inst.transfer_syntax
        assert dataset_bytes(sent) == dataset_bytes(stored)


def test_send_converts_for_a_peer_taking_implicit_vr_only(storescp, store_with) -> None:
    scp = storescp("+xi")
    datasets = make_series([ExplicitVRLittleEndian, RLELossless])
    node, instances = store_with(datasets, remote_table(scp))
    summary = send_instances(node.settings, remote_named(node.settings, "STORESCP"), instances)
    assert [r.outcome for r in summary.results] == ["success", "success"]
    received = scp.received()
    for original in make_pixels_of(datasets):
        ds = dcmread(io.BytesIO(received[original[0]]))
        assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert np.array_equal(ds.pixel_array, original[1])  # RLE decompressed by pydicom's codec


def make_pixels_of(datasets: list) -> list[tuple[str, np.ndarray]]:
    return [(str(ds.SOPInstanceUID), ds.pixel_array) for ds in datasets]


def test_instance_without_codec_fails_and_the_rest_is_sent(storescp, store_with) -> None:
    scp = storescp()  # uncompressed syntaxes only
    datasets = make_series([ExplicitVRLittleEndian, NO_CODEC, ExplicitVRLittleEndian])
    node, instances = store_with(datasets, remote_table(scp))
    summary = send_instances(node.settings, remote_named(node.settings, "STORESCP"), instances)
    outcomes = {r.sop_instance_uid: r for r in summary.results}
    jpeg = str(datasets[1].SOPInstanceUID)
    assert outcomes[jpeg].outcome == "failure" and outcomes[jpeg].status is None
    assert "no context" in outcomes[jpeg].error or "codec" in outcomes[jpeg].error
    assert summary.count("success") == 2
    assert set(scp.received()) == {str(datasets[0].SOPInstanceUID), str(datasets[2].SOPInstanceUID)}


def test_scu_socket_has_nodelay(storescp, make_settings) -> None:
    scp = storescp()
    settings = make_settings(remotes=remote_table(scp))
    assoc = associate(client_ae(settings), remote_named(settings, "STORESCP"),
                      contexts_for([StoredInstance("1.2.840.10008.5.1.4.1.1.2", "1",
                                                   ExplicitVRLittleEndian, "x", "s", "se")]))
    try:
        assert assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()


# pynetdicom 3.0.4 drops the socket of a refused connection without closing it (transport.py).
@pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")
def test_unreachable_and_unknown_remotes(make_settings) -> None:
    settings = make_settings(remotes={"GONE": {"host": "127.0.0.1", "port": free_port()}})
    with pytest.raises(UnknownRemote, match="known: GONE"):
        remote_named(settings, "NOBODY")
    inst = StoredInstance("1.2.840.10008.5.1.4.1.1.2", "1", ExplicitVRLittleEndian, "x", "s", "se")
    with pytest.raises(AssociationFailed):
        send_instances(settings, Remote("GONE", "127.0.0.1", settings.remotes["GONE"].port), [inst])


def test_send_command(storescp, tmp_path: Path) -> None:
    scp = storescp()
    config = write_config(tmp_path, extra=f'[remotes.STORESCP]\nhost = "127.0.0.1"\nport = {scp.port}')
    datasets = make_series([ExplicitVRLittleEndian, ExplicitVRLittleEndian])
    node = Node(load_settings(config))
    ingestor = node.open_store()
    for ds in datasets:
        ingestor.ingest_part10(part10(ds))
    node.stop()
    result = run_cli(config, "send", "--to", "STORESCP", "--series", str(datasets[0].SeriesInstanceUID))
    assert result.returncode == 0, result.stderr
    assert "sent: 2" in result.stdout and "failed: 0" in result.stdout
    assert len(scp.received()) == 2
    unknown = run_cli(config, "send", "--to", "NOBODY", "--study", str(datasets[0].StudyInstanceUID))
    assert unknown.returncode == 2 and "known: STORESCP" in unknown.stderr
