"""RoyaltyDistributor gas at a given tree size, on a fresh anvil, without building the whole tree.

A claim's gas depends on the tree only through its proof length, so the tree here is a small real tree of
`accounts` leaves whose root is hashed on up to the depth a tree of `leaves` leaves has, with random
siblings (sorted pairs, as OpenZeppelin's trees hash): every claimant's proof is as long as in the full
tree, and its calldata as dense.

    python benchmarks/distributor_gas.py [--leaves 1000000]

Also run by `benchmarks/merkle_bench.py` (part 2).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from settlement.onchain.merkle import MerkleTree, node_hash  # noqa: E402
from tests.support.anvil import NO_DIGEST, Anvil, Deployment, anvil_binary, deploy  # noqa: E402

SEED = 20_260_102
SMALL_TREE_LEAVES = 16  # the claimants: a real tree, extended upwards to the full depth
MANY = 10  # accounts in the claimMany measurement
TIMELOCK_SECONDS = 0
WAITING_TIMELOCK_SECONDS = 3_600  # for the claims made while the next root waits


class DeepTree:
    """A real tree of a few accounts whose root is folded with random siblings up to `depth` levels."""

    def __init__(self, amounts_units: dict[str, int], depth: int, seed: int) -> None:
        self.small = MerkleTree.from_amounts(amounts_units)
        small_depth = max(len(self.small.proof(a)) for a in amounts_units)
        rnd = random.Random(seed)
        self.extra = [rnd.randbytes(32) for _ in range(max(0, depth - small_depth))]
        root = self.small.root
        for sibling in self.extra:
            root = node_hash(root, sibling)
        self.root = root
        self.total_amount_units = sum(amounts_units.values())

    def proof(self, account: str) -> list[bytes]:
        return [*self.small.proof(account), *self.extra]

    def amount_units(self, account: str) -> int:
        return self.small.amount_units(account)


def _propose(d: Deployment, epoch: int, tree: DeepTree) -> int:
    call = d.distributor.functions.proposeRoot(epoch, tree.root, tree.total_amount_units, NO_DIGEST)
    return d.send(call, d.settler)["gasUsed"]


def _claim(d: Deployment, tree: DeepTree, account: str) -> int:
    call = d.distributor.functions.claim(account, tree.amount_units(account), tree.proof(account))
    return d.send(call, d.outsider)["gasUsed"]


def gas_report(node: Anvil, leaves: int) -> dict[str, float]:
    """Measure each operation once on `node`; return the figures by name."""
    depth = math.ceil(math.log2(leaves))
    rnd = random.Random(SEED)
    accounts = [node.w3.to_checksum_address(rnd.randbytes(20)) for _ in range(SMALL_TREE_LEAVES)]
    d = deploy(node.w3, TIMELOCK_SECONDS)
    first = DeepTree({a: 1_000_000 for a in accounts[:4]}, depth, SEED)
    d.fund(10**15)
    figures: dict[str, float] = {"proof length": len(first.proof(accounts[0]))}
    figures["proposeRoot, first epoch"] = _propose(d, 1, first)
    figures["claim, the first ever"] = _claim(d, first, accounts[0])
    figures["claim, new account in epoch 1"] = _claim(d, first, accounts[1])
    grown = DeepTree({a: 2_000_000 for a in accounts}, depth, SEED + 1)
    figures["proposeRoot, epoch 2"] = _propose(d, 2, grown)
    figures["claim, new account in epoch 2"] = _claim(d, grown, accounts[4])
    figures["claim, returning account"] = _claim(d, grown, accounts[0])
    third = DeepTree({a: 3_000_000 for a in accounts}, depth, SEED + 2)
    figures["proposeRoot, epoch 3 (steady state)"] = _propose(d, 3, third)
    figures["claim, returning account (epoch 3)"] = _claim(d, third, accounts[0])
    batch = accounts[5 : 5 + MANY]
    call = d.distributor.functions.claimMany(
        batch, [third.amount_units(a) for a in batch], [third.proof(a) for a in batch]
    )
    figures[f"claimMany, {len(batch)} new accounts, per account"] = d.send(call, d.outsider)["gasUsed"] / len(batch)
    returning = accounts[1:4]
    fourth = DeepTree({a: 4_000_000 for a in accounts}, depth, SEED + 3)
    _propose(d, 4, fourth)
    call = d.distributor.functions.claimMany(
        returning, [fourth.amount_units(a) for a in returning], [fourth.proof(a) for a in returning]
    )
    figures[f"claimMany, {len(returning)} returning accounts, per account"] = (
        d.send(call, d.outsider)["gasUsed"] / len(returning)
    )
    figures.update(_while_a_root_waits(node, accounts, depth))
    return figures


def _while_a_root_waits(node: Anvil, accounts: list[str], depth: int) -> dict[str, float]:
    """Claims against the active root while the next one is in its timelock (with a settle cadence equal to
    the timelock every claim is one of these): they also read what the waiting root added."""
    d = deploy(node.w3, WAITING_TIMELOCK_SECONDS)
    d.fund(10**15)
    trees = [DeepTree({a: epoch * 1_000_000 for a in accounts}, depth, SEED + 3 + epoch) for epoch in (1, 2, 3)]
    _propose(d, 1, trees[0])
    node.advance_time(WAITING_TIMELOCK_SECONDS)
    _claim(d, trees[0], accounts[0])
    _propose(d, 2, trees[1])
    node.advance_time(WAITING_TIMELOCK_SECONDS)
    _propose(d, 3, trees[2])
    return {
        "claim, new account, next root waiting": _claim(d, trees[1], accounts[1]),
        "claim, returning account, next root waiting": _claim(d, trees[1], accounts[0]),
    }


def print_report(figures: dict[str, float], leaves: int) -> None:
    print(f"\ngas on anvil at {leaves:,} leaves (totals include each transaction's 21,000 base gas)")
    for name, value in figures.items():
        print(f"  {name:<48} {value:>10,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    node = Anvil(anvil_binary(), Path(tempfile.mkdtemp()) / "anvil.log")
    try:
        print_report(gas_report(node, args.leaves), args.leaves)
    finally:
        node.stop()


if __name__ == "__main__":
    main()
