"""Ingest scenarios: one storescu association sends a whole folder to a fresh peer.

Each peer is started on an empty store, measured, counted and stopped before the other starts
(the machine has two cores; running both at once would make them compete).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.datagen import CT_500, SMALL_2000, DataSpec, GeneratedData, ensure_data
from bench.harness import (Peer, expect_counts, run_storescu, start_node, start_orthanc,
                           warm_page_cache)
from bench.scenario import Row, RunContext, Scenario

MIB = 1024 * 1024


@dataclass(frozen=True)
class IngestResult:
    seconds: float
    instances: int
    megabytes: float
    peak_rss_bytes: int

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds


def ingest_into(peer: Peer, data: GeneratedData, spec: DataSpec, ctx: RunContext) -> IngestResult:
    """Send ``data`` on one association, check the counts, read the peak RSS before the stop."""
    warm_page_cache(data.folder)
    seconds = run_storescu(peer, data.folder)
    expect_counts(peer, patients=1, studies=1, series=spec.series, instances=data.count)
    rss = peer.peak_rss_bytes()
    ctx.note_log_problems(peer)
    return IngestResult(seconds, data.count, data.megabytes, rss)


def measure_ingest(ctx: RunContext, spec: DataSpec) -> dict[str, IngestResult]:
    """The same files into a fresh node and a fresh Orthanc, one after the other."""
    data = ensure_data(spec, ctx.work / "data")
    results: dict[str, IngestResult] = {}
    for label in ctx.order(["node", "Orthanc"]):
        if label == "node":
            with start_node(ctx.folder / "node") as peer:
                results[label] = ingest_into(peer, data, spec, ctx)
        else:
            with start_orthanc(ctx.folder / "orthanc") as peer:
                results[label] = ingest_into(peer, data, spec, ctx)
    return results


def ingest_rows(measurement: str, results: dict[str, IngestResult]) -> list[Row]:
    node, orthanc = results["node"], results["Orthanc"]
    return [
        Row(measurement, "instances/s", node.instances_per_s, orthanc.instances_per_s),
        Row(measurement, "MB/s", node.mb_per_s, orthanc.mb_per_s),
        Row(measurement, "peak RSS MiB", node.peak_rss_bytes / MIB, orthanc.peak_rss_bytes / MIB,
            higher_is_better=False),
    ]


def ingest_small(ctx: RunContext) -> list[Row]:
    return ingest_rows("ingest 2,000 small (64x64), 1 assoc", measure_ingest(ctx, SMALL_2000))


def ingest_ct(ctx: RunContext) -> list[Row]:
    return ingest_rows("ingest 500 CT (512x512x16), 1 assoc", measure_ingest(ctx, CT_500))


SCENARIOS = [
    Scenario("ingest-small", "2,000 64x64 16-bit MR instances, one study, 4 series, one association",
             ingest_small),
    Scenario("ingest-ct", "500 512x512 16-bit CT slices, one study/series, one association",
             ingest_ct),
]
