"""A ledger after months of low-rate service: close-epoch, an analyst query and verify, before and after compaction.

Appends the same events to two embedded ledgers: `small` in many small appends (what a low-rate ingest
writes, one append per `batch_latency_ms_max`), `large` in a few large ones. Then times, on each, a
`close-epoch --dry-run`, the documented analyst query `SELECT model_id, sum(fee_micros) FROM inference_events
GROUP BY ALL` (docs/analytics.md) and `verify`; compacts `small` (`royalty compact`) and times them again.
Reports append latency (wall and this process's CPU) per size class, catalog bytes per append, files per table,
the catalog's rows per table, and the ratios small/large before and after compaction (the issue's target: within
1.2x after compaction). With `--expire`, then expires every snapshot the retention policy lets go (`royalty expire
--older-than-s 0`, ledger/expiry.py) and reports the catalog's live bytes (SQLite pages in use) per append before
and after, and the figures again.

    python benchmarks/longrun_bench.py --appends 2000 --events-per-append 200 --large-appends 4

The issue-scale run: appends of 100 to 1,000 events (uniform, seeded) with a few large ones among them, and the
figures taken at checkpoints (the large ledger is given the same events, in batches of at most
`--large-batch-events`, at each checkpoint); `--out` keeps each checkpoint's figures as they are taken:

    flock /tmp/coord/bigrun.lock python benchmarks/longrun_bench.py --appends 10000 --events-per-append 100 \
        --events-per-append-max 1000 --large-within 3 --large-within-events 50000 \
        --checkpoints 1000,3000,10000 --repeat 1 --expire --out /tmp/longrun.json

Events are generated as they are appended (two generators of the same seed feed the two ledgers), so memory
stays that of the largest batch. Each figure is the fastest of `--repeat` runs.
"""

import argparse
import json
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ingest.sample import SampleShape, SampleTraffic
from ledger import IngestBatch, Ledger, PartitionOffsets, define_views, run_query
from ledger.catalog_flush import flushed_tables
from ledger.compaction import compact, live_files
from ledger.expiry import expire
from ledger.verify import verify
from schemas import BatchDecoder
from settlement import close_epoch
from settlement.use_cases.ledger_setup import register_with_ledger

analyst_query = "SELECT model_id, sum(fee_micros) AS fee_micros FROM inference_events GROUP BY ALL ORDER BY ALL"
# Append latency is reported per size class: events in the append, lower bounds.
size_classes = (1, 100, 250, 500, 750, 1_001, 10_000)


class _Stream:
    """The registry, then metered events in order, from a seeded generator; each ledger has its own stream."""

    def __init__(self, shape: SampleShape, seed: int, decoder: BatchDecoder) -> None:
        self.traffic = SampleTraffic(shape, seed=seed)
        self.registry = list(self.traffic.registry())
        self.decoder = decoder
        self.events = 0  # metered events taken
        self.offset = 0  # next partition offset

    def batch(self, values: list[bytes]) -> tuple[IngestBatch, list[PartitionOffsets]]:
        start = self.offset
        offsets = list(range(start, start + len(values)))
        self.offset += len(values)
        batch = IngestBatch.from_messages(values, ["bench"] * len(values), [0] * len(values), offsets, self.decoder)
        return batch, [PartitionOffsets("bench", 0, start, self.offset)]

    def take(self, count: int) -> list[bytes]:
        values = list(self.traffic.metered(count, self.events))
        self.events += count
        return values


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
            "close_epoch_dry_run_s": round(_fastest(lambda: close_epoch(ledger, dry_run=True), repeat), 3),
            "analyst_query_s": round(_fastest(lambda: run_query(ledger, analyst_query), repeat), 3),
            "verify_s": round(_fastest(lambda: verify(ledger), repeat), 3),
            "event_files": len(live_files(ledger, "inference_metered")),
        }
    figures["catalog_bytes"] = (lake / "catalog.sqlite").stat().st_size
    figures["catalog_live_bytes"] = _catalog_live_bytes(lake)
    figures["catalog_largest_tables_bytes"] = _largest_tables(lake)
    figures["catalog_rows"] = catalog_rows(lake)
    # The Parquet files an expiry moved the bookkeeping rows into (ledger/catalog_flush.py): they grow the data folder.
    figures["bookkeeping_file_bytes"] = sum(
        path.stat().st_size for table in flushed_tables for path in (lake / "data" / "main" / table).glob("*.parquet")
    )
    return figures


def _inlined_names(catalog: sqlite3.Connection) -> dict[str, str]:
    return dict(
        catalog.execute(
            "SELECT i.table_name, t.table_name FROM ducklake_inlined_data_tables i JOIN ducklake_table t "
            "USING (table_id)"
        ).fetchall()
    )


def _largest_tables(lake: Path, count: int = 10) -> dict[str, int]:
    """The catalog's largest tables and indexes by bytes in use (SQLite's dbstat), inlined tables by ledger name."""
    with sqlite3.connect(f"file:{lake / 'catalog.sqlite'}?mode=ro", uri=True) as catalog:
        names = _inlined_names(catalog)
        rows = catalog.execute(
            "SELECT name, sum(pgsize) - sum(unused) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT ?", [count]
        ).fetchall()
    return {f"{name} ({names[name]})" if name in names else name: int(size) for name, size in rows}


def catalog_rows(lake: Path) -> dict[str, int]:
    """Rows of every non-empty table of the SQLite catalog (inlined tables by ledger name)."""
    with sqlite3.connect(f"file:{lake / 'catalog.sqlite'}?mode=ro", uri=True) as catalog:
        names = _inlined_names(catalog)
        tables = [name for (name,) in catalog.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        counts = {name: catalog.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in tables}
    return {f"{name} ({names[name]})" if name in names else name: n for name, n in sorted(counts.items()) if n}


def _catalog_live_bytes(lake: Path) -> int:
    """Bytes of the SQLite catalog's pages in use: the file keeps its size after rows are deleted (freed pages are
    reused by later rows, or returned by `VACUUM`)."""
    with sqlite3.connect(f"file:{lake / 'catalog.sqlite'}?mode=ro", uri=True) as catalog:
        ((pages,),) = catalog.execute("PRAGMA page_count").fetchall()
        ((free,),) = catalog.execute("PRAGMA freelist_count").fetchall()
        ((size,),) = catalog.execute("PRAGMA page_size").fetchall()
    return (pages - free) * size


def _append(ledger: Ledger, stream: _Stream, values: list[bytes], timings: list | None = None) -> None:
    batch, offsets = stream.batch(values)
    wall, cpu = time.perf_counter(), time.process_time()
    ledger.append(batch, offsets)
    if timings is not None:
        timings.append((len(values), time.perf_counter() - wall, time.process_time() - cpu))


def _sizes(args: argparse.Namespace) -> list[int]:
    """Events of each small append (after the registry's): uniform in the size range, large ones spread among them."""
    rng = random.Random(args.seed)
    high = max(args.events_per_append, args.events_per_append_max or args.events_per_append)
    sizes = [rng.randint(args.events_per_append, high) for _ in range(args.appends)]
    for index in range(1, args.large_within + 1):
        sizes[index * args.appends // (args.large_within + 1)] = args.large_within_events
    return sizes


def _latencies(timings: list[tuple[int, float, float]]) -> dict:
    """Wall and CPU ms per size class: median, p95, count."""
    result = {}
    for low, high in zip(size_classes, [*size_classes[1:], 10**12], strict=True):
        rows = [(wall, cpu) for events, wall, cpu in timings if low <= events < high]
        if not rows:
            continue
        walls = sorted(wall for wall, _ in rows)
        result[f"{low}-{high - 1}" if high < 10**12 else f"{low}+"] = {
            "appends": len(rows),
            "wall_ms_median": round(statistics.median(walls) * 1000, 1),
            "wall_ms_p95": round(walls[int(len(walls) * 0.95)] * 1000, 1),
            "cpu_ms_median": round(statistics.median(cpu for _, cpu in rows) * 1000, 1),
        }
    return result


def _emit(result: dict, out: Path | None) -> None:
    text = json.dumps(result, indent=2)
    if out is not None:
        out.write_text(text + "\n")
    print(f"[{time.strftime('%H:%M:%S')}] {json.dumps({k: result[k] for k in list(result)[-1:]})}", file=sys.stderr)


def main() -> None:
    register_with_ledger()  # the settlement's tables and views, as every entry point declares them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=2_000, help="small appends (after the registry's)")
    parser.add_argument("--events-per-append", type=int, default=200, help="events a small append (the least)")
    parser.add_argument("--events-per-append-max", type=int, default=None, help="the most (uniform between)")
    parser.add_argument("--large-within", type=int, default=0, help="large appends among the small ones")
    parser.add_argument("--large-within-events", type=int, default=50_000)
    parser.add_argument("--large-appends", type=int, default=4, help="appends of the large ledger (no --checkpoints)")
    parser.add_argument("--large-batch-events", type=int, default=500_000, help="largest append (--checkpoints)")
    parser.add_argument("--checkpoints", default="", help="small appends after which to measure, e.g. 1000,3000")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--expire", action="store_true", help="also expire snapshots after compacting, and measure")
    parser.add_argument(
        "--flush-rows-min", type=int, default=None, help="expire's bookkeeping flush threshold (default: the ledger's)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as they are taken")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="build the two ledgers here and keep them (default: a temp folder)"
    )
    args = parser.parse_args()

    sizes = _sizes(args)
    checkpoints = sorted({int(c) for c in args.checkpoints.split(",") if c} | {args.appends})
    total = sum(sizes)
    shape = SampleShape(models=100, contributors=1_000, events_per_day=max(1_000_000, total // 10))
    decoder = BatchDecoder()
    small, large = _Stream(shape, args.seed, decoder), _Stream(shape, args.seed, decoder)
    large_batch = args.large_batch_events if args.checkpoints else -(-total // args.large_appends)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="longrun-bench-"))
    result: dict = {"command": " ".join(sys.argv), "machine": platform.platform(), "checkpoints": []}
    timings: list[tuple[int, float, float]] = []
    large_appends = 0
    try:
        done = 0
        for checkpoint in checkpoints:
            segment_start = len(timings)
            with Ledger.open(workdir / "small") as ledger:
                if done == 0:
                    _append(ledger, small, small.registry)
                for size in sizes[done:checkpoint]:
                    _append(ledger, small, small.take(size), timings)
            with Ledger.open(workdir / "large") as ledger:
                if large.offset == 0:
                    _append(ledger, large, large.registry)
                    large_appends += 1
                while large.events < small.events:
                    _append(ledger, large, large.take(min(large_batch, small.events - large.events)))
                    large_appends += 1
            done = checkpoint
            point = {
                "appends": checkpoint + 1,
                "events": small.events,
                "large_appends": large_appends,
                "append_latency": _latencies(timings[segment_start:]),
                "large": _measure(workdir / "large", args.repeat),
                "small_before": _measure(workdir / "small", args.repeat),
            }
            point["catalog_live_bytes_per_append"] = round(
                (point["small_before"]["catalog_live_bytes"] - point["large"]["catalog_live_bytes"])
                / (checkpoint + 1 - large_appends)
            )
            point["ratios_before"] = {
                key: round(point["small_before"][key] / point["large"][key], 2)
                for key in ("close_epoch_dry_run_s", "analyst_query_s", "verify_s")
            }
            result["checkpoints"].append(point)
            _emit(result, args.out)
        result["append_latency"] = _latencies(timings)
        appends = args.appends + 1
        last = result["checkpoints"][-1]
        result["large"], result["small_before"] = last["large"], last["small_before"]
        with Ledger.open(workdir / "small") as ledger:
            started = time.perf_counter()
            report = compact(ledger)
            result["compact_s"] = round(time.perf_counter() - started, 2)
            result["compact"] = {"merges": report.merges, "files_retired": report.files_retired}
        result["small_after"] = _measure(workdir / "small", args.repeat)
        with Ledger.open(workdir / "small") as ledger:  # also re-reading the retired files (`--retired-files`)
            result["small_after"]["verify_retired_files_s"] = round(
                _fastest(lambda: verify(ledger, retired_files=True), args.repeat), 3
            )
        _emit(result, args.out)
        whens = ["before", "after"]
        if args.expire:
            with Ledger.open(workdir / "small") as ledger:
                started = time.perf_counter()
                flush = {} if args.flush_rows_min is None else {"flush_rows_min": args.flush_rows_min}
                expired = expire(ledger, older_than_s=0, delete_files_after_s=0, **flush)
                result["expire_s"] = round(time.perf_counter() - started, 2)
                result["expire"] = {
                    "snapshots_expired": expired.snapshots_expired,
                    "snapshots_retained": expired.snapshots_retained,
                    "files_dropped": expired.files_dropped,
                    "bookkeeping_rows_flushed": expired.rows_flushed,
                }
            result["small_expired"] = _measure(workdir / "small", args.repeat)
            whens.append("expired")
        large_live = result["large"]["catalog_live_bytes"]
        result["catalog_live_bytes_per_append"] = {
            when: round((result[f"small_{when}"]["catalog_live_bytes"] - large_live) / (appends - large_appends))
            for when in whens
        }
        for key in ("close_epoch_dry_run_s", "analyst_query_s", "verify_s"):
            for when in whens:
                result.setdefault("ratios", {})[f"{key}_{when}"] = round(
                    result[f"small_{when}"][key] / result["large"][key], 2
                )
        _emit(result, args.out)
        print(json.dumps(result, indent=2))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
