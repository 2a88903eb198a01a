"""A ledger after months of low-rate service: close-epoch, an analyst query and verify, before and after compaction.

Appends the same events to two embedded ledgers: `small` in many small appends (what a low-rate ingest
writes, one append per `batch_latency_ms_max`), `large` in a few large ones. Then times, on each, a
`close-epoch --dry-run`, the documented analyst query `SELECT model_id, sum(fee_micros) FROM inference_events
GROUP BY ALL` (docs/analytics.md) and `verify`; compacts `small` (`royalty compact`) and times them again.
Reports append latency per size class, catalog bytes per append, files per table and the ratios
small/large before and after compaction (the issue's target: within 1.2x after compaction). With `--expire`, then
expires every snapshot the retention policy lets go (`royalty expire --older-than-s 0`, ledger/expiry.py) and reports
the catalog's live bytes (SQLite pages in use) per append before and after, and the figures again.

    python benchmarks/longrun_bench.py --appends 2000 --events-per-append 200 --large-appends 4

Each figure is the fastest of `--repeat` runs. Keep a run under a few minutes on a shared machine.
"""

import argparse
import json
import platform
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from ingest.sample import SampleShape, SampleTraffic
from ledger import IngestBatch, Ledger, PartitionOffsets, define_views, run_query
from ledger.compaction import compact, live_files
from ledger.expiry import expire
from ledger.verify import verify
from schemas import BatchDecoder
from settlement import close_epoch
from settlement.use_cases.ledger_setup import register_with_ledger

analyst_query = "SELECT model_id, sum(fee_micros) AS fee_micros FROM inference_events GROUP BY ALL ORDER BY ALL"


def _batches(values: list[bytes], size: int, decoder: BatchDecoder) -> list[tuple[IngestBatch, list]]:
    batches = []
    for start in range(0, len(values), size):
        chunk = values[start : start + size]
        offsets = list(range(start, start + len(chunk)))
        batch = IngestBatch.from_messages(chunk, ["bench"] * len(chunk), [0] * len(chunk), offsets, decoder)
        batches.append((batch, [PartitionOffsets("bench", 0, start, start + len(chunk))]))
    return batches


def _fastest(work, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def _measure(lake: Path, repeat: int) -> dict:
    with Ledger.open(lake) as ledger:
        define_views(ledger)
        figures = {
            "close_epoch_dry_run_s": _fastest(lambda: close_epoch(ledger, dry_run=True), repeat),
            "analyst_query_s": _fastest(lambda: run_query(ledger, analyst_query), repeat),
            "verify_s": _fastest(lambda: verify(ledger), repeat),
            "event_files": len(live_files(ledger, "inference_metered")),
        }
    figures["catalog_bytes"] = (lake / "catalog.sqlite").stat().st_size
    figures["catalog_live_bytes"] = _catalog_live_bytes(lake)
    figures["catalog_largest_tables_bytes"] = _largest_tables(lake)
    return figures


def _largest_tables(lake: Path, count: int = 8) -> dict[str, int]:
    """The catalog's largest tables and indexes by bytes in use (SQLite's dbstat), inlined tables by ledger name."""
    with sqlite3.connect(f"file:{lake / 'catalog.sqlite'}?mode=ro", uri=True) as catalog:
        names = dict(
            catalog.execute(
                "SELECT i.table_name, t.table_name FROM ducklake_inlined_data_tables i JOIN ducklake_table t "
                "USING (table_id)"
            ).fetchall()
        )
        rows = catalog.execute(
            "SELECT name, sum(pgsize) - sum(unused) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT ?", [count]
        ).fetchall()
    return {f"{name} ({names[name]})" if name in names else name: int(size) for name, size in rows}


def _catalog_live_bytes(lake: Path) -> int:
    """Bytes of the SQLite catalog's pages in use: the file keeps its size after rows are deleted (freed pages are
    reused by later rows, or returned by `VACUUM`)."""
    with sqlite3.connect(f"file:{lake / 'catalog.sqlite'}?mode=ro", uri=True) as catalog:
        ((pages,),) = catalog.execute("PRAGMA page_count").fetchall()
        ((free,),) = catalog.execute("PRAGMA freelist_count").fetchall()
        ((size,),) = catalog.execute("PRAGMA page_size").fetchall()
    return (pages - free) * size


def _append_all(lake: Path, batches: list) -> list[float]:
    latencies = []
    with Ledger.open(lake) as ledger:
        for batch, offsets in batches:
            started = time.perf_counter()
            ledger.append(batch, offsets)
            latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    register_with_ledger()  # the settlement's tables and views, as every entry point declares them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=2_000, help="small appends")
    parser.add_argument("--events-per-append", type=int, default=200)
    parser.add_argument("--large-appends", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--expire", action="store_true", help="also expire snapshots after compacting, and measure")
    args = parser.parse_args()

    traffic = SampleTraffic(SampleShape(models=100, contributors=1_000), seed=11)
    registry = list(traffic.registry())
    events = list(traffic.metered(args.appends * args.events_per_append))
    decoder = BatchDecoder()
    small = _batches(registry + events, args.events_per_append, decoder)
    large = _batches(registry + events, -(-len(registry + events) // args.large_appends), decoder)
    workdir = Path(tempfile.mkdtemp(prefix="longrun-bench-"))
    try:
        small_latencies = _append_all(workdir / "small", small)
        _append_all(workdir / "large", large)
        result: dict = {
            "appends": len(small),
            "events": len(events),
            "append_ms_median": round(statistics.median(small_latencies) * 1000, 1),
            "append_ms_p95": round(sorted(small_latencies)[int(len(small_latencies) * 0.95)] * 1000, 1),
            "large": _measure(workdir / "large", args.repeat),
            "small_before": _measure(workdir / "small", args.repeat),
        }
        result["catalog_bytes_per_append"] = round(
            (result["small_before"]["catalog_bytes"] - result["large"]["catalog_bytes"]) / (len(small) - len(large))
        )
        with Ledger.open(workdir / "small") as ledger:
            started = time.perf_counter()
            report = compact(ledger)
            result["compact_s"] = round(time.perf_counter() - started, 2)
            result["compact"] = {"merges": report.merges, "files_retired": report.files_retired}
        result["small_after"] = _measure(workdir / "small", args.repeat)
        with Ledger.open(workdir / "small") as ledger:  # also re-reading the retired files (`--retired-files`)
            result["small_after"]["verify_retired_files_s"] = _fastest(
                lambda: verify(ledger, retired_files=True), args.repeat
            )
        whens = ["before", "after"]
        if args.expire:
            with Ledger.open(workdir / "small") as ledger:
                started = time.perf_counter()
                expired = expire(ledger, older_than_s=0, delete_files_after_s=0)
                result["expire_s"] = round(time.perf_counter() - started, 2)
                result["expire"] = {
                    "snapshots_expired": expired.snapshots_expired,
                    "snapshots_retained": expired.snapshots_retained,
                    "files_dropped": expired.files_dropped,
                }
            result["small_expired"] = _measure(workdir / "small", args.repeat)
            whens.append("expired")
            large_live = result["large"]["catalog_live_bytes"]
            result["catalog_live_bytes_per_append"] = {
                when: round((result[f"small_{when}"]["catalog_live_bytes"] - large_live) / (len(small) - len(large)))
                for when in whens
            }
        for key in ("close_epoch_dry_run_s", "analyst_query_s", "verify_s"):
            for when in whens:
                result.setdefault("ratios", {})[f"{key}_{when}"] = round(
                    result[f"small_{when}"][key] / result["large"][key], 2
                )
        result["machine"] = platform.platform()
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
