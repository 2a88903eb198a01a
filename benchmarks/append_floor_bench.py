"""What DuckLake alone charges for the records a small append must commit: the floor under issue 19's < 50 ms.

A ledger append of metered events commits, in one transaction: the events' Parquet file, the two rollup files
(`metered_rollup`, `metered_payer_rollup`: issue 20 wants them in the same transaction), each registered with
`ducklake_add_data_files`, and one inlined row or more in four bookkeeping tables (`ingest_offset`,
`ingest_batch`, `file_checksum`, `inlined_digest`). It also reads the snapshot it starts from (the offsets
fence) and, after its COMMIT, the snapshot it made.

This script appends `--prior-appends` + `--appends` batches of `--batch` events to a ledger and times the last
`--appends` (CPU of this process, as `append_bench.py --fixed-cost`). In the same run, on a plain DuckLake with
the ledger's tables and inlining options (SQLite catalog, no ledger code), it commits the same records: copies
of that ledger's own last three data files and one row of each bookkeeping table, as many transactions as
there were prior appends first. Each DuckLake step is timed on its own, and so are shapes with fewer files or
tables. The DuckLake floor is what an append of this shape costs before a line of the ledger's own work
(dedup, rollups, checksums, Parquet encoding).

    python benchmarks/append_floor_bench.py --batch 1000 --prior-appends 100 --appends 60
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from append_bench import _batches, _plain_ducklake

from ingest.sample import SampleShape, SampleTraffic
from ledger import Ledger, recorder
from ledger.ledger import _values_sql
from ledger.tables import create_statements, inlining_statements

file_tables = ("inference_metered", "metered_rollup", "metered_payer_rollup")
bookkeeping_tables = ("ingest_offset", "ingest_batch", "file_checksum", "inlined_digest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--prior-appends", type=int, default=100)
    parser.add_argument("--appends", type=int, default=60)
    args = parser.parse_args()
    print(f"load before {os.getloadavg()}")
    workdir = Path(tempfile.mkdtemp(prefix="append-floor-"))
    try:
        ledger_ms, templates, rows = _ledger_appends(workdir / "lake", args)
        print(f"ledger append of {args.batch} events: cpu median {ledger_ms:.1f} ms ({args.appends} appends)")
        plain = _plain_ducklake(workdir / "plain")
        # As the ledger's small appends run (`Ledger._threads_for`, `connection.connect`).
        plain.execute("SET threads = 1")
        plain.execute("SET ducklake_max_retry_count = 0")
        for statement in create_statements("plain") + inlining_statements("plain"):
            plain.execute(statement)
        shapes = {
            "the append's records: 3 files + 4 inlined tables": (file_tables, bookkeeping_tables),
            "events file only + 4 inlined tables": (file_tables[:1], bookkeeping_tables),
            "3 files, no inlined table": (file_tables, ()),
            "events file only, no inlined table": (file_tables[:1], ()),
        }
        for _ in range(args.prior_appends):
            _commit(plain, workdir, templates, rows, file_tables, bookkeeping_tables)
        for name, (files, tables) in shapes.items():
            steps = defaultdict(list)
            for _ in range(args.appends):
                for step, cpu_s in _commit(plain, workdir, templates, rows, files, tables).items():
                    steps[step].append(cpu_s)
            total_ms = statistics.median(map(sum, zip(*steps.values(), strict=True))) * 1000
            detail = ", ".join(f"{step} {statistics.median(times) * 1000:.1f}" for step, times in steps.items())
            print(f"DuckLake floor, {name}: cpu median {total_ms:.1f} ms ({detail})")
            if name.startswith("the append's"):
                print(f"ratio ledger append / its DuckLake floor: {ledger_ms / total_ms:.2f}")
        plain.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"load after {os.getloadavg()}; cores {os.cpu_count()}")


def _ledger_appends(lake: Path, args: argparse.Namespace) -> tuple[float, dict, dict]:
    """The ledger's median append CPU in ms, its last data files by table, and one row of each bookkeeping table."""
    traffic = SampleTraffic(SampleShape(models=100, contributors=1_000), seed=5)
    registry = list(traffic.registry())
    events = (args.prior_appends + args.appends) * args.batch - len(registry)
    batches = _batches(registry + list(traffic.metered(events)), args.batch)
    cpu_s = []
    with Ledger.open(lake) as ledger:
        for index, (batch, offsets) in enumerate(batches):
            started = time.process_time()
            ledger.append(batch, offsets)
            if index >= len(batches) - args.appends:
                cpu_s.append(time.process_time() - started)
        rows = {
            table: ledger.connection.execute(f"SELECT * FROM {recorder.table(table)} LIMIT 1").fetch_arrow_table()
            for table in bookkeeping_tables
        }
    templates = {
        table: max((lake / "data" / "main" / table).rglob("*.parquet"), key=os.path.getmtime) for table in file_tables
    }
    return statistics.median(cpu_s) * 1000, {t: pq.read_table(p) for t, p in templates.items()}, rows


def _commit(plain: duckdb.DuckDBPyConnection, workdir: Path, templates: dict, rows: dict, files, tables) -> dict:
    """One transaction committing copies of `files` and a row of each of `tables`; CPU seconds per step."""
    paths = []
    for table in files:
        path = workdir / "plain" / "data" / f"{table}-{uuid.uuid4().hex}.parquet"
        pq.write_table(templates[table], path, compression="zstd")
        paths.append((table, path))
    steps = {}

    def timed(step: str, sql: str) -> None:
        started = time.process_time()
        plain.execute(sql).fetchall()
        steps[step] = steps.get(step, 0.0) + time.process_time() - started

    timed("begin", "BEGIN TRANSACTION")
    timed("first read", "SELECT id FROM plain.current_snapshot()")
    for table, path in paths:
        timed("add files", f"CALL ducklake_add_data_files('plain', '{table}', '{path}')")
    for table in tables:
        timed("inlined inserts", f"INSERT INTO plain.main.{table} VALUES {_values_sql(rows[table])}")
    timed("commit", "COMMIT")
    timed("committed read", "SELECT id FROM ducklake_last_committed_snapshot('plain')")
    return steps


if __name__ == "__main__":
    main()
