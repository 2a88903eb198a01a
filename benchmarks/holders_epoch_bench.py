"""An epoch paying H holders of one token against the same epoch paying that share to one address (issue 17).

Two ledgers hold the same things: the registry of `split_bench.py` (`--models` models, `--contributors`
contributors), the same `--events` metered events (written straight to Parquet, as split_bench does), and the same
token's indexed transfers (`--holders` mints, then `--transfers` minus that many one-unit transfers between random
holders, with the sync cursor and the balance checkpoint `sync-holders` would store: holders_bench.py's rows). They
differ in one policy: the most-used model's last contributor share is `holders:<token>` in the `holders` ledger
and that contributor (one address) in the `address` ledger. Each ledger then runs, timed:

- `close_epoch` (written: postings, payables, the holders' dust rows and block range in one transaction);
- the tree build of `settle`: reading the payables up to the epoch, `build_epoch_tree` (with the epoch's manifest,
  whose SHA-256 it proposes, as `settle` does), `write_tree`.

The manifest's composition (`epoch_manifest`: the epoch re-planned for its bundle) is timed on its own line and left
out of the ratio, as it always was (before, the tree build computed settlement-v1's leaf digest instead, which
`settle` then threw away).

Both ledgers are built once. Then `--rounds` rounds each measure the address variant, then the holders variant,
each on a fresh copy of its ledger in its own process (its own peak RSS). On this machine the same work's wall time
moves by up to a third from run to run, so one run of each says little: each round prints its figures (wall and
CPU seconds, all threads) and its ratio holders/address, and the end the medians, the median of the rounds' ratios
and how many rounds passed 2.

    python benchmarks/holders_epoch_bench.py --events 1000000 --holders 1000000 [--rounds 5] [--dust-units-min 0]

A benchmark, not a test: it is never collected by pytest.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

# First, as `royalty close-epoch` does: polars' allocator keeps freed pages (royalty.allocator), read at its import.
import royalty  # noqa: F401

# isort: split
import pyarrow as pa
from eth_utils import to_checksum_address

from ledger import IngestBatch, Ledger, PartitionOffsets
from schemas import BatchDecoder
from settlement import close_epoch
from settlement.engine.authority import RegistryRules
from settlement.holders import (
    balance_checkpoint,
    holder_checkpoint_table,
    holder_sync_schema,
    holder_sync_table,
    holder_transfer_table,
)
from settlement.onchain.payout_tree import build_epoch_tree
from settlement.onchain.settle import _latest_epoch, _payables, write_tree
from settlement.reports.bundle import epoch_manifest
from settlement.use_cases.ledger_setup import register_with_ledger

sys.path.insert(0, str(Path(__file__).resolve().parent))
import holders_bench
import split_bench

T = TypeVar("T")
paid_model_index = -1  # the last model: the most events (split_bench draws model indexes with density ~ index)


def _registry(models: int, contributors: int, holders_token: str | None) -> list[bytes]:
    """split_bench's registry; with `holders_token`, the paid model's policies give their last contributor share to
    `holders:<token>` instead."""
    values = split_bench.registry(models, contributors)
    if holders_token is None:
        return values
    model_id = f"model-{models + paid_model_index:04d}"
    changed = []
    for value in values:
        envelope = json.loads(value)
        if envelope["type"] == "ai.split-policy.set.v1" and envelope["data"]["model_id"] == model_id:
            envelope["data"]["shares"][-1]["recipient"] = f"holders:{holders_token}"
            value = json.dumps(envelope).encode()
        changed.append(value)
    return changed


def _store_holders(ledger: Ledger, transfers: int, holders: int, blocks: int) -> None:
    """The token's transfers over blocks 0..`blocks`, as one `sync-holders` range: transfers, cursor, checkpoint."""
    token, chain_id = to_checksum_address(holders_bench.token), holders_bench.chain_id
    rows = holders_bench._rows(0, transfers, holders, blocks, 0, transfers)
    checkpoint = balance_checkpoint(ledger.connection, chain_id, token, blocks, rows)
    now = datetime.now(UTC)
    cursor = {
        "chain_id": chain_id, "token": token, "from_block": 0, "to_block": blocks, "to_block_hash": "0x" + "11" * 32,
        "to_block_time": now, "transfers": rows.num_rows, "checked_holders": 0, "synced_at": now,
    }  # fmt: skip
    cursor_row = pa.Table.from_pylist([cursor], schema=holder_sync_schema)
    records = {holder_transfer_table: rows, holder_sync_table: cursor_row}
    if checkpoint is not None:
        records[holder_checkpoint_table] = checkpoint
    ledger.append_records(records)


def _timed(figures: dict, label: str, work: Callable[[], T]) -> T:
    began, cpu_began = time.perf_counter(), time.process_time()
    result = work()
    figures[label] = (time.perf_counter() - began, time.process_time() - cpu_began)
    print(f"  {label}: {figures[label][0]:.2f} s (CPU {figures[label][1]:.2f} s)", flush=True)
    return result


def _tree(ledger: Ledger, manifest: bytes) -> int:
    """`settle`'s tree build for the latest epoch: payables read, tree built, root, leaves and nodes written."""
    epoch, closing = ledger.recorder.read(_latest_epoch, "latest epoch")
    payables = ledger.recorder.read(lambda connection: _payables(connection, epoch), "payables")
    tree = build_epoch_tree(epoch, closing, payables, manifest)
    if tree is None:
        raise SystemExit("no address is owed anything")
    write_tree(ledger, tree)
    return len(tree.tree)


def prepare_variant(variant: str, args: argparse.Namespace, folder: Path) -> None:
    """Build one variant's ledger under `folder` up to the close: registry, the token's transfers, the events."""
    register_with_ledger()
    with Ledger.open(folder / "lake") as ledger:
        token = to_checksum_address(holders_bench.token) if variant == "holders" else None
        values = _registry(args.models, args.contributors, token)
        batch = IngestBatch.from_messages(
            values, ["r"] * len(values), [0] * len(values), list(range(len(values))), BatchDecoder()
        )
        ledger.append(batch, [PartitionOffsets("r", 0, 0, len(values))])
        _store_holders(ledger, max(args.transfers, args.holders), args.holders, args.blocks)
        paths = []
        for first in range(0, args.events, split_bench.files_events_max):
            path = folder / "lake" / "data" / "main" / "inference_metered" / f"bench-{first}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            count = min(split_bench.files_events_max, args.events - first)
            split_bench.events_file(path, first, count, args.models)
            paths.append(path)
        connection = ledger.connection
        connection.execute("BEGIN TRANSACTION")
        for path in paths:
            connection.execute("CALL ducklake_add_data_files('lake', 'inference_metered', ?)", [str(path)])
        connection.execute("COMMIT")


def measure_variant(variant: str, args: argparse.Namespace, folder: Path) -> dict:
    """Close the prepared ledger under `folder` and build its tree, timed; the figures as a dict."""
    register_with_ledger()
    figures: dict[str, tuple[float, float]] = {}
    manifests: dict[str, tuple[float, float]] = {}  # timed, not in the ratio
    with Ledger.open(folder / "lake") as ledger:
        rules = RegistryRules(holder_dust_units_min=args.dust_units_min)
        profile = cProfile.Profile() if args.profile else None
        if profile:
            profile.enable()
        summary = _timed(figures, "close", lambda: close_epoch(ledger, checks=split_bench._bench_files, rules=rules))
        if profile:
            profile.disable()
        manifest = _timed(manifests, "manifest", lambda: epoch_manifest(ledger, summary.epoch, rules))
        if profile:
            profile.enable()
        leaves = _timed(figures, "tree", lambda: _tree(ledger, manifest))
        if profile:
            profile.disable()
            profile.dump_stats(args.profile)
    return {
        "variant": variant, "figures": figures, "manifest": manifests["manifest"], "leaves": leaves,
        "events": summary.event_count, "recipients": summary.recipient_count, "postings": summary.posting_count,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }  # fmt: skip


def run_variant(args: argparse.Namespace) -> None:
    """One variant in this process: prepare its ledger (or take `--prepared`'s), measure; the figures as JSON last."""
    if args.prepared:
        print(json.dumps(measure_variant(args.variant, args, Path(args.prepared))))
        return
    folder = Path(tempfile.mkdtemp(prefix=f"holders-epoch-{args.variant}-"))
    try:
        prepare_variant(args.variant, args, folder)
        print(f"{args.variant}: ledger ready under {folder}", flush=True)
        print(json.dumps(measure_variant(args.variant, args, folder)))
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _in_process(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{args} failed ({done.returncode}): {done.stderr[-3000:]}")
    return json.loads(done.stdout[done.stdout.rfind("\n{") + 1 :]) if "{" in done.stdout else {}


def _sums(result: dict) -> tuple[float, float]:
    """close + tree: (wall, CPU) seconds."""
    return sum(w for w, _ in result["figures"].values()), sum(c for _, c in result["figures"].values())


def _report_round(number: int, results: dict[str, dict]) -> float:
    """Print one round's figures; return its wall ratio holders/address (close + tree)."""
    h, a = results["holders"], results["address"]
    (hw, hc), (aw, ac) = _sums(h), _sums(a)
    parts = " | ".join(
        f"{label} {h['figures'][label][0]:.2f} / {a['figures'][label][0]:.2f}" for label in ("close", "tree")
    )
    print(f"round {number}: holders / address, wall s: {parts} | close + tree {hw:.2f} / {aw:.2f}: "
          f"ratio {hw / aw:.2f} wall, {hc / ac:.2f} CPU", flush=True)  # fmt: skip
    return hw / aw


_sizes = ("events", "holders", "transfers", "blocks", "models", "contributors", "dust_units_min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--holders", type=int, default=1_000_000)
    parser.add_argument("--transfers", type=int, default=0, help="Transfers in all (at least --holders: the mints)")
    parser.add_argument("--blocks", type=int, default=1_000)
    parser.add_argument("--models", type=int, default=1_000)
    parser.add_argument("--contributors", type=int, default=10_000)
    parser.add_argument("--dust-units-min", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5, help="Measurements of each variant, alternating")
    parser.add_argument("--variant", choices=["holders", "address"], help="Run one variant in this process")
    parser.add_argument("--prepared", help="with --variant: measure this prepared ledger folder (changed in place)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--profile", help="with --variant: profile the close and the tree build into this file")
    args = parser.parse_args()
    if args.variant:
        run_variant(args)
        return
    sizes = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in _sizes]
    base = Path(tempfile.mkdtemp(prefix="holders-epoch-"))
    try:
        for variant in ("address", "holders"):
            prepare_variant(variant, args, base / f"prepared-{variant}")
        print(f"ledgers ready under {base}", flush=True)
        rounds, ratios = [], []
        for number in range(1, args.rounds + 1):
            results = {}
            for variant in ("address", "holders"):  # each measured on a fresh copy, in its own process
                copy = base / f"round-{variant}"
                shutil.copytree(base / f"prepared-{variant}", copy)
                os.sync()  # the copy written back before the measurement, not during it
                results[variant] = _in_process([*sizes, "--variant", variant, "--prepared", str(copy)])
                shutil.rmtree(copy)
            rounds.append(results)
            ratios.append(_report_round(number, results))
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    _report(rounds, ratios)


def _report(rounds: list[dict[str, dict]], ratios: list[float]) -> None:
    last = rounds[-1]
    for variant in ("address", "holders"):
        r = last[variant]
        print(f"{variant}: {r['leaves']:,} leaves, {r['recipients']:,} recipients, {r['postings']:,} postings, "
              f"{r['events']:,} events, peak RSS {r['peak_rss_mb']:,} MB")  # fmt: skip
    for label in ("manifest", "close", "tree"):
        def walls(variant: str, label: str = label) -> list[float]:
            return [(r[variant][label] if label == "manifest" else r[variant]["figures"][label])[0] for r in rounds]

        h, a = statistics.median(walls("holders")), statistics.median(walls("address"))
        note = " (not in the ratio)" if label == "manifest" else f": ratio {h / a:.2f}"
        print(f"{label}, median wall: holders {h:.2f} s / address {a:.2f} s{note}")
    print(f"close + tree, {len(ratios)} rounds: ratio median {statistics.median(ratios):.2f} wall "
          f"(least {min(ratios):.2f}, greatest {max(ratios):.2f}); over 2: {sum(r > 2 for r in ratios)}")  # fmt: skip


if __name__ == "__main__":
    main()
