"""Wall time of composing, publishing and auditing one epoch's bundle of N events, with and without payer receipts,
and of one payer receipt.

Builds and closes the ledger as `sql_bench.py` does (synthetic events straight to Parquet, registry ingested as
events), then times: the manifest `settle` composes (`epoch_manifest`) without and with the event sum trees,
`publish_epoch` (files written) and `audit_bundle` without and with receipts, one `payer_receipt` and its check
(`verify_receipt`). Each line gives the wall time, the process's CPU time, its peak memory so far and the load.

    python benchmarks/bundle_bench.py --events 1000000 [--keep] [--no-manifests]

`--no-manifests` skips the two manifest-only steps (publish composes the same manifest), for the 100M run.
"""

import argparse
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sql_bench import build

from ledger import Ledger
from settlement.reports.audit import audit_bundle, verify_receipt
from settlement.reports.bundle import epoch_manifest, publish_epoch
from settlement.reports.receipts import payer_receipt
from settlement.use_cases.ledger_setup import register_with_ledger

T = TypeVar("T")


def _timed(label: str, work: Callable[[], T]) -> T:
    load_before = os.getloadavg()[0]
    began, cpu_began = time.perf_counter(), time.process_time()
    result = work()
    wall_s, cpu_s = time.perf_counter() - began, time.process_time() - cpu_began
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{label}: {wall_s:.2f} s (cpu {cpu_s:.1f} s; peak rss {peak_gib:.1f} GiB; load {load_before:.1f} -> "
          f"{os.getloadavg()[0]:.1f})", flush=True)
    return result


def main() -> None:
    register_with_ledger()  # the settlement's tables and views, as every entry point declares them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--models", type=int, default=1_000)
    parser.add_argument("--contributors", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-manifests", action="store_true", help="skip the manifest-only steps")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bundle-bench-"))
    started = time.perf_counter()
    try:
        print(f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
        close_s = build(folder, args.events, args.models, args.contributors)
        print(f"{args.events:,} events closed in {close_s:.2f} s (built in {time.perf_counter() - started:.0f} s; "
              f"load {os.getloadavg()[0]:.1f})", flush=True)
        with Ledger.open_read_only(folder / "lake") as ledger:
            if not args.no_manifests:
                _timed("manifest without receipts (settle's extra work)",
                       lambda: epoch_manifest(ledger, 1, None, False))
                _timed("manifest with receipts", lambda: epoch_manifest(ledger, 1, None, True))
            _timed("publish without receipts", lambda: publish_epoch(ledger, 1, folder / "b0", receipts=False))
        _timed("audit without receipts", lambda: audit_bundle(folder / "b0"))
        with Ledger.open_read_only(folder / "lake") as ledger:
            summary = _timed("publish with receipts", lambda: publish_epoch(ledger, 1, folder / "b"))
            receipt = _timed("one receipt", lambda: payer_receipt(ledger, "//gateway", "ev-7"))
        steps = len(receipt.body["proof"])
        print(f"{summary.groups:,} groups, {summary.leaves:,} leaves; the receipt's proof has {steps} steps")
        audited = _timed("audit with receipts", lambda: audit_bundle(folder / "b"))
        _timed("receipt check", lambda: verify_receipt(folder / "b", receipt.body, audited))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
