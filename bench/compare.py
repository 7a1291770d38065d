"""Run the node and Orthanc side by side on the same generated data and print one table.

    .venv/bin/python bench/compare.py                   # every scenario, once
    .venv/bin/python bench/compare.py --only ingest-ct  # a subset (name or prefix, repeatable)
    .venv/bin/python bench/compare.py --repeat 3        # median of 3 runs, range in brackets

Each row is one measurement with the node's figure, Orthanc's, node/Orthanc and which
direction is better. Every run starts each peer on a fresh store; data is cached in bench/work.
To add rows, write a scenario function (see bench/ingest.py) and list it in ``all_scenarios``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make ``bench`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ORTHANC_BINARY, REPO, WORK, BenchError  # noqa: E402
from bench.scenario import Scenario, Summary, print_table, run_scenario  # noqa: E402


def all_scenarios() -> list[Scenario]:
    """Every measurement, in table order."""
    from bench import dicomweb, ingest, query, retrieve, uploads, web

    return [*ingest.SCENARIOS, *query.SCENARIOS, *retrieve.SCENARIOS, *web.SCENARIOS, *uploads.SCENARIOS,
            *dicomweb.SCENARIOS]


def select(scenarios: list[Scenario], only: Sequence[str]) -> list[Scenario]:
    """``--only`` values match a scenario name exactly or as a prefix (``ingest`` = all ingest)."""
    if not only:
        return scenarios
    wanted = [w.strip() for value in only for w in value.split(",") if w.strip()]
    chosen = [s for s in scenarios if any(s.name == w or s.name.startswith(w) for w in wanted)]
    unknown = [w for w in wanted if not any(s.name == w or s.name.startswith(w) for s in scenarios)]
    if unknown:
        names = ", ".join(s.name for s in scenarios)
        raise SystemExit(f"error: unknown scenario(s) {', '.join(unknown)} (known: {names})")
    return chosen


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "?"


def _version(text: str) -> str:
    match = re.search(r"v?(\d+\.\d+(\.\d+)?)", text)
    return match.group(1) if match else text


def environment_header() -> list[str]:
    """Versions and machine, so a table can be compared with a later one."""
    commit = _first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    return [
        f"node commit {commit}; Orthanc {_version(_first_line([ORTHANC_BINARY, '--version']))}; "
        f"DCMTK {_version(_first_line(['storescu', '--version']))}; "
        f"{os.cpu_count()} CPUs; client storescu with TCP_NODELAY=1, loopback",
        "MB = 10^6 bytes of the files as sent; instances/s and MB/s from wall clock around storescu; "
        "peak RSS is VmHWM of the peer's process(es); fresh stores for every run",
    ]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only these scenarios (name or prefix; repeat or comma-separate)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each scenario N times; the table shows the median (default 1)")
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    parser.add_argument("--keep", action="store_true", help="keep the peers' stores and logs")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--work", type=Path, default=WORK, help=f"work folder (default {WORK})")
    return parser


def _as_json(summaries: list[Summary], repeat: int) -> dict:
    return {"repeat": repeat, "statistic": "median", "rows": [
        {"measurement": s.row.measurement, "unit": s.row.unit, "node": s.row.node,
         "orthanc": s.row.orthanc, "ratio": s.ratio, "higher_is_better": s.row.higher_is_better,
         "node_runs": list(s.node_runs), "orthanc_runs": list(s.orthanc_runs)} for s in summaries]}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    scenarios = select(all_scenarios(), args.only)
    if args.list:
        for s in scenarios:
            print(f"{s.name:<16} {s.description}")
        return 0
    if args.repeat < 1:
        raise SystemExit("error: --repeat must be at least 1")
    missing = [tool for tool in ("storescu", "echoscu", "findscu", ORTHANC_BINARY) if not shutil.which(tool)]
    if missing:
        print(f"error: not installed: {', '.join(missing)} (Debian packages dcmtk, orthanc)",
              file=sys.stderr)
        return 2
    summaries: list[Summary] = []
    notes: list[str] = []
    try:
        for scenario in scenarios:
            print(f"running {scenario.name} ({scenario.description}) x{args.repeat}",
                  file=sys.stderr, flush=True)
            summaries += run_scenario(scenario, args.work, args.repeat, args.keep, notes)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_table(summaries, args.repeat, environment_header(), notes)
    if args.json:
        args.json.write_text(json.dumps(_as_json(summaries, args.repeat), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
