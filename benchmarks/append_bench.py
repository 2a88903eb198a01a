"""Ledger append rate and bytes per inference event on disk.

Generates realistic metering events (`ingest.sample`), decodes them, and appends them to a
fresh embedded ledger in batches, timing the appends only. Prints events/s, bytes of data
files per event, and the rate of writing the same rows with plain `pyarrow.parquet` (the
baseline: what the ledger's transaction, dedup and checksums cost on top of the file write).

    python benchmarks/append_bench.py --events 1000000 --batch 100000

`--fixed-cost` measures what a low-rate stream pays per append instead (issue 19): a ledger with
`--prior-appends` appends of `--batch` events, then `--appends` more, each timed (wall and this process's
CPU). The baseline, interleaved append by append so both see the same machine load, is DuckLake's own
cost for the same rows: an `INSERT` of the decoded rows into a plain table of a DuckLake with an
SQLite catalog of its own, with as many inserts before (no dedup, offsets, checksums or digests).

    python benchmarks/append_bench.py --fixed-cost --batch 200 --prior-appends 300 --appends 100
"""

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from ingest.sample import SampleShape, SampleTraffic
from ledger import IngestBatch, Ledger, PartitionOffsets
from ledger.extensions import extension_directory
from schemas import BatchDecoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--fixed-cost", action="store_true", help="time small appends against DuckLake's own insert")
    parser.add_argument("--prior-appends", type=int, default=300)
    parser.add_argument("--appends", type=int, default=100)
    args = parser.parse_args()
    if args.fixed_cost:
        fixed_cost(args.batch, args.prior_appends, args.appends)
        return

    traffic = SampleTraffic(SampleShape(models=1_000, contributors=10_000))
    decoder = BatchDecoder()
    print(f"generating {args.events:,} events ...", flush=True)
    values = list(traffic.metered(args.events))
    batches = []
    for start in range(0, args.events, args.batch):
        chunk = values[start : start + args.batch]
        offsets = list(range(start, start + len(chunk)))
        batches.append(
            (
                IngestBatch.from_messages(chunk, ["bench"] * len(chunk), [0] * len(chunk), offsets, decoder),
                [PartitionOffsets("bench", 0, start, start + len(chunk))],
            )
        )
    workdir = Path(tempfile.mkdtemp(prefix="append-bench-"))
    try:
        ledger = Ledger.open(workdir / "lake")
        started = time.perf_counter()
        for batch, offsets in batches:
            result = ledger.append(batch, offsets)
            assert result.events == len(batch), result
        append_s = time.perf_counter() - started
        event_files = (workdir / "lake" / "data" / "main" / "inference_metered").rglob("*.parquet")
        data_bytes = sum(path.stat().st_size for path in event_files)
        (stored,) = ledger.connection.execute("SELECT count(*) FROM inference_metered").fetchone()
        assert stored == args.events, stored
        ledger.close()

        baseline_dir = workdir / "baseline"
        baseline_dir.mkdir()
        started = time.perf_counter()
        for index, (batch, _) in enumerate(batches):
            table = batch.decoded.tables["inference_metered"]
            pq.write_table(table, baseline_dir / f"{index}.parquet", compression="zstd")
        baseline_s = time.perf_counter() - started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rate = args.events / append_s
    baseline_rate = args.events / baseline_s
    print(f"machine: {platform.machine()} {platform.processor() or ''} cores={__import__('os').cpu_count()}")
    print(f"events: {args.events:,} in batches of {args.batch:,}")
    print(f"ledger append: {append_s:.2f} s, {rate:,.0f} events/s")
    print(f"baseline pyarrow.parquet write of the same rows: {baseline_s:.2f} s, {baseline_rate:,.0f} events/s")
    print(f"ratio append/baseline: {rate / baseline_rate:.2f}")
    print(f"bytes per inference event on disk: {data_bytes / args.events:.1f} (target <= 60)")


def _batches(values: list[bytes], size: int) -> list[tuple[IngestBatch, list[PartitionOffsets]]]:
    decoder = BatchDecoder()
    batches = []
    for start in range(0, len(values), size):
        chunk = values[start : start + size]
        offsets = list(range(start, start + len(chunk)))
        batch = IngestBatch.from_messages(chunk, ["bench"] * len(chunk), [0] * len(chunk), offsets, decoder)
        batches.append((batch, [PartitionOffsets("bench", 0, start, start + len(chunk))]))
    return batches


def _plain_ducklake(folder: Path) -> duckdb.DuckDBPyConnection:
    """A DuckLake with an SQLite catalog and no ledger: the baseline's."""
    (folder / "data").mkdir(parents=True)
    options = {"extension_directory": extension_directory(), "autoload_known_extensions": False}
    connection = duckdb.connect(config=options)
    connection.execute("LOAD ducklake")
    connection.execute("LOAD sqlite")
    connection.execute(f"ATTACH 'ducklake:sqlite:{folder}/catalog.sqlite' AS plain (DATA_PATH '{folder}/data/')")
    return connection


def _timed(work) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def _summary(name: str, samples: list[tuple[float, float]]) -> dict[str, float]:
    walls = sorted(wall for wall, _ in samples)
    figures = {
        "wall_ms_median": statistics.median(walls) * 1000,
        "wall_ms_p95": walls[int(len(walls) * 0.95)] * 1000,
        "wall_ms_min": walls[0] * 1000,
        "cpu_ms_median": statistics.median(cpu for _, cpu in samples) * 1000,
    }
    print(f"{name}: " + ", ".join(f"{key} {value:.1f}" for key, value in figures.items()))
    return figures


def fixed_cost(size: int, prior: int, appends: int) -> None:
    """Time `appends` appends of `size` events after `prior` ones, and DuckLake's own insert of the same rows."""
    traffic = SampleTraffic(SampleShape(models=100, contributors=1_000), seed=5)
    registry = list(traffic.registry())
    batches = _batches(registry + list(traffic.metered((prior + appends) * size - len(registry))), size)
    print(f"{len(batches) - appends} earlier appends, then {appends} timed, of {size} events; load {os.getloadavg()}")
    workdir = Path(tempfile.mkdtemp(prefix="append-fixed-cost-"))
    try:
        ledger = Ledger.open(workdir / "lake")
        plain = _plain_ducklake(workdir / "plain")
        plain.register("first", batches[-1][0].decoded.tables["inference_metered"])
        plain.execute("CREATE TABLE plain.events AS SELECT * FROM first LIMIT 0")
        ledger_times, plain_times = [], []
        for index, (batch, offsets) in enumerate(batches):
            timed = index >= len(batches) - appends
            measure = _timed if timed else lambda work: (work(), None)
            ledger_time = measure(lambda batch=batch, offsets=offsets: ledger.append(batch, offsets))
            table = batch.decoded.tables.get("inference_metered")
            if table is None:
                continue
            plain.register("rows", table)
            plain_time = measure(lambda: plain.execute("INSERT INTO plain.events SELECT * FROM rows"))
            if timed:
                ledger_times.append(ledger_time)
                plain_times.append(plain_time)
        ledger.close()
        plain.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"machine: {platform.machine()} cores={os.cpu_count()}; load after {os.getloadavg()}")
    ours = _summary("ledger append", ledger_times)
    base = _summary("baseline: DuckLake INSERT of the same rows", plain_times)
    print(
        f"ratio ledger/baseline: wall median {ours['wall_ms_median'] / base['wall_ms_median']:.2f}, "
        f"cpu median {ours['cpu_ms_median'] / base['cpu_ms_median']:.2f}"
    )


if __name__ == "__main__":
    main()
