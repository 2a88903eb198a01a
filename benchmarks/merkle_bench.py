"""Merkle build time (Python vs @openzeppelin/merkle-tree) and settlement gas (one root vs transfers).

Run from the repository root after `(cd contracts && npm ci)`:

    python benchmarks/merkle_bench.py [--leaves 1000000] [--js-leaves 100000] [--repeat 5] [--tree-only]

Part 1 builds the same leaves with `settlement.onchain.merkle` and with `StandardMerkleTree.of` in node, checks
that both give the same root, and prints the times and their ratio. The build is `MerkleTree.build` whole:
checks, every leaf and node hashed (the root and any proof available), the account index; then, separately,
`dump()` and every leaf's proof as hex (what `settle` stores). The JS tree takes minutes for 1,000,000 leaves
here, so it builds the first `--js-leaves` of them (100,000 by default) and the ratio is taken at that size;
pass `--js-leaves 1000000` to compare at full size, `--js-leaves 0` to skip node.

Part 2 deploys the token and the distributor on a fresh anvil, proposes the root of the full tree,
claims for one payee of it, and compares with paying every payee by one ERC-20 transfer each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import distributor_gas  # noqa: E402
from settlement.onchain import merkle  # noqa: E402
from settlement.onchain.merkle import MerkleTree  # noqa: E402
from tests.support.anvil import CONTRACTS_DIR, Anvil, anvil_binary, deploy  # noqa: E402

SEED = 20_260_101
# The JS tree of 1,000,000 leaves holds several hundred MB of hex strings; node's default heap is
# too small for it.
NODE_HEAP_MB = 8_192
NODE_TIMEOUT_S = 1_800
TIMELOCK_SECONDS = 0


def make_leaves(count: int) -> tuple[list[str], list[int]]:
    """`count` distinct checksummed accounts with amounts up to 10**12 minor units, reproducibly."""
    rnd = random.Random(SEED)
    lowercase = list(dict.fromkeys("0x" + rnd.randbytes(20).hex() for _ in range(count)))
    amounts_units = [rnd.randrange(1, 10**12) for _ in lowercase]
    checksummer = MerkleTree.build(lowercase, amounts_units)
    return [checksummer.account_at(i) for i in range(len(lowercase))], amounts_units


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and its reaped children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_python(
    accounts: list[str], amounts_units: list[int], repeat: int
) -> tuple[MerkleTree, list[float], list[float]]:
    walls, cpus = [], []
    tree = None
    for _ in range(repeat):
        cpu_started, started = cpu_seconds(), time.perf_counter()
        tree = MerkleTree.build(accounts, amounts_units)
        walls.append(time.perf_counter() - started)
        cpus.append(cpu_seconds() - cpu_started)
    assert tree is not None
    return tree, walls, cpus


def time_js(accounts: list[str], amounts_units: list[int]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "values.json"
        path.write_text(json.dumps({"values": [[a, str(m)] for a, m in zip(accounts, amounts_units, strict=True)]}))
        result = subprocess.run(
            ["node", f"--max-old-space-size={NODE_HEAP_MB}", "tools/oz-merkle.mjs", "--bench", str(path)],
            cwd=CONTRACTS_DIR,
            check=True,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT_S,
        )
    return json.loads(result.stdout)


def build_path() -> str:
    if merkle._merkle_native is None:
        return "Python build (safe-pysha3, one core): the native extension is not built"
    return f"native build, Keccak {merkle._merkle_native.implementation()}, {merkle._hashing_threads()} threads"


def time_outputs(tree: MerkleTree) -> None:
    started = time.perf_counter()
    dump = tree.dump()
    dumped = time.perf_counter()
    proofs = [tree.proof_hex(entry["value"][0]) for entry in dump["values"]]
    proved = time.perf_counter()
    print(
        f"        then dump() {dumped - started:.2f} s, every proof as hex {proved - dumped:.2f} s "
        f"({len(proofs):,} proofs of {len(proofs[0])} nodes)"
    )


def bench_build(leaves_count: int, js_leaves_count: int, repeat: int) -> MerkleTree:
    print(f"tree: {build_path()}")
    accounts, amounts_units = make_leaves(leaves_count)
    tree, walls, cpus = time_python(accounts, amounts_units, repeat)
    print(
        f"ours    {leaves_count:>9,} leaves: build {min(walls):6.2f} s wall, {min(cpus):.2f} s CPU "
        f"(runs: {', '.join(f'{w:.2f}' for w in walls)} s)"
    )
    time_outputs(tree)
    if js_leaves_count <= 0:
        return tree

    js_count = min(js_leaves_count, leaves_count)
    small, small_walls, _ = time_python(accounts[:js_count], amounts_units[:js_count], repeat)
    js = time_js(accounts[:js_count], amounts_units[:js_count])
    assert js["root"] == small.root_hex, f"roots differ: JS {js['root']} vs ours {small.root_hex}"
    js_s = js["build_ms"] / 1000
    runs = ", ".join(f"{w:.2f}" for w in small_walls)
    print(f"ours    {js_count:>9,} leaves: build {min(small_walls):6.2f} s (runs: {runs} s)")
    print(f"js (OZ) {js_count:>9,} leaves: build {js_s:6.2f} s  (StandardMerkleTree.of, same root)")
    print(f"ratio at {js_count:,} leaves: JS / ours = {js_s / min(small_walls):.0f}x")
    if js_count < leaves_count:
        print(f"(JS not run at {leaves_count:,} leaves, it takes minutes; pass --js-leaves {leaves_count})")
    return tree


def bench_gas(tree: MerkleTree) -> None:
    node = Anvil(anvil_binary(), Path(tempfile.mkdtemp()) / "anvil.log", ("--gas-limit", "1000000000"))
    try:
        gas_report(node, tree)
        distributor_gas.print_report(distributor_gas.gas_report(node, len(tree)), len(tree))
    finally:
        node.stop()


def gas_report(node: Anvil, tree: MerkleTree) -> None:
    w3 = node.w3
    d = deploy(w3, TIMELOCK_SECONDS)
    d.fund(tree.total_amount_units)
    propose_first = d.propose(1, tree)["gasUsed"]
    payee = tree.account_at(0)
    claim_first = d.claim(tree, payee)["gasUsed"]

    # Epoch 2 adds one unit to everybody: a returning claimant's claimed slot is no longer zero.
    accounts, amounts_units = zip(*tree.items(), strict=True)
    grown = MerkleTree.build(accounts, [m + 1 for m in amounts_units])
    d.fund(len(accounts))
    propose_next = d.propose(2, grown)["gasUsed"]
    claim_returning = d.claim(grown, payee)["gasUsed"]
    claim_new = d.claim(grown, accounts[1])["gasUsed"]

    # Paying each payee directly: one transfer each from a funded treasury, to a new holder (the
    # first epoch) and to an existing holder (every later one).
    treasury = d.admin
    d.send(d.token.functions.mint(treasury, 10**18), d.admin)
    rnd = random.Random(SEED + 1)
    fresh = [w3.to_checksum_address(rnd.randbytes(20)) for _ in range(20)]
    transfer_new = [d.send(d.token.functions.transfer(a, 1_000), treasury)["gasUsed"] for a in fresh]
    transfer_existing = [d.send(d.token.functions.transfer(a, 1_000), treasury)["gasUsed"] for a in fresh]
    per_new = sum(transfer_new) / len(transfer_new)
    per_existing = sum(transfer_existing) / len(transfer_existing)
    payees = len(tree)

    print(
        f"\ngas on anvil ({payees:,}-leaf tree, proof length {len(tree.proof(payee))}; totals include the "
        "21,000 base gas of each transaction)"
    )
    print(f"  proposeRoot, first epoch          {propose_first:>14,}")
    print(f"  proposeRoot, later epoch          {propose_next:>14,}")
    print(f"  claim, first ever for an account  {claim_first:>14,}")
    print(f"  claim, new account in epoch 2     {claim_new:>14,}")
    print(f"  claim, returning account          {claim_returning:>14,}")
    for label, per in (("to a new holder", per_new), ("to a holder    ", per_existing)):
        print(f"  ERC-20 transfer {label}   {per:>14,.0f}  x {payees:,} = {per * payees:,.0f}")
    print(
        f"  settlement gas per epoch: {propose_next:,} (one root, any number of payees) vs "
        f"{per_existing * payees:,.0f} for direct transfers; claims are paid by the claimants"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--js-leaves", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5, help="builds per size; the best is reported")
    parser.add_argument("--skip-gas", "--tree-only", action="store_true", help="the tree figures only, no anvil")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    tree = bench_build(args.leaves, args.js_leaves, args.repeat)
    if not args.skip_gas:
        bench_gas(tree)


if __name__ == "__main__":
    main()
