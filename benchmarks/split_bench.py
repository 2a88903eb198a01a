"""Close one epoch of N synthetic events with the polars engine and with the DuckDB SQL reference.

The events are written straight to Parquet with polars (hash-derived pseudo-random columns, no
JSON), registered in a fresh DuckLake ledger, and the registry (models with lineage up to depth 3,
one or two policies each) is ingested as events. Prints both timings, their ratio, and whether the
two gave identical payables.

    python benchmarks/split_bench.py --events 10000000 [--models 1000] [--contributors 10000]

`--rollups` also writes the rollup rows (`metered_rollup`, with their key groups' id bounds, and
`metered_payer_rollup`; ledger formats 13 and 16) that appends of `--append-events` events each would write (events
in time order, as a stream brings them, with ids that grow with arrival; the files merged as compaction merges them:
rows kept) and closes the epoch from them too (`close_epoch(from_rollups=True)`), comparing payables with the events
path. `--simulated-day N` writes no events: rollup rows for a day of N events over `--models` models x 50
providers x 24 hours x `--sources` sources (24 key groups, one per hour, as compaction would leave them) and 10,000
payer rows, closed from them alone.

    python benchmarks/split_bench.py --events 10000000 --rollups
    python benchmarks/split_bench.py --simulated-day 10000000000 --sources 2

`--reuse FOLDER` closes the ledger an earlier run generated under FOLDER (printed as `generated ... under FOLDER`)
again, without generating it; `--rollups-only` times only the close from rollups (not the events path, not the
comparison of payables); `--profile` prints where the close from rollups spent its time (cProfile, top functions by
cumulative CPU time, every thread's). Each close prints its wall and CPU seconds (CPU: every thread of the process).

    python benchmarks/split_bench.py --reuse /tmp/split-bench-XXXX --rollups --rollups-only --profile
"""

import argparse
import cProfile
import dataclasses
import json
import logging
import pstats
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
from eth_utils import to_checksum_address

from ledger import IngestBatch, Ledger, PartitionOffsets, recorder
from ledger.tables import payer_rollup_schema, payer_rollup_table, rollup_schema, rollup_table
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
        values.append(_envelope("ai.model.registered.v1", f"m{index}", {"model_id": model_id, "parents": parents}))
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


def events_file(path: Path, first: int, count: int, models: int, total: int | None = None) -> pl.DataFrame:
    """Write events `first`.. of the bench; `total`: in time order over the day (a stream's appends), else random."""
    index = pl.int_range(first, first + count, dtype=pl.UInt64)
    day_us = 86_400_000_000
    offset_us = (index.hash(1) % day_us) if total is None else (index * (day_us // total))
    frame = pl.select(
        event_id=pl.lit("ev-") + index.cast(pl.String).str.zfill(12),  # fixed width: ids grow with arrival
        event_time=(pl.lit(start) - pl.duration(days=1) + pl.duration(microseconds=offset_us.cast(pl.Int64))),
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
    return frame


def rollups_of(frame: pl.DataFrame, first: int, append_events: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rollup and payer rollup rows appends of `append_events` consecutive events write (ledger.rollups), rows
    kept; with `append_events` 0, one row per key and one key group per file (as compaction sums them)."""
    rows = frame.with_columns(
        append=(pl.int_range(first, first + frame.height) // append_events) if append_events else pl.lit(first),
        event_hour=pl.col("event_time").dt.truncate("1h"),
    ).with_columns(
        group_event_id_min=pl.col("event_id").min().over("append", "source"),
        group_event_id_max=pl.col("event_id").max().over("append", "source"),
        group_keys_unique=(pl.col("event_id").n_unique() == pl.len()).over("append", "source"),
    )
    batch = (pl.lit("append-") + pl.col("append").cast(pl.String)).alias("ingest_batch_id")
    group = ["group_event_id_min", "group_event_id_max", "group_keys_unique"]
    rollups = (
        rows.group_by("append", "model_id", "compute_provider", "source", "event_hour", *group)
        .agg(
            pl.col("fee_micros").sum(),
            pl.len().cast(pl.Int64).alias("event_count"),
            pl.col("event_time").min().alias("event_time_min"),
            pl.col("event_time").max().alias("event_time_max"),
        )
        .with_columns(batch)
        .select(rollup_schema.names)
    )
    payers = (
        rows.group_by("append", "payer")
        .agg(pl.col("fee_micros").sum(), pl.len().cast(pl.Int64).alias("event_count"))
        .with_columns(batch)
        .select(payer_rollup_schema.names)
    )
    return rollups, payers


def day_rollups(path: Path, events: int, models: int, sources: int) -> pl.DataFrame:
    """Rollup rows of a simulated day of `events` events: one per model, provider, hour and source (as merged)."""
    groups = models * 50 * 24 * sources
    index = pl.int_range(0, groups, dtype=pl.UInt64)
    per_group = events // groups
    frame = (
        pl.select(
            model_id=pl.lit("model-") + (index % models).cast(pl.String).str.zfill(4),
            compute_provider=pl.lit("gpu-") + (index // models % 50).cast(pl.String),
            source=pl.lit("//gateway-") + (index // (models * 50 * 24) % sources).cast(pl.String),
            event_hour=pl.lit(start)
            - pl.duration(days=1)
            + pl.duration(hours=(index // (models * 50) % 24).cast(pl.Int64)),
        )
        .with_columns(
            fee_micros=(pl.lit(per_group, pl.Int64) * (index.hash(7) % 70_000 + 1).cast(pl.Int64)),
            event_count=pl.lit(per_group, pl.Int64),
            event_time_min=pl.col("event_hour"),
            event_time_max=pl.col("event_hour") + pl.duration(minutes=59),
        )
        .with_columns(  # one key group per hour (compaction's merged file of the hour's appends), ids growing by hour
            ingest_batch_id=pl.lit("day-") + pl.col("event_hour").dt.hour().cast(pl.String),
            group_event_id_min=pl.lit("ev-") + pl.col("event_hour").dt.hour().cast(pl.String).str.zfill(2) + "-0",
            group_event_id_max=pl.lit("ev-") + pl.col("event_hour").dt.hour().cast(pl.String).str.zfill(2) + "-9",
            group_keys_unique=pl.lit(True),
        )
    )
    frame.write_parquet(path, compression="zstd", row_group_size=1_000_000)
    return frame


def day_payers(path: Path, rollups: pl.DataFrame, payers: int = 10_000) -> None:
    """A simulated day's payer rollups: `payers` payers billed the day's events and fees in near-equal parts."""
    events, fees = int(rollups["event_count"].sum()), int(rollups["fee_micros"].cast(pl.Int128).sum())
    pl.DataFrame(
        {
            "payer": [f"org-{i}" for i in range(payers)],
            "fee_micros": [fees // payers + (fees % payers if i == 0 else 0) for i in range(payers)],
            "event_count": [events // payers + (events % payers if i == 0 else 0) for i in range(payers)],
            "ingest_batch_id": ["day"] * payers,
        },
        schema=dict(zip(payer_rollup_schema.names, [pl.String, pl.Int64, pl.Int64, pl.String], strict=True)),
    ).write_parquet(path)


def main() -> None:
    logging.getLogger("royalty.settlement").setLevel(logging.ERROR)  # the unverified bench files, accepted
    register_with_ledger()  # the settlement's tables and views, as every entry point declares them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--models", type=int, default=1_000)
    parser.add_argument("--contributors", type=int, default=10_000)
    parser.add_argument("--rollups", action="store_true", help="Also write the appends' rollups; close from them.")
    parser.add_argument(
        "--append-events", type=int, default=50_000, help="Events per simulated append (0: rows summed per key)."
    )
    parser.add_argument("--no-sql", action="store_true", help="Skip the DuckDB SQL reference.")
    parser.add_argument("--simulated-day", type=int, default=0, help="Events of a day simulated by rollups alone.")
    parser.add_argument("--sources", type=int, default=1)
    parser.add_argument("--reuse", type=Path, help="Close the ledger an earlier run generated under this folder.")
    parser.add_argument("--rollups-only", action="store_true", help="Time only the close from rollups.")
    parser.add_argument("--profile", action="store_true", help="Profile the close from rollups (cProfile).")
    args = parser.parse_args()
    if args.simulated_day:
        simulated_day(args)
        return
    if args.reuse:
        with Ledger.open(args.reuse / "lake") as ledger:
            close_from_rollups(ledger, args.rollups_only, args.profile)
        return
    folder = Path(tempfile.mkdtemp(prefix="split-bench-"))
    with Ledger.open(folder / "lake") as ledger:
        values = registry(args.models, args.contributors)
        batch = IngestBatch.from_messages(
            values, ["r"] * len(values), [0] * len(values), list(range(len(values))), BatchDecoder()
        )
        ledger.append(batch, [PartitionOffsets("r", 0, 0, len(values))])
        began = time.perf_counter()
        paths, rollup_paths, rollup_rows = [], [], 0
        payer_paths = []
        for first in range(0, args.events, files_events_max):
            path = folder / "lake" / "data" / "main" / "inference_metered" / f"bench-{first}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            count = min(files_events_max, args.events - first)
            frame = events_file(path, first, count, args.models, args.events if args.rollups else None)
            paths.append(path)
            if args.rollups:
                rollup_path = folder / "lake" / "data" / "main" / rollup_table / f"bench-{first}.parquet"
                rollup_path.parent.mkdir(parents=True, exist_ok=True)
                rollups, payers = rollups_of(frame, first, args.append_events)
                rollups.write_parquet(rollup_path, compression="zstd", row_group_size=1_000_000)
                rollup_paths.append(rollup_path)
                payer_path = folder / "lake" / "data" / "main" / payer_rollup_table / f"bench-{first}.parquet"
                payer_path.parent.mkdir(parents=True, exist_ok=True)
                payers.write_parquet(payer_path, compression="zstd", row_group_size=1_000_000)
                payer_paths.append(payer_path)
                rollup_rows += rollups.height
            del frame
        connection = ledger.connection
        connection.execute("BEGIN TRANSACTION")  # one snapshot: the events and their rollups, as an append
        for path in paths:
            connection.execute("CALL ducklake_add_data_files('lake', 'inference_metered', ?)", [str(path)])
        for path in rollup_paths:
            connection.execute(f"CALL ducklake_add_data_files('lake', '{rollup_table}', ?)", [str(path)])
        for path in payer_paths:
            connection.execute(f"CALL ducklake_add_data_files('lake', '{payer_rollup_table}', ?)", [str(path)])
        connection.execute("COMMIT")
        print(f"generated {args.events:,} events in {time.perf_counter() - began:.1f} s under {folder}")
        if args.rollups:
            print(
                f"rollup rows: {rollup_rows:,} ({rollup_rows / args.events:.4f} per event; appends of "
                f"{args.append_events:,} events)"
            )
            close_from_rollups(ledger, args.rollups_only, args.profile)
            if args.rollups_only:
                return

        began = time.perf_counter()
        summary = close_epoch(ledger, dry_run=True, checks=_bench_files)
        polars_s = time.perf_counter() - began
        began = time.perf_counter()
        plan_payables = None
        from settlement.ledger_io import plan_from_ledger

        plan, _ = plan_from_ledger(ledger)
        plan_payables = plan.payables.select("recipient", pl.col("credited_micros").cast(pl.Int128))
        del plan
        if args.no_sql:
            print(f"polars engine (close_epoch --dry-run): {polars_s:.2f} s for {summary.event_count:,} events")
            return
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


def close_from_rollups(ledger: Ledger, rollups_only: bool = False, profile: bool = False) -> None:
    """Time the close from rollups (wall and CPU) and, unless `rollups_only`, compare its payables with the events
    path's; `profile`: print the close's top functions by cumulative time."""
    from settlement.ledger_io import plan_from_ledger

    profiler = cProfile.Profile(time.process_time) if profile else None  # CPU seconds: the machine is shared
    began, began_cpu = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    summary = close_epoch(ledger, dry_run=True, checks=_bench_files, from_rollups=True)
    if profiler:
        profiler.disable()
    rollups_s, rollups_cpu_s = time.perf_counter() - began, time.process_time() - began_cpu
    print(
        f"from rollups (close_epoch --dry-run --from-rollups): {rollups_s:.2f} s wall, {rollups_cpu_s:.2f} s CPU "
        f"for {summary.event_count:,} events; cells from rollups / from events: {summary.rollup_cells}"
    )
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
    if rollups_only:
        return
    plan, _ = plan_from_ledger(ledger, from_rollups=True)
    rolled = plan.payables.select("recipient", "credited_micros")
    del plan
    events_plan, _ = plan_from_ledger(ledger)
    same = rolled.equals(events_plan.payables.select("recipient", "credited_micros"))
    print(f"identical payables to the events path: {same}")


def simulated_day(args: argparse.Namespace) -> None:
    """Plan a day of `args.simulated_day` events from generated rollups alone (no events written): 10,000 payers
    billed the day's total in equal parts, as a compacted day's payer rollups."""
    from settlement.engine.epochs import plan_epoch
    from settlement.engine.policies import resolve
    from settlement.ledger_io import read_inputs, read_prior
    from settlement.rollups import weighted_events

    folder = Path(tempfile.mkdtemp(prefix="split-bench-day-"))
    with Ledger.open(folder / "lake") as ledger:
        values = registry(args.models, args.contributors)
        batch = IngestBatch.from_messages(
            values, ["r"] * len(values), [0] * len(values), list(range(len(values))), BatchDecoder()
        )
        ledger.append(batch, [PartitionOffsets("r", 0, 0, len(values))])
        path, payer_path = folder / "day.parquet", folder / "day-payers.parquet"
        began = time.perf_counter()
        rollups = day_rollups(path, args.simulated_day, args.models, args.sources)
        day_payers(payer_path, rollups)
        print(
            f"generated {rollups.height:,} rollup rows for a day of {args.simulated_day:,} events in "
            f"{time.perf_counter() - began:.1f} s"
        )
        began, began_cpu = time.perf_counter(), time.process_time()
        rollups = pl.scan_parquet(path)  # as the close reads them (settlement.rollups._read_range): a scan
        payer_rollups = pl.read_parquet(payer_path)
        prior = read_prior(ledger.connection)
        closing = ledger.current_snapshot()
        inputs = read_inputs(ledger.connection, prior, closing)
        no_events = inputs.new_events.collect().lazy()
        resolution = resolve(inputs.models, inputs.policies, closing)
        rolled = weighted_events(rollups, no_events, resolution, inputs.originals, payer_rollups, count_check=False)
        if rolled is None:
            raise RuntimeError("no rollup events")
        plan = plan_epoch(dataclasses.replace(inputs, new_events=rolled.events, payer_fees=rolled.payer_fees), prior)
        print(
            f"planned from rollups: {time.perf_counter() - began:.2f} s wall, {time.process_time() - began_cpu:.2f} s "
            f"CPU for {plan.event_count:,} events "
            f"(reading the rollup files, the registry, the groups' id bounds, routing, allocations, postings, "
            f"payables), "
            f"{plan.group_count:,} allocation groups, {plan.postings.height:,} postings; cells from rollups / "
            f"from events: {rolled.rollup_cells} / {rolled.event_cells}"
        )


if __name__ == "__main__":
    main()
