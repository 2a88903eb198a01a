"""Wall time of composing, publishing and auditing one epoch's bundle of N events, with and without payer receipts,
and of one payer receipt.

Builds and closes the ledger as `sql_bench.py` does (synthetic events straight to Parquet, registry ingested as
events), then times: the manifest `settle` composes (`epoch_manifest`) without and with the event sum trees,
`publish_epoch` (files written), `audit_bundle`, one `payer_receipt` and its check (`verify_receipt`).

    python benchmarks/bundle_bench.py --events 1000000 [--keep]
"""

import argparse
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
    began = time.perf_counter()
    result = work()
    print(f"{label}: {time.perf_counter() - began:.2f} s", flush=True)
    return result


def main() -> None:
    register_with_ledger()  # the settlement's tables and views, as every entry point declares them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--models", type=int, default=1_000)
    parser.add_argument("--contributors", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bundle-bench-"))
    try:
        close_s = build(folder, args.events, args.models, args.contributors)
        print(f"{args.events:,} events closed in {close_s:.2f} s", flush=True)
        with Ledger.open_read_only(folder / "lake") as ledger:
            _timed("manifest without receipts (settle's extra work)", lambda: epoch_manifest(ledger, 1, None, False))
            _timed("manifest with receipts", lambda: epoch_manifest(ledger, 1, None, True))
            summary = _timed("publish (with receipts, files written)", lambda: publish_epoch(ledger, 1, folder / "b"))
            receipt = _timed("one receipt", lambda: payer_receipt(ledger, "//gateway", "ev-7"))
        steps = len(receipt.body["proof"])
        print(f"{summary.groups:,} groups, {summary.leaves:,} leaves; the receipt's proof has {steps} steps")
        audited = _timed("audit", lambda: audit_bundle(folder / "b"))
        _timed("receipt check", lambda: verify_receipt(folder / "b", receipt.body, audited))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
