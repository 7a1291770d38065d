"""``python -m node``: config errors, import, verify, reindex, stats, and a clean stop on
SIGTERM/SIGINT, each run as the real command."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from node.config import load_settings
from node.errors import ConfigError
from node.runtime import Node
from tests.helpers import (
    REPO,
    LineCollector,
    catalogue_rows,
    dataset_bytes,
    dcmtk_env,
    echo_ok,
    free_port,
    make_dataset,
    node_process,
    port_refuses,
    run_cli,
    sha256_file,
    storescu_args,
    successful_files,
    wait_until,
    write_dataset,
    write_node_config,
)

# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize("toml,message", [
    ('[dicom]\nport = "abc"', "dicom.port: expected an integer, got 'abc'"),
    ("[dicom]\nport = 70000", "dicom.port: expected a port 0-65535, got 70000"),
    ("[dicom]\nprot = 104", "dicom.prot: unknown key"),
    ('[nodes]\nae_title = "X"', "nodes: unknown section"),
    ("dicom = 5", "dicom: expected a table, got 5"),
    ("[dicom]\nmax_associations = true", "dicom.max_associations: expected an integer, got True"),
    ("[dicom]\nmax_associations = 0", "dicom.max_associations: expected at least 1"),
    ('[dicom]\nallowed_callers = "GOOD"', "dicom.allowed_callers: expected a list, got 'GOOD'"),
    ('[dicom]\nallowed_callers = ["GOOD", 7]', "dicom.allowed_callers[1]: expected a string, got 7"),
    ('[dicom]\nduplicate_policy = "keep"', "dicom.duplicate_policy: expected one of ignore, overwrite, reject"),
    ('[node]\nae_title = "MUCH_TOO_LONG_AE_TITLE"', "node.ae_title: not a valid AE title"),
    ("[node]\ndata_dir = 5", "node.data_dir: expected a path string, got 5"),
    ('[remotes.ARCHIVE]\nhost = "10.0.0.1"', "remotes.ARCHIVE.port: missing value"),
    ('[remotes.ARCHIVE]\nhost = "10.0.0.1"\nport = "x"', "remotes.ARCHIVE.port: expected an integer, got 'x'"),
    ('[database]\nurl = "mysql://db/pacs"', "database.url: expected empty, postgresql://"),
    ("[dicom\nport = 1", "not valid TOML"),
])
def test_config_error_names_the_key_path(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(toml + "\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("toml,line", [
    ('[dicom]\nport = "abc"', "error: dicom.port: expected an integer, got 'abc'"),
    ('[remotes.ARCHIVE]\nhost = "10.0.0.1"', "error: remotes.ARCHIVE.port: missing value"),
])
@pytest.mark.parametrize("command", ["serve", "stats"])
def test_bad_config_stops_start_up_with_one_line(tmp_path: Path, toml: str, line: str, command: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(toml + "\n")
    result = run_cli(config, command, timeout=30)
    assert result.returncode != 0
    assert result.stderr == line + "\n"
    assert result.stdout == ""
    assert not (tmp_path / "data").exists()


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "absent.toml", "stats", timeout=30)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "config file not found" in result.stderr


def test_shipped_config_loads_with_paths_beside_it() -> None:
    settings = load_settings(REPO / "config.toml")
    assert settings.data_dir == REPO / "data"
    assert settings.remotes["ORTHANC"].port == 4242


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    """The data folder and a relative SQLite URL land beside config.toml, whatever the cwd."""
    site = tmp_path / "site"
    site.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = write_node_config(site, database_url="sqlite:///db/catalogue.sqlite")
    settings = load_settings(config)
    assert settings.data_dir == site / "data"
    ds = make_dataset()
    source = write_dataset(ds, tmp_path / "in" / "one.dcm")
    result = subprocess.run([sys.executable, "-m", "node", "--config", str(config), "import", str(source)],
                            cwd=elsewhere, capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "db" / "catalogue.sqlite").is_file()
    assert not (site / "data" / "catalogue.sqlite").exists()
    [stored] = (site / "data" / "store").rglob("*.dcm")
    assert stored.read_bytes() == source.read_bytes()
    assert list(elsewhere.iterdir()) == []


# --- import ----------------------------------------------------------------------------------


def summary_of(output: str) -> dict[str, int]:
    counts = {}
    for line in output.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in ("stored", "already present", "skipped (not DICOM)", "rejected"):
            counts[key] = int(value)
    return counts


def write_media(root: Path, count: int) -> list[str]:
    """A DICOMDIR file set (PS3.10 8) as a USB stick or CD carries it; returns its SOP UIDs."""
    fs = FileSet()
    uids = []
    study_uid = generate_uid()
    for i in range(count):
        ds = make_dataset(patient_id="MEDIA1", study_uid=study_uid, instance_number=i + 1)
        fs.add(ds)
        uids.append(ds.SOPInstanceUID)
    fs.write(root)
    # pydicom keeps a staging TemporaryDirectory that warns when left to the garbage collector
    fs._stage["t"].cleanup()
    return uids


def lowercase_tree(root: Path) -> None:
    """Media as some CD mounts show them: every name in lower case."""
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in dirs + files:
            Path(folder, name).rename(Path(folder, name.lower()))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    return write_node_config(site)


def test_import_dicomdir_media(config: Path, tmp_path: Path) -> None:
    media = tmp_path / "usb"
    uids = write_media(media, 3)
    result = run_cli(config, "import", str(media / "DICOMDIR"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary_of(result.stdout) == {"stored": 3, "already present": 0, "skipped (not DICOM)": 0,
                                         "rejected": 0}
    assert set(catalogue_rows(config.parent / "data")) == set(uids)


def test_import_lowercase_media_folder(config: Path, tmp_path: Path) -> None:
    """The DICOMDIR's upper-case file IDs are found on media shown in lower case; the
    DICOMDIR itself is neither an instance nor a rejection, and the viewer programs CDs
    carry are skipped without failing the import."""
    media = tmp_path / "cdrom"
    uids = write_media(media, 2)
    (media / "README.TXT").write_text("Open VIEWER.EXE to see the images.\r\n")
    (media / "VIEWER").mkdir()
    (media / "VIEWER" / "VIEWER.EXE").write_bytes(b"MZ\x90\x00" + b"\0" * 500)
    lowercase_tree(media)
    assert (media / "dicomdir").is_file()
    result = run_cli(config, "import", str(media))
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary_of(result.stdout) == {"stored": 2, "already present": 0, "skipped (not DICOM)": 2,
                                         "rejected": 0}
    assert set(catalogue_rows(config.parent / "data")) == set(uids)


def test_import_folder_holding_several_media(config: Path, tmp_path: Path) -> None:
    """A folder of copied media (a DICOMDIR in each subfolder) imports every instance."""
    uids = write_media(tmp_path / "all" / "disc1", 2) + write_media(tmp_path / "all" / "disc2", 2)
    result = run_cli(config, "import", str(tmp_path / "all"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary_of(result.stdout) == {"stored": 4, "already present": 0, "skipped (not DICOM)": 0,
                                         "rejected": 0}
    assert set(catalogue_rows(config.parent / "data")) == set(uids)


def test_unreadable_dicomdir_falls_back_to_its_folder(config: Path, tmp_path: Path) -> None:
    media = tmp_path / "usb"
    uids = write_media(media, 2)
    (media / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    result = run_cli(config, "import", str(media / "DICOMDIR"))
    assert summary_of(result.stdout)["stored"] == 2, result.stdout + result.stderr
    assert set(catalogue_rows(config.parent / "data")) == set(uids)


def bare_dataset(ds, path: Path, implicit: bool) -> Path:  # noqa: ANN001 - a pydicom Dataset
    """A dataset written without preamble or meta, as some old media and tools do."""
    ds.file_meta = FileMetaDataset()
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[:4] == b"\x08\x00\x05\x00"  # starts with (0008,0005)
    return path


def test_import_folder_tree_summary(config: Path, tmp_path: Path) -> None:
    """Files anywhere in the tree are stored; non-DICOM files are skipped (not fatal); broken
    DICOM files are rejected with a reason; a second import finds everything present."""
    tree = tmp_path / "tree"
    good = [make_dataset(instance_number=i + 1, charset="ISO_IR 100", patient_name="MÜLLER^JÜRGEN")
            for i in range(3)]
    write_dataset(good[0], tree / "a" / "one.dcm")
    write_dataset(good[1], tree / "a" / "b" / "c" / "IM0002")
    bare_dataset(good[2], tree / "bare_implicit", implicit=True)
    bare_explicit = make_dataset(charset="ISO_IR 192", patient_name="ÅSE^BØ")
    bare_dataset(bare_explicit, tree / "bare_explicit", implicit=False)
    no_preamble = make_dataset()
    no_preamble.save_as(tree / "no_preamble", enforce_file_format=False)  # meta, but no preamble
    assert (tree / "no_preamble").read_bytes()[:2] == b"\x02\x00"
    (tree / "README.txt").write_text("scanned at the front desk\n")
    (tree / "empty").write_bytes(b"")
    (tree / "a" / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 300)
    truncated = write_dataset(make_dataset(), tree / "a" / "truncated.dcm")
    truncated.write_bytes(truncated.read_bytes()[:-100])

    result = run_cli(config, "import", "--no-progress", str(tree))
    assert result.returncode == 1  # a rejection is reported through the exit code
    assert summary_of(result.stdout) == {"stored": 5, "already present": 0, "skipped (not DICOM)": 3,
                                         "rejected": 1}
    assert f"  {truncated}: " in result.stdout
    assert "truncated" in result.stdout.split(f"  {truncated}: ")[1].splitlines()[0]
    rows = catalogue_rows(config.parent / "data")
    assert set(rows) == {ds.SOPInstanceUID for ds in good + [bare_explicit, no_preamble]}
    implicit_row = rows[good[2].SOPInstanceUID]
    assert implicit_row["transfer_syntax"] == ImplicitVRLittleEndian
    stored = (config.parent / "data" / implicit_row["path"]).read_bytes()
    assert dataset_bytes(stored) == (tree / "bare_implicit").read_bytes()
    stored = (config.parent / "data" / rows[no_preamble.SOPInstanceUID]["path"]).read_bytes()
    assert stored == b"\0" * 128 + b"DICM" + (tree / "no_preamble").read_bytes()

    again = run_cli(config, "import", str(tree / "a"))
    assert summary_of(again.stdout) == {"stored": 0, "already present": 2, "skipped (not DICOM)": 1,
                                        "rejected": 1}


def test_import_of_a_missing_path_fails_before_storing(config: Path, tmp_path: Path) -> None:
    present = write_dataset(make_dataset(), tmp_path / "present.dcm")
    result = run_cli(config, "import", str(present), str(tmp_path / "absent"))
    assert result.returncode == 2
    assert "absent: no such file or folder" in result.stderr
    assert not (config.parent / "data").exists()


@pytest.mark.dcmtk
def test_import_beside_a_running_node_leaves_its_temp_files_alone(tmp_path: Path) -> None:
    """Importing a USB stick into a live node's data folder must not delete the files the
    node is writing; only the serving process cleans temp leftovers, at its start."""
    port = free_port()
    config = write_node_config(tmp_path, port=port)
    source = write_dataset(make_dataset(), tmp_path / "usb" / "IM0001")
    with node_process(config, port):
        in_flight = tmp_path / "data" / "tmp" / "in-flight.part"
        in_flight.write_bytes(b"\0" * 128 + b"DICM")
        result = run_cli(config, "import", str(source.parent))
        assert result.returncode == 0, result.stdout + result.stderr
        assert summary_of(result.stdout)["stored"] == 1
        assert in_flight.exists()
        assert echo_ok(port)


@pytest.mark.dcmtk
def test_second_node_on_a_busy_port_stops_with_one_line(tmp_path: Path) -> None:
    """Starting the node twice fails on the port, in one line, before touching the data
    folder of the node already running."""
    port = free_port()
    config = write_node_config(tmp_path, port=port)
    with node_process(config, port):
        in_flight = tmp_path / "data" / "tmp" / "in-flight.part"
        in_flight.write_bytes(b"\0" * 128 + b"DICM")
        result = run_cli(config, "serve", timeout=30)
        assert result.returncode != 0
        assert result.stderr.startswith(f"error: dicom.port: cannot listen on 127.0.0.1:{port}: ")
        assert result.stderr.count("\n") == 1, result.stderr
        assert in_flight.exists()
        assert echo_ok(port)


# --- verify, reindex, stats ------------------------------------------------------------------


@pytest.fixture
def filled(config: Path, tmp_path: Path) -> Path:
    """A node data folder holding two patients, three studies, four series, six instances."""
    source = tmp_path / "source"
    study = generate_uid()
    datasets = [make_dataset(patient_id="P1", study_uid=study, series_uid=s, modality=m, instance_number=i)
                for s, m in ((generate_uid(), "CT"), (generate_uid(), "MR")) for i in (1, 2)]
    datasets += [make_dataset(patient_id="P1"), make_dataset(patient_id="P2")]
    for n, ds in enumerate(datasets):
        write_dataset(ds, source / f"{n}.dcm")
    result = run_cli(config, "import", str(source))
    assert summary_of(result.stdout)["stored"] == 6, result.stdout + result.stderr
    return config


def stats_json(config: Path) -> dict:
    result = run_cli(config, "stats", "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_stats(filled: Path) -> None:
    data = filled.parent / "data"
    size = sum(p.stat().st_size for p in (data / "store").rglob("*.dcm"))
    stats = stats_json(filled)
    assert stats == {"patients": 2, "studies": 3, "series": 4, "instances": 6, "bytes": size}
    text = run_cli(filled, "stats", timeout=30)
    assert text.returncode == 0
    assert [line.split(":")[0].strip() for line in text.stdout.splitlines()] == list(stats)
    assert f"{size:,}" in text.stdout


def test_verify_reports_missing_and_corrupt_files(filled: Path) -> None:
    ok = run_cli(filled, "verify", timeout=30)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "checked: 6" in ok.stdout and "all files match" in ok.stdout

    rows = sorted(catalogue_rows(filled.parent / "data").values(), key=lambda r: r["path"])
    data = filled.parent / "data"
    missing, corrupt = rows[0]["path"], rows[1]["path"]
    (data / missing).unlink()
    damaged = bytearray((data / corrupt).read_bytes())
    damaged[-1] ^= 0xFF  # one flipped bit in the pixel data keeps the file parseable
    (data / corrupt).write_bytes(bytes(damaged))

    bad = run_cli(filled, "verify", timeout=30)
    assert bad.returncode != 0
    assert f"missing: {missing} " in bad.stdout
    assert f"corrupt: {corrupt} " in bad.stdout
    assert "1 missing, 1 corrupt" in bad.stdout
    as_json = run_cli(filled, "verify", "--json", timeout=30)
    assert as_json.returncode != 0
    assert json.loads(as_json.stdout) == {"checked": 6, "missing": [missing], "corrupt": [corrupt]}


def test_reindex_rebuilds_a_lost_catalogue(filled: Path) -> None:
    data = filled.parent / "data"
    before_rows = catalogue_rows(data)
    before = stats_json(filled)
    for leftover in data.glob("catalogue.sqlite*"):
        leftover.unlink()
    assert stats_json(filled)["instances"] == 0
    result = run_cli(filled, "reindex", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "indexed: 6" in result.stdout
    assert stats_json(filled) == before
    after_rows = catalogue_rows(data)
    keys = ("path", "sha256", "size", "transfer_syntax", "pixel_offset", "pixel_length")
    assert {uid: [r[k] for k in keys] for uid, r in after_rows.items()} == {
        uid: [r[k] for k in keys] for uid, r in before_rows.items()}
    assert run_cli(filled, "verify", timeout=30).returncode == 0


def test_reindex_reports_unreadable_files(filled: Path) -> None:
    junk = filled.parent / "data" / "store" / "00" / "00" / "junk.dcm"
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"not a dicom file at all")
    result = run_cli(filled, "reindex", timeout=60)
    assert result.returncode == 1
    assert "indexed: 6" in result.stdout
    assert "unreadable: store/00/00/junk.dcm: " in result.stdout


# --- clean stop ----------------------------------------------------------------------------


@contextmanager
def serving(config: Path, port: int) -> Iterator[tuple[subprocess.Popen, LineCollector]]:
    """``python -m node serve`` with its output collected, so a test can read the log of a
    node it stopped itself; killed and drained in any case."""
    proc = subprocess.Popen([sys.executable, "-m", "node", "--config", str(config), "serve"],
                            cwd=config.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = LineCollector(proc.stdout)
    try:
        assert wait_until(lambda: proc.poll() is not None or echo_ok(port), timeout=30)
        assert proc.poll() is None, "\n".join(log.lines)
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        log.finish(timeout=10)


def held_association(port: int, called: str = "PACSNODE") -> Association:
    ae = AE(ae_title="HOLDER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    return assoc


@pytest.mark.dcmtk
def test_sigterm_closes_listener_and_lets_associations_finish(tmp_path: Path) -> None:
    """SIGTERM in the middle of a storescu run: no new association is accepted, the running
    ones finish (every instance gets its answer), the node exits 0 leaving no temp file."""
    site = tmp_path / "site"
    site.mkdir()
    port = free_port()
    config = write_node_config(site, port=port)
    files = [write_dataset(make_dataset(instance_number=i + 1), tmp_path / "in" / f"{i:04d}.dcm")
             for i in range(80)]
    with serving(config, port) as (node, log):
        idle = held_association(port)
        storescu = subprocess.Popen(storescu_args(port) + [str(f) for f in files], env=dcmtk_env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        output = LineCollector(storescu.stderr)

        def context() -> str:
            return "node:\n" + "\n".join(log.lines[-30:]) + "\nstorescu:\n" + "\n".join(output.lines[-10:])

        try:
            assert output.wait_for(lambda lines: len(successful_files(lines)) >= 10, timeout=30), context()
            node.send_signal(signal.SIGTERM)
            assert wait_until(lambda: port_refuses(port), timeout=10), "the listener is still open\n" + context()
            assert storescu.wait(timeout=60) == 0, context()
            assert len(successful_files(output.finish(timeout=10))) == len(files), context()
        finally:
            if storescu.poll() is None:
                storescu.kill()
                storescu.wait(timeout=10)
        assert node.poll() is None, context()  # still serving the idle association
        assert idle.send_c_echo().Status == 0x0000
        idle.release()
        assert node.wait(timeout=30) == 0, context()
    text = "\n".join(log.lines)
    assert "received SIGTERM, stopping" in text and "stopped" in text
    data = site / "data"
    assert list((data / "tmp").iterdir()) == []
    rows = catalogue_rows(data)
    assert len(rows) == len(files)
    assert all(sha256_file(data / r["path"]) == r["sha256"] for r in rows.values())


@pytest.mark.dcmtk
def test_sigint_stops_an_idle_node(tmp_path: Path) -> None:
    port = free_port()
    config = write_node_config(tmp_path, port=port)
    with serving(config, port) as (node, log):
        node.send_signal(signal.SIGINT)
        assert node.wait(timeout=30) == 0, "\n".join(log.lines)
    text = "\n".join(log.finish(timeout=10))
    assert "received SIGINT, stopping" in text
    assert "Traceback" not in text
    assert port_refuses(port)


def test_stop_aborts_its_own_associations_after_the_grace_only(make_settings) -> None:
    """An association still open on the listener after the grace period is aborted, not
    waited for; an association the same process holds with another peer (as a C-MOVE's
    C-STORE SCU does) is not the listener's and carries on."""
    peer = AE(ae_title="PEER")
    peer.add_supported_context(Verification)
    peer_server = peer.start_server(("127.0.0.1", 0), block=False)
    node = Node(make_settings()).start()
    port = node.dimse_address[1]
    to_node = held_association(port)
    to_peer = held_association(peer_server.server_address[1], called="PEER")
    try:
        node.stop(grace=0.2)
        assert wait_until(lambda: to_node.is_aborted, timeout=10)
        assert port_refuses(port)
        assert to_peer.is_established
        assert to_peer.send_c_echo().Status == 0x0000
    finally:
        for assoc in (to_node, to_peer):
            if assoc.is_established:
                assoc.release()
        peer_server.shutdown()
        node.stop()


def test_stop_does_not_wait_for_connections_that_never_associated(make_settings) -> None:
    """A TCP connection closed without an A-ASSOCIATE-RQ (a load balancer's port check) is
    nothing to wait for: the stop is prompt even with a long grace."""
    node = Node(make_settings()).start()
    port = node.dimse_address[1]
    try:
        for _ in range(2):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        wait_until(lambda: len(node.server.active_associations) == 2, timeout=5)
        started = time.monotonic()
        node.stop(grace=20)
        assert time.monotonic() - started < 5
        assert port_refuses(port)
    finally:
        node.stop()
