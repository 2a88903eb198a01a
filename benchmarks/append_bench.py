"""Ledger append rate and bytes per inference event on disk.

Generates realistic metering events (`ingest.sample`), decodes them, and appends them to a
fresh embedded ledger in batches, timing the appends only. Prints events/s, bytes of data
files per event, and the rate of writing the same rows with plain `pyarrow.parquet` (the
baseline: what the ledger's transaction, dedup and checksums cost on top of the file write).

    python benchmarks/append_bench.py --events 1000000 --batch 100000
"""

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from ingest.sample import SampleShape, SampleTraffic
from ledger import IngestBatch, Ledger, PartitionOffsets
from schemas import BatchDecoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
