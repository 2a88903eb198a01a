"""Wall time of five typical analyst queries on a settled ledger of N events, and ledger bytes per event.

Builds the ledger as `split_bench.py` does (the registry ingested as events; N metering events written
straight to Parquet with polars and added to a fresh SQLite-catalog DuckLake), closes the epoch for real,
then runs each query the way `royalty sql` does (read-only attachment, analyst views, `run_query`): once
cold on a fresh connection, then best of `--repeats` warm.

    python benchmarks/sql_bench.py --events 100000000 [--keep]
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from split_bench import events_file, files_events_max, registry

from ledger import IngestBatch, Ledger, PartitionOffsets, define_views, run_query
from schemas import BatchDecoder
from settlement import InputChecks, close_epoch
from settlement.use_cases.ledger_setup import register_with_ledger

queries = {
    "revenue by model and day": """
        SELECT model_id, event_date, sum(fee_micros) AS fees_micros, count(*) AS calls
        FROM inference_events GROUP BY ALL ORDER BY event_date, fees_micros DESC""",
    "top 20 payers": """
        SELECT payer, sum(fee_micros) AS spent_micros, count(*) AS calls FROM inference_events
        GROUP BY ALL ORDER BY spent_micros DESC LIMIT 20""",
    "one model's calls and fees per hour": """
        SELECT date_trunc('hour', event_time) AS hour, count(*) AS calls, sum(fee_micros) AS fees_micros
        FROM inference_events WHERE model_id = 'model-0500' GROUP BY ALL ORDER BY hour""",
    "top 20 contributors by cumulative payable": """
        SELECT recipient, max(cumulative_micros) AS earned_micros FROM payables GROUP BY ALL
        ORDER BY earned_micros DESC LIMIT 20""",
    "reconciliation summary": """
        SELECT check_name, sum(items_off) AS items_off, sum(difference_micros) AS off_micros
        FROM reconciliation GROUP BY ALL""",
}

# The bench writes its events straight to Parquet (no append, so no recorded checksums): close-epoch's
# file checks would refuse them; benchmarks/input_checks_bench.py measures those checks.
_bench_files = InputChecks(accept_unverified_files=True)


def build(folder: Path, events: int, models: int, contributors: int) -> float:
    """A settled ledger of `events` events under `folder/lake`; returns the close-epoch seconds."""
    with Ledger.open(folder / "lake") as ledger:
        values = registry(models, contributors)
        batch = IngestBatch.from_messages(
            values, ["r"] * len(values), [0] * len(values), list(range(len(values))), BatchDecoder()
        )
        ledger.append(batch, [PartitionOffsets("r", 0, 0, len(values))])
        paths = []
        for first in range(0, events, files_events_max):
            path = folder / "lake" / "data" / "main" / "inference_metered" / f"bench-{first}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            events_file(path, first, min(files_events_max, events - first), models)
            paths.append(path)
        connection = ledger.connection
        connection.execute("BEGIN TRANSACTION")
        for path in paths:
            connection.execute("CALL ducklake_add_data_files('lake', 'inference_metered', ?)", [str(path)])
        connection.execute("COMMIT")
        began = time.perf_counter()
        summary = close_epoch(ledger, checks=_bench_files)
        assert summary.event_count == events, summary
        return time.perf_counter() - began


def timed(lake: Path, sql: str) -> tuple[float, int]:
    began = time.perf_counter()
    with Ledger.open_read_only(lake) as ledger:
        define_views(ledger)
        rows = run_query(ledger, sql).num_rows
    return time.perf_counter() - began, rows


def main() -> None:
    register_with_ledger()  # the settlement's tables and views, as every entry point declares them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--models", type=int, default=1_000)
    parser.add_argument("--contributors", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="Keep the ledger folder and print its path.")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sql-bench-"))
    try:
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start", flush=True)
        began = time.perf_counter()
        close_s = build(folder, args.events, args.models, args.contributors)
        print(
            f"built and settled {args.events:,} events in {time.perf_counter() - began:.1f} s "
            f"(close-epoch {close_s:.1f} s)"
        )
        lake = folder / "lake"
        data_bytes = sum(p.stat().st_size for p in (lake / "data").rglob("*") if p.is_file())
        catalog_bytes = (lake / "catalog.sqlite").stat().st_size
        print(
            f"ledger bytes: {data_bytes:,} data + {catalog_bytes:,} catalog = "
            f"{(data_bytes + catalog_bytes) / args.events:.1f} bytes per event"
        )
        print(f"| query | rows | cold (s) | warm best of {args.repeats} (s) |")
        print("| --- | ---: | ---: | ---: |")
        for name, sql in queries.items():
            cold_s, rows = timed(lake, sql)
            warm_s = min(timed(lake, sql)[0] for _ in range(args.repeats))
            print(f"| {name} | {rows:,} | {cold_s:.2f} | {warm_s:.2f} |", flush=True)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
