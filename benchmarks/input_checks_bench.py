"""What the input checks of `close-epoch` and `settle` add: hashing the files a step reads, and reconciliation.

Run from the repository root:

    python benchmarks/input_checks_bench.py [--events 1000000] [--reversals 200] [--repeat 3]

Builds an embedded ledger with `--events` sample events (registry first; batches of 100,000 as ingest
writes them), then times, best of `--repeat`:

1. epoch 1: planning without checks (`plan_from_ledger`), the checksums of the files closing reads, and
   the reconciliation query (no epoch yet: nothing to reconcile);
2. after epoch 1 is written and `--events / 5` more events plus `--reversals` reversals arrive: the same for
   epoch 2 (reversals make closing read, and so hash, every earlier event file) and the reconciliation of
   epoch 1 (its `events_vs_epoch` check scans every event);
3. `settle`'s own check of epoch 1 (payables, proofs, reconciliation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ingest.sample import SampleTraffic  # noqa: E402
from ledger import IngestBatch, Ledger, PartitionOffsets  # noqa: E402
from schemas import BatchDecoder  # noqa: E402
from settlement import close_epoch  # noqa: E402
from settlement.engine.authority import RegistryRules  # noqa: E402
from settlement.input_checks import (  # noqa: E402
    InputChecks,
    close_input_files,
    settle_input_files,
    unreconciled_rows,
    verify_files,
)
from settlement.ledger_io import plan_from_ledger, read_prior  # noqa: E402
from settlement.onchain.payout_tree import build_epoch_tree  # noqa: E402
from settlement.onchain.settle import _payables, write_tree  # noqa: E402
from settlement.use_cases.ledger_setup import register_with_ledger  # noqa: E402

batch_events = 100_000


def _append(ledger: Ledger, values: list[bytes], first: int) -> int:
    decoder = BatchDecoder()
    for start in range(0, len(values), batch_events):
        chunk = values[start : start + batch_events]
        offsets = list(range(first, first + len(chunk)))
        batch = IngestBatch.from_messages(chunk, ["t"] * len(chunk), [0] * len(chunk), offsets, decoder)
        ledger.append(batch, [PartitionOffsets("t", 0, first, first + len(chunk))])
        first += len(chunk)
    return first


def _reversal(index: int, original: bytes) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": f"bench-reversal-{index}",
            "source": "//billing.example",
            "type": "ai.inference.reversed.v1",
            "time": "2026-11-25T00:00:00Z",
            "datacontenttype": "application/json",
            "data": {
                "original_event_id": json.loads(original)["id"],
                "reason": "refund",
                "original_source": json.loads(original)["source"],
            },
        }
    ).encode()


def _best(repeat: int, work) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return min(times), result


def _measure(ledger: Ledger, label: str, repeat: int) -> None:
    prior = read_prior(ledger.connection)
    closing = ledger.current_snapshot()
    files = close_input_files(ledger.connection, prior, closing)
    size = sum(s for _, s in files)
    # The billing source is trusted to reverse the gateways' events, so its reversals take fees back.
    rules = RegistryRules(reversal_sources=("//billing.example",))
    plan_s, _ = _best(repeat, lambda: plan_from_ledger(ledger, rules=rules))
    hash_s, _ = _best(repeat, lambda: verify_files(ledger, files, InputChecks(), label))
    reconcile_s, rows = _best(repeat, lambda: unreconciled_rows(ledger))
    print(
        f"{label}: plan {plan_s:.2f} s | checksums of {len(files)} files, {size / 2**20:.1f} MiB: {hash_s:.2f} s "
        f"| reconciliation: {reconcile_s:.2f} s ({len(rows)} non-zero rows) "
        f"| added {100 * (hash_s + reconcile_s) / plan_s:.0f}% of planning"
    )


def main() -> None:
    register_with_ledger()  # the settlement's tables and views, as every entry point declares them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--reversals", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    traffic = SampleTraffic(seed=11)
    with tempfile.TemporaryDirectory() as folder, Ledger.open(Path(folder) / "lake") as ledger:
        started = time.perf_counter()
        first = _append(ledger, list(traffic.registry()) + list(traffic.metered(args.events)), 0)
        print(f"ledger of {args.events:,} events built in {time.perf_counter() - started:.1f} s")
        _measure(ledger, "epoch 1", args.repeat)
        close_epoch(ledger)
        more = list(traffic.metered(args.events // 5, first_index=args.events))
        reversals = [_reversal(i, more[i * 7]) for i in range(args.reversals)]
        first = _append(ledger, more, first)
        _append(ledger, reversals, first)
        _measure(ledger, f"epoch 2 (+{len(more):,} events, {len(reversals)} reversals)", args.repeat)
        tree = build_epoch_tree(1, ledger.current_snapshot(), _payables(ledger.connection, 1))
        write_tree(ledger, tree)
        files = settle_input_files(ledger.connection, 1)
        hash_s, _ = _best(args.repeat, lambda: verify_files(ledger, files, InputChecks(), "settle"))
        reconcile_s, _ = _best(args.repeat, lambda: unreconciled_rows(ledger))
        print(f"settle epoch 1: checksums of {len(files)} files: {hash_s:.3f} s | reconciliation: {reconcile_s:.2f} s")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
