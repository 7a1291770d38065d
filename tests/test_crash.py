"""Crash safety: kill -9 the node in the middle of a storescu run, restart it, and check that
every acknowledged instance survived intact and nothing half-written is referenced."""

from __future__ import annotations

import io
import json
import secrets
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests.helpers import (
    LineCollector,
    catalogue_rows,
    dataset_bytes,
    dcmtk_env,
    free_port,
    make_dataset,
    node_process,
    run_cli,
    run_storescu,
    sha256_file,
    storescu_args,
    successful_files,
    write_node_config,
)

INSTANCES = 2000
KILL_AFTER = 300  # Success responses seen before the kill


@dataclass(frozen=True)
class Source:
    path: Path
    patient: str
    study: str
    series: str


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    """2,000 tiny instances (16x16): 4 patients, 2 studies each, 5 series a study; files are
    named after their SOP Instance UID so storescu's output names what was acknowledged.

    UIDs of one kind share their length, so each file is one encoded template with its
    UIDs and patient substituted (a pydicom write per file would cost seconds)."""
    folder = tmp_path_factory.mktemp("crash-sources")
    run = secrets.randbelow(9 * 10**9) + 10**9  # fresh UIDs on every run

    def uid(kind: int, n: int) -> str:
        return f"1.2.826.0.1.3680043.8.498.{run}.{kind}.{10000 + n}"

    template = dataset_bytes_of(make_dataset(patient_id="CRASH0", patient_name="CRASH^0", rows=16,
                                             columns=16, study_uid=uid(1, 0), series_uid=uid(2, 0),
                                             sop_uid=uid(3, 0)))
    found: dict[str, Source] = {}
    per_series = INSTANCES // 40
    for n in range(INSTANCES):
        series_n = n // per_series
        study_n = series_n // 5
        patient = f"CRASH{study_n // 2}"
        data = (template.replace(uid(3, 0).encode(), uid(3, n).encode())
                .replace(uid(2, 0).encode(), uid(2, series_n).encode())
                .replace(uid(1, 0).encode(), uid(1, study_n).encode())
                .replace(b"CRASH0", patient.encode()).replace(b"CRASH^0", f"CRASH^{study_n // 2}".encode()))
        path = folder / f"{uid(3, n)}.dcm"
        path.write_bytes(data)
        found[uid(3, n)] = Source(path, patient, uid(1, study_n), uid(2, series_n))
    assert len(found) == INSTANCES
    return found


def dataset_bytes_of(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def count_mismatches(data_dir: Path) -> list[tuple]:
    """Rows whose kept-up-to-date counts differ from the rows below them."""
    con = sqlite3.connect(f"file:{data_dir / 'catalogue.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("""
            SELECT 'series', s.id FROM series s
             WHERE s.num_instances != (SELECT COUNT(*) FROM instance i WHERE i.series_id = s.id)
            UNION ALL
            SELECT 'study', st.id FROM study st
             WHERE st.num_instances != (SELECT COUNT(*) FROM instance i JOIN series s ON i.series_id = s.id
                                        WHERE s.study_id = st.id)
                OR st.num_series != (SELECT COUNT(*) FROM series s WHERE s.study_id = st.id)
            UNION ALL
            SELECT 'patient', p.id FROM patient p
             WHERE p.num_instances != (SELECT COUNT(*) FROM instance i JOIN series s ON i.series_id = s.id
                                       JOIN study st ON s.study_id = st.id WHERE st.patient_id = p.id)
                OR p.num_studies != (SELECT COUNT(*) FROM study st WHERE st.patient_id = p.id)
        """).fetchall()
    finally:
        con.close()


@pytest.mark.dcmtk
def test_kill_9_mid_transfer_keeps_every_acknowledged_instance(tmp_path: Path,
                                                                sources: dict[str, Source]) -> None:
    site = tmp_path / "site"
    site.mkdir()
    port = free_port()
    config = write_node_config(site, port=port)
    data = site / "data"
    folder = next(iter(sources.values())).path.parent

    with node_process(config, port) as node:
        storescu = subprocess.Popen(storescu_args(port, "+sd") + [str(folder)], env=dcmtk_env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            output = LineCollector(storescu.stderr)
            seen = output.wait_for(lambda lines: len(successful_files(lines)) >= KILL_AFTER, timeout=60)
            node.kill()
            node.wait(timeout=10)
            assert seen, "\n".join(output.lines[-20:])
            assert storescu.wait(timeout=30) != 0  # its association died with the node
            lines = output.finish(timeout=10)
        finally:
            if storescu.poll() is None:
                storescu.kill()
                storescu.wait(timeout=10)

    acknowledged = {Path(f).stem for f in successful_files(lines)}
    assert KILL_AFTER <= len(acknowledged) < INSTANCES  # the kill came mid-transfer
    # what a kill inside write_durably leaves behind, whether or not this one did
    (data / "tmp" / "0123456789abcdef.part").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")

    with node_process(config, port):
        assert list((data / "tmp").iterdir()) == []  # temp leftovers cleaned at start
        check_catalogue_after_crash(config, sources, acknowledged)
        # the sender retries: what was stored is a duplicate (kept once), the rest is stored
        before = set(catalogue_rows(data))
        retry = sorted(acknowledged)[:50] + sorted(set(sources) - before)[:50]
        resend = run_storescu(port, [sources[uid].path for uid in retry])
        assert resend.returncode == 0, resend.stderr[-2000:]
        assert len(successful_files(resend.stderr)) == len(retry)
    assert "unfinished temp file(s)" in (site / "node.log").read_text()
    assert set(catalogue_rows(data)) == before | set(retry)
    assert count_mismatches(data) == []
    assert run_cli(config, "verify", timeout=60).returncode == 0


def check_catalogue_after_crash(config: Path, sources: dict[str, Source], acknowledged: set[str]) -> None:
    """Acknowledged instances are catalogued; every row points to its whole file; counts,
    verify and stats agree with the rows."""
    data = config.parent / "data"
    rows = catalogue_rows(data)
    assert acknowledged <= set(rows), f"{len(acknowledged - set(rows))} acknowledged instances lost"
    for uid, row in rows.items():
        stored = data / row["path"]
        assert sha256_file(stored) == row["sha256"] and stored.stat().st_size == row["size"], row["path"]
        assert dataset_bytes(stored.read_bytes()) == dataset_bytes(sources[uid].path.read_bytes())
    for path in (data / "store").rglob("*"):  # unreferenced files, if any, are whole files too
        if path.is_file():
            uid = path.name.split(".dcm")[0].rsplit(".", 1)[0]
            assert dataset_bytes(path.read_bytes()) == dataset_bytes(sources[uid].path.read_bytes())
    assert count_mismatches(data) == []

    verify = run_cli(config, "verify", timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"checked: {len(rows)}" in verify.stdout
    stats = run_cli(config, "stats", "--json", timeout=30)
    assert json.loads(stats.stdout) == {
        "patients": len({sources[uid].patient for uid in rows}),
        "studies": len({sources[uid].study for uid in rows}),
        "series": len({sources[uid].series for uid in rows}),
        "instances": len(rows),
        "bytes": sum(row["size"] for row in rows.values()),
    }
