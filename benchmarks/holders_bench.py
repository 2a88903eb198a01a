"""Wall time of token holders' balances at a block and time-weighted balances over a range, over N indexed
Transfer rows, and of allocating one take over the holders (issue 17).

Writes N synthetic `holder_transfer` rows (mints to H holders, then transfers between random holders over
B blocks) into a new DuckLake ledger through `Ledger.append_records` (as `sync-holders` stores them, in ranges
of `--rows-per-append`, each with the balance checkpoint `sync-holders` would store with it, unless
`--no-checkpoints`), then times `balances_at` at the last block, `holder_weights` over the last half of
the blocks, `allocate_by_weight` of a 10^12-micro take over the weighted holders, and the dust rule
(`carry_dust`: threshold one past the median part, every tenth holder carrying 1 micro in).

    python benchmarks/holders_bench.py --transfers 10000000 --holders 1000000 [--keep]
"""

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import polars as pl
import pyarrow as pa

from ledger import Ledger, recorder
from settlement.engine.allocation import allocate_by_weight
from settlement.engine.holders import carry_dust
from settlement.holders import (
    balance_checkpoint,
    balances_at,
    holder_checkpoint_table,
    holder_transfer_schema,
    holder_weights,
    zero_address,
)
from settlement.use_cases.ledger_setup import register_with_ledger

T = TypeVar("T")
chain_id, token = 31337, "0x" + "7e" * 20


def _timed(label: str, work: Callable[[], T]) -> T:
    began, cpu_began = time.perf_counter(), time.process_time()
    result = work()
    took, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    print(f"{label}: {took:.2f} s (CPU {cpu:.2f} s, all threads)", flush=True)
    return result


def _rows(first: int, count: int, holders: int, blocks: int, seed: int, total: int) -> pa.Table:
    """Transfers `first..first+count-1` of `total`: the first `holders` are mints (one each, at block 0), the rest
    move 1 unit, over blocks 1..`blocks` in order (as a sync stores them: later appends hold later blocks)."""
    total_moves = max(1, total - holders)
    frame = (
        pl.DataFrame({"index": pl.int_range(first, first + count, eager=True)})
        .with_columns(
            mint=pl.col("index") < holders,
            a=pl.int_range(0, count, eager=True).shuffle(seed) % holders,
            b=pl.int_range(0, count, eager=True).shuffle(seed + 1) % holders,
        )
        .with_columns(
            block_number=pl.when("mint")
            .then(0)
            .otherwise(1 + (pl.col("index") - holders) * (blocks - 1) // total_moves),
            from_address=pl.when("mint")
            .then(pl.lit(zero_address))
            .otherwise(pl.format("0x{}", pl.col("a").cast(pl.String).str.zfill(40))),
            to_address=pl.format("0x{}", pl.when("mint").then("index").otherwise("b").cast(pl.String).str.zfill(40)),
            value_units=pl.when("mint").then(pl.lit("1000000000000000000000")).otherwise(pl.lit("1")),
        )
        .select(
            pl.lit(chain_id, pl.Int64).alias("chain_id"),
            pl.lit(token).alias("token"),
            pl.col("block_number").cast(pl.Int64),
            pl.lit("0x" + "00" * 32).alias("block_hash"),
            pl.format("0x{}", pl.col("index").cast(pl.String).str.zfill(64)).alias("tx_hash"),
            pl.col("index").cast(pl.Int64).alias("log_index"),
            "from_address",
            "to_address",
            "value_units",
            pl.lit(datetime.now(UTC)).dt.cast_time_unit("us").dt.convert_time_zone("UTC").alias("synced_at"),
        )
    )
    return frame.to_arrow().cast(holder_transfer_schema)


def _check_sample(ledger: Ledger, balances: dict[str, int], weights: dict[str, int], last: int) -> None:
    """Recompute 200 holders' balance and weight from every transfer (no checkpoint) and compare."""
    sample = sorted(balances)[:: max(1, len(balances) // 200)]
    table = recorder.table("holder_transfer")
    rows = ledger.connection.execute(
        f"""SELECT holder, sum(delta)::VARCHAR, sum(delta * ($last - greatest(block_number, $from) + 1))::VARCHAR
            FROM (SELECT to_address AS holder, block_number, value_units::HUGEINT AS delta FROM {table}
                  UNION ALL SELECT from_address, block_number, -(value_units::HUGEINT) FROM {table})
            WHERE holder IN (SELECT unnest($sample)) GROUP BY holder""",
        {"sample": sample, "last": last, "from": last // 2},
    ).fetchall()
    wrong = [h for h, b, w in rows if int(b) != balances[h] or int(w) != weights.get(h, 0)]
    if wrong or len(rows) != len(sample):
        raise SystemExit(f"balances or weights differ from every transfer's sum for {wrong[:5]}")
    print(f"{len(sample)} sampled balances and weights equal the sums over every transfer")


def _check_balances(ledger: Ledger, balances: dict[str, int], block: int) -> None:
    """Recompute 200 holders' balance at `block` from every transfer up to it (no checkpoint) and compare."""
    sample = sorted(balances)[:: max(1, len(balances) // 200)]
    table = recorder.table("holder_transfer")
    rows = ledger.connection.execute(
        f"""SELECT holder, sum(delta)::VARCHAR
            FROM (SELECT to_address AS holder, value_units::HUGEINT AS delta FROM {table} WHERE block_number <= $b
                  UNION ALL SELECT from_address, -(value_units::HUGEINT) FROM {table} WHERE block_number <= $b)
            WHERE holder IN (SELECT unnest($sample)) GROUP BY holder""",
        {"sample": sample, "b": block},
    ).fetchall()
    wrong = [h for h, b in rows if int(b) != balances[h]]
    if wrong or len(rows) != len(sample):
        raise SystemExit(f"balances at block {block} differ from every transfer's sum for {wrong[:5]}")
    print(f"{len(sample)} sampled balances at block {block:,} equal the sums over every transfer up to it")


def main() -> None:
    register_with_ledger()  # the settlement's tables and views, as every entry point declares them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=1_000_000)
    parser.add_argument("--holders", type=int, default=100_000)
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument(
        "--rows-per-append",
        type=int,
        default=2_000_000,
        help="transfers per append (a sync range: 180,000 is 2,000 blocks of 10M transfers over 100,000 blocks)",
    )
    parser.add_argument("--no-checkpoints", action="store_true", help="store no balance checkpoint (as before)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="holders-bench-"))
    try:
        with Ledger.open(str(folder / "lake")) as ledger:
            began, checkpoints_s = time.perf_counter(), 0.0
            for first in range(0, args.transfers, args.rows_per_append):
                count = min(args.rows_per_append, args.transfers - first)
                rows = _rows(first, count, args.holders, args.blocks, first, args.transfers)
                records = {"holder_transfer": rows}
                if not args.no_checkpoints and rows["block_number"][-1].as_py() > 0:
                    # Every transfer up to the block before this append's last is stored or in it (blocks ascend).
                    last_block = rows["block_number"][-1].as_py()
                    end = last_block if first + count == args.transfers else last_block - 1
                    checkpoint_began = time.perf_counter()
                    checkpoint = balance_checkpoint(ledger.connection, chain_id, token, end, rows)
                    checkpoints_s += time.perf_counter() - checkpoint_began
                    if checkpoint is not None:
                        records[holder_checkpoint_table] = checkpoint
                        print(f"checkpoint at block {end:,}: {checkpoint.num_rows:,} balances", flush=True)
                ledger.append_records(records)
            print(
                f"stored {args.transfers:,} transfers: {time.perf_counter() - began:.2f} s "
                f"(computing checkpoints {checkpoints_s:.2f} s of it)",
                flush=True,
            )
        with Ledger.open_read_only(str(folder / "lake")) as ledger:
            last = args.blocks
            balances = _timed(
                "balances at the last block", lambda: balances_at(ledger.connection, chain_id, token, last)
            )
            checkpoints = (
                [
                    block
                    for (block,) in ledger.connection.execute(
                        f"SELECT DISTINCT block_number FROM {recorder.table(holder_checkpoint_table)} ORDER BY 1"
                    ).fetchall()
                ]
                if not args.no_checkpoints
                else []
            )
            worst = None
            if len(checkpoints) >= 2:  # the worst case: the previous checkpoint and every transfer up to the last one
                worst = checkpoints[-1] - 1
                worst_balances = _timed(
                    f"balances at block {worst:,}, before the last checkpoint (the checkpoint at "
                    f"{checkpoints[-2]:,} and every transfer after it)",
                    lambda: balances_at(ledger.connection, chain_id, token, worst),
                )
            weights = _timed(
                "time-weighted balances over the last half",
                lambda: holder_weights(ledger.connection, chain_id, token, last // 2, last, set()),
            )
            pairs = [(holder, int(weight)) for holder, weight in weights.iter_rows()]
            parts = _timed("allocate one take over the holders", lambda: allocate_by_weight(10**12, pairs))
            # Dust (holder_dust_units_min): every tenth holder carries 1 micro in; the threshold is one past the median
            # part, so about half the holders carry (most of them hold one unit: equal parts).
            carried_in = {holder: 1 for holder, _ in pairs[::10]}
            threshold = sorted(amount for _, amount in parts)[len(parts) // 2] + 1 if parts else 0
            paid, changed = _timed(
                "apply the dust threshold to the parts", lambda: carry_dust(parts, carried_in, threshold)
            )
            print(f"dust threshold {threshold:,} micros: {len(paid):,} holders paid, {len(changed):,} dust rows")
            print(f"{len(balances):,} holders with a balance, {len(pairs):,} weighted")
            _check_sample(ledger, balances, dict(pairs), last)
            if worst is not None:
                _check_balances(ledger, worst_balances, worst)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
