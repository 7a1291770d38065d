"""Rows, scenarios and the comparison table.

A scenario is a function that measures both peers once and returns rows; compare.py runs it
``--repeat`` times and reports the median of each figure, so adding a measurement means
writing one function and listing it.
"""

from __future__ import annotations

import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from bench.harness import Peer, log_problems


@dataclass(frozen=True)
class Row:
    """One measurement: the node's figure, Orthanc's, and which direction is better."""

    measurement: str
    unit: str
    node: float
    orthanc: float | None
    higher_is_better: bool = True

    @property
    def key(self) -> tuple[str, str]:
        return self.measurement, self.unit


@dataclass
class RunContext:
    """What a scenario run gets: a scratch folder, its repeat index, and a place for notes."""

    scenario: str
    work: Path  # the work folder: generated data lives in work/data
    folder: Path  # this run's scratch folder (peers' stores and logs)
    index: int
    notes: list[str] = field(default_factory=list)

    def order(self, labels: Sequence[str]) -> list[str]:
        """Alternate which peer goes first between repeats, so neither always runs second."""
        return list(labels) if self.index % 2 == 0 else list(reversed(labels))

    def note_log_problems(self, peer: Peer) -> None:
        problems = log_problems(peer)
        if problems:
            self.notes.append(f"{self.scenario} run {self.index + 1}: {peer.label} logged "
                              f"{len(problems)} error line(s), first: {problems[0][:200]}")


@dataclass(frozen=True)
class Scenario:
    name: str  # what --only matches
    description: str
    run: Callable[[RunContext], list[Row]]


@dataclass(frozen=True)
class Summary:
    """The median of each figure over the repeats, with the range for context."""

    row: Row
    node_runs: tuple[float, ...]
    orthanc_runs: tuple[float, ...]

    @property
    def ratio(self) -> float | None:
        if self.row.orthanc in (None, 0):
            return None
        return self.row.node / self.row.orthanc


def run_scenario(scenario: Scenario, work: Path, repeat: int, keep: bool,
                 notes: list[str]) -> list[Summary]:
    """Run ``repeat`` times, each with fresh stores in its own folder; summarise by median."""
    runs: list[list[Row]] = []
    for index in range(repeat):
        folder = work / "runs" / f"{scenario.name}-{index + 1}"
        ctx = RunContext(scenario.name, work, folder, index, notes)
        try:
            runs.append(scenario.run(ctx))
        finally:
            if not keep and folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
    return summarise(runs)


def summarise(runs: list[list[Row]]) -> list[Summary]:
    order: list[tuple[str, str]] = []
    by_key: dict[tuple[str, str], list[Row]] = {}
    for rows in runs:
        for row in rows:
            if row.key not in by_key:
                order.append(row.key)
            by_key.setdefault(row.key, []).append(row)
    summaries = []
    for key in order:
        rows = by_key[key]
        node = tuple(r.node for r in rows)
        orthanc = tuple(r.orthanc for r in rows if r.orthanc is not None)
        median_row = Row(key[0], key[1], statistics.median(node),
                         statistics.median(orthanc) if orthanc else None, rows[0].higher_is_better)
        summaries.append(Summary(median_row, node, orthanc))
    return summaries


def _figure(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(median: float | None, runs: tuple[float, ...]) -> str:
    text = _figure(median)
    if len(runs) > 1:
        text += f" ({_figure(min(runs))}-{_figure(max(runs))})"
    return text


def _verdict(summary: Summary) -> str:
    ratio = summary.ratio
    if ratio is None:
        return ""
    if abs(ratio - 1) < 0.02:
        return "even"
    node_better = ratio > 1 if summary.row.higher_is_better else ratio < 1
    return "node" if node_better else "Orthanc"


def print_table(summaries: list[Summary], repeat: int, header: Sequence[str],
                notes: Sequence[str]) -> None:
    """One table: measurement, unit, node, Orthanc, node/Orthanc, which direction is better."""
    from rich.console import Console
    from rich.table import Table

    suffix = f"median of {repeat} runs (min-max)" if repeat > 1 else "1 run"
    table = Table(title=f"node vs Orthanc, {suffix}", title_justify="left")
    for name, justify in [("measurement", "left"), ("unit", "left"), ("node", "right"),
                          ("Orthanc", "right"), ("node/Orthanc", "right"), ("better", "left"),
                          ("ahead", "left")]:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for s in summaries:
        ratio = s.ratio
        table.add_row(s.row.measurement, s.row.unit, _cell(s.row.node, s.node_runs),
                      _cell(s.row.orthanc, s.orthanc_runs),
                      "-" if ratio is None else f"{ratio:.2f}",
                      "higher" if s.row.higher_is_better else "lower", _verdict(s))
    console = Console(width=max(160, Console().width))  # piped output: do not wrap rows
    for line in header:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(table)
    for note in notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
