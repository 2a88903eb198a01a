"""How long `settle` takes to store an epoch's payout tree in the ledger (`settle.write_tree`), apart from the build.

    PYTHONPATH=. python benchmarks/tree_store_bench.py --leaves 1000000

Builds a tree of `--leaves` random accounts, then times `write_tree` into a fresh ledger (a temporary folder, SQLite
catalog): one transaction holding the root row, the leaf rows and whatever stores the proofs. Then reads one
account's proof back the way `royalty proof` does, and the OpenZeppelin dump `settle --tree-dir` writes, each timed
on its own. Prints the machine's load average at the start (the figures depend on it).
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from pathlib import Path

from ledger.ledger import Ledger
from settlement.onchain.merkle import MerkleTree
from settlement.onchain.payout_tree import EpochTree, write_dump
from settlement.onchain.proofs import account_proof
from settlement.onchain.settle import write_tree
from settlement.use_cases.ledger_setup import register_with_ledger


def _tree(leaves_count: int) -> MerkleTree:
    accounts = ["0x" + secrets.token_hex(20) for _ in range(leaves_count)]
    amounts_units = [secrets.randbelow(10**12) + 1 for _ in range(leaves_count)]
    return MerkleTree.build(accounts, amounts_units)


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    args = parser.parse_args()
    register_with_ledger()  # the settlement's tables and views, as every entry point declares them
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    started = time.perf_counter()
    tree = _tree(args.leaves)
    print(f"{args.leaves:,} leaves: random leaves and build {time.perf_counter() - started:.2f} s (not settle's)")
    epoch_tree = EpochTree(1, 1, tree, "0x" + "00" * 32, 0, None)
    with tempfile.TemporaryDirectory(prefix="tree-store-") as folder:
        lake = Path(folder) / "lake"
        with Ledger.open(str(lake)) as ledger:
            started = time.perf_counter()
            write_tree(ledger, epoch_tree)
            stored_s = time.perf_counter() - started
            print(f"write_tree (root, leaves, proofs; one transaction): {stored_s:.2f} s")
            print(f"ledger folder after it: {_folder_bytes(lake) / 1e6:,.1f} MB")
            account = tree.account_at(args.leaves // 2)
            started = time.perf_counter()
            found = account_proof(ledger, account)
            print(f"one account's proof read back (royalty proof): {time.perf_counter() - started:.3f} s")
            if found["proof"] != tree.proof_hex(account):
                raise SystemExit("the stored proof differs from the tree's")
        started = time.perf_counter()
        write_dump(Path(folder) / "trees", epoch_tree)
        print(f"OpenZeppelin dump (settle --tree-dir): {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
