"""``node retrieve`` as a user sees it: a bar per series (received of expected) while the job
runs, and a summary of what was fetched, already present and failed when it ends."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import pytest
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from scu.cli import JobProgress
from scu.jobs import JobView, SeriesProgress
from tests.helpers import free_port, node_process, run_cli, write_node_config
from tests.test_jobs import ScriptedArchive, make_series
from tests.test_scu_store import part10


def view(**changes: object) -> JobView:
    base = dict(id=1, remote="ARCHIVE", method="move", selection=[["PatientID", "P"]], state="running",
                cancel_requested=False, planned=True, series=2, series_done=1, series_failed=0,
                expected=8, received=5, failed=0, attempts=2, last_error=None, created_at="",
                started_at=None, finished_at=None, updated_at="")
    return JobView(**{**base, **changes})  # type: ignore[arg-type]


def test_progress_has_a_bar_per_series_with_received_of_expected() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        console=console, auto_refresh=False)
    bars = JobProgress(progress)
    bars.update(view(planned=False, state="queued"), [])
    assert progress.tasks[0].description == "querying ARCHIVE"
    series = [SeriesProgress(0, "1.2.3.44444444", "CT", 2, "done", 3, 3),
              SeriesProgress(1, "1.2.3.55555555", "MR", 3, "pending", 5, 2)]
    bars.update(view(), series)
    whole, ct, mr = progress.tasks
    assert (whole.completed, whole.total) == (5, 8) and whole.description == "ARCHIVE: 1/2 series"
    assert (ct.completed, ct.total, mr.completed, mr.total) == (3, 3, 2, 5)
    assert "series 2 CT ...44444444" in ct.description and "series 3 MR" in mr.description
    console.print(progress.get_renderable())
    text = out.getvalue()
    assert "5/8" in text and "3/3" in text and "2/5" in text


@pytest.fixture
def archive() -> Iterator[ScriptedArchive]:
    scripted = ScriptedArchive(make_series(3, series=2, patient_id="CLI1"))
    yield scripted
    scripted.stop()


def node_config(tmp_path: Path, archive: ScriptedArchive, port: int, attempts: int = 3) -> Path:
    archive.destinations["PACSNODE"] = ("127.0.0.1", port)
    return write_node_config(tmp_path, port=port, extra=(
        f'[remotes.SCRIPTED]\nhost = "127.0.0.1"\nport = {archive.port}\n'
        f"[retrieve]\nretry_delay = 0.05\nmax_retry_delay = 0.1\nmax_attempts = {attempts}\n"))


def test_summary_counts_fetched_and_already_present(tmp_path: Path, archive: ScriptedArchive) -> None:
    port = free_port()
    config = node_config(tmp_path, archive, port)
    held = tmp_path / "held.dcm"
    held.write_bytes(part10(archive.datasets[4]))  # one instance of the second series is here
    assert run_cli(config, "import", str(held)).returncode == 0
    with node_process(config, port):
        result = run_cli(config, "retrieve", "--from", "SCRIPTED", "--patient", "CLI1", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed" in result.stdout and "6 of 6 instances, 2 of 2 series" in result.stdout
    assert "fetched: 5, already present: 1, failed: 0" in result.stdout


def test_summary_counts_what_failed(tmp_path: Path, archive: ScriptedArchive) -> None:
    archive.move = "abort"  # drops the association at every C-MOVE
    port = free_port()
    config = node_config(tmp_path, archive, port, attempts=1)
    with node_process(config, port):
        result = run_cli(config, "retrieve", "--from", "SCRIPTED", "--patient", "CLI1", timeout=60)
    assert result.returncode == 1
    assert "job 1 failed" in result.stdout
    assert "fetched: 0, already present: 0, failed: 6" in result.stdout
