"""Close one epoch of N synthetic events with the polars engine and with the DuckDB SQL reference.

The events are written straight to Parquet with polars (hash-derived pseudo-random columns, no
JSON), registered in a fresh DuckLake ledger, and the registry (models with lineage up to depth 3,
one or two policies each) is ingested as events. Prints both timings, their ratio, and whether the
two gave identical payables.

    python benchmarks/split_bench.py --events 10000000 [--models 1000] [--contributors 10000]
"""

import argparse
import json
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
from eth_utils import to_checksum_address

from ledger import IngestBatch, Ledger, PartitionOffsets, recorder
from schemas import BatchDecoder
from settlement import InputChecks, close_epoch
from settlement.engine.reference_sql import reference_payables
from settlement.use_cases.ledger_setup import register_with_ledger

start = datetime(2026, 11, 23, tzinfo=UTC)
files_events_max = 5_000_000  # one Parquet file per this many events, like several ingest appends

# The bench writes its events straight to Parquet (no append, so no recorded checksums): close-epoch's
# file checks would refuse them; benchmarks/input_checks_bench.py measures those checks.
_bench_files = InputChecks(accept_unverified_files=True)


def _envelope(kind: str, event_id: str, data: dict) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "//bench",
            "type": kind,
            "time": "2026-11-22T00:00:00Z",
            "datacontenttype": "application/json",
            "data": data,
        }
    ).encode()


def registry(models: int, contributors: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    values, depth = [], {}
    for index in range(contributors):
        address = to_checksum_address(rng.randbytes(20))
        values.append(
            _envelope(
                "ai.contributor.registered.v1",
                f"c{index}",
                {"contributor_id": f"contrib-{index:05d}", "payout_address": address},
            )
        )
    for index in range(models):
        model_id = f"model-{index:04d}"
        parents = []
        if index and rng.random() < 0.3:
            parent = rng.randrange(index)
            if depth[f"model-{parent:04d}"] < 3:
                parents = [{"model_id": f"model-{parent:04d}", "share_ppm": 100_000}]
        depth[model_id] = 1 + max([depth[p["model_id"]] for p in parents], default=0)
        values.append(
            _envelope("ai.model.registered.v1", f"m{index}", {"model_id": model_id, "parents": parents})
        )
        for number, hours in enumerate([0, 12] if index % 10 == 0 else [0]):
            recipients = rng.sample(range(contributors), k=4)
            shares = [{"recipient": f"model:{p['model_id']}", "share_ppm": p["share_ppm"]} for p in parents]
            left = 1_000_000 - sum(s["share_ppm"] for s in shares)
            cuts = [left // 4] * 3 + [left - 3 * (left // 4)]
            shares += [{"recipient": f"contrib-{r:05d}", "share_ppm": c} for r, c in zip(recipients, cuts, strict=True)]
            effective = (start - timedelta(days=1) + timedelta(hours=hours if number else 0)).isoformat()
            values.append(
                _envelope(
                    "ai.split-policy.set.v1",
                    f"p{index}-{number}",
                    {
                        "model_id": model_id,
                        "effective_from": effective.replace("+00:00", "Z"),
                        "compute_share_ppm": 150_000,
                        "shares": shares,
                    },
                )
            )
    return values


def events_file(path: Path, first: int, count: int, models: int) -> None:
    index = pl.int_range(first, first + count, dtype=pl.UInt64)
    day_us = 86_400_000_000
    frame = pl.select(
        event_id=pl.lit("ev-") + index.cast(pl.String),
        event_time=(
            pl.lit(start)
            - pl.duration(days=1)
            + pl.duration(microseconds=(index.hash(1) % day_us).cast(pl.Int64))
        ),
        source=pl.lit("//gateway"),
        model_id=pl.lit("model-")
        + ((index.hash(2) % 1_000_000).sqrt().cast(pl.UInt64) * models // 1000).cast(pl.String).str.zfill(4),
        request_id=pl.lit("r"),
        payer=pl.lit("org-") + (index.hash(3) % 10_000).cast(pl.String),
        compute_provider=pl.lit("gpu-") + (index.hash(4) % 50).cast(pl.String),
        input_tokens=(index.hash(5) % 4000).cast(pl.Int64),
        output_tokens=(index.hash(6) % 1500).cast(pl.Int64),
        fee_micros=(index.hash(7) % 70_000 + 1).cast(pl.Int64),
        asset=pl.lit("USDC"),
        kafka_topic=pl.lit("bench"),
        kafka_partition=pl.lit(0, pl.Int32),
        kafka_offset=index.cast(pl.Int64),
        ingest_batch_id=pl.lit("bench"),
    ).with_columns(event_date=pl.col("event_time").dt.date())
    frame.write_parquet(path, compression="zstd", row_group_size=1_000_000)


def main() -> None:
    register_with_ledger()  # the settlement's tables and views, as every entry point declares them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--models", type=int, default=1_000)
    parser.add_argument("--contributors", type=int, default=10_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="split-bench-"))
    with Ledger.open(folder / "lake") as ledger:
        values = registry(args.models, args.contributors)
        batch = IngestBatch.from_messages(
            values, ["r"] * len(values), [0] * len(values), list(range(len(values))), BatchDecoder()
        )
        ledger.append(batch, [PartitionOffsets("r", 0, 0, len(values))])
        began = time.perf_counter()
        paths = []
        for first in range(0, args.events, files_events_max):
            path = folder / "lake" / "data" / "main" / "inference_metered" / f"bench-{first}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            events_file(path, first, min(files_events_max, args.events - first), args.models)
            paths.append(path)
        connection = ledger.connection
        connection.execute("BEGIN TRANSACTION")
        for path in paths:
            connection.execute("CALL ducklake_add_data_files('lake', 'inference_metered', ?)", [str(path)])
        connection.execute("COMMIT")
        print(f"generated {args.events:,} events in {time.perf_counter() - began:.1f} s under {folder}")

        began = time.perf_counter()
        summary = close_epoch(ledger, dry_run=True, checks=_bench_files)
        polars_s = time.perf_counter() - began
        began = time.perf_counter()
        plan_payables = None
        from settlement.ledger_io import plan_from_ledger

        plan, _ = plan_from_ledger(ledger)
        plan_payables = plan.payables.select("recipient", pl.col("credited_micros").cast(pl.Int128))
        del plan
        began = time.perf_counter()
        expected = reference_payables(
            connection,
            recorder.table("inference_metered"),
            recorder.table("model_registered"),
            recorder.table("split_policy_set"),
        )
        sql_s = time.perf_counter() - began
        same = plan_payables.rename({"credited_micros": "amount_micros"}).equals(
            expected.cast({"amount_micros": pl.Int128})
        )
        print(
            f"polars engine (close_epoch --dry-run): {polars_s:.2f} s for {summary.event_count:,} events, "
            f"{summary.group_count:,} allocation groups, {summary.posting_count:,} postings"
        )
        print(
            f"DuckDB SQL reference: {sql_s:.2f} s; ratio polars/SQL = {polars_s / sql_s:.2f}; "
            f"identical payables: {same}"
        )


if __name__ == "__main__":
    main()
