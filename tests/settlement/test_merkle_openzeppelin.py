"""Cross-checks settlement.onchain.merkle against @openzeppelin/merkle-tree (node), the reference layout."""

import random

from eth_utils import to_checksum_address
from hypothesis import example, given, settings
from hypothesis import strategies as st

from settlement.onchain.merkle import MerkleTree, amount_units_max
from tests.support.oz_merkle import OzMerkle, oz_merkle  # noqa: F401 - the fixture is used by name

leaves_count_max = 2_000
trees_per_batch_max = 4


@st.composite
def payout_leaves(draw: st.DrawFn, count: int | None = None) -> list[tuple[str, int]]:
    """Distinct accounts (checksummed or lowercase) with amounts biased towards the uint256 edges."""
    if count is None:
        count = draw(st.integers(1, leaves_count_max))
    rnd = draw(st.randoms(use_true_random=False))
    edges = [0, 1, 2**255, amount_units_max]
    # A dict, not a set: its order, and so the example, must not depend on the hash seed.
    raw_accounts = dict.fromkeys([bytes(20), b"\xff" * 20] if rnd.random() < 0.2 else [])
    while len(raw_accounts) < count:
        raw_accounts[rnd.randbytes(20)] = None
    leaves = []
    for raw in list(raw_accounts)[:count]:
        account = to_checksum_address(raw)
        if rnd.random() < 0.2:
            account = account.lower()
        amount = rnd.choice(edges) if rnd.random() < 0.1 else rnd.getrandbits(rnd.choice((8, 64, 128, 256)))
        leaves.append((account, amount))
    return leaves


def assert_same_as_openzeppelin(oracle: OzMerkle, trees: list[list[tuple[str, int]]]) -> None:
    ours = [MerkleTree.build([a for a, _ in leaves], [m for _, m in leaves]) for leaves in trees]
    # OpenZeppelin keeps values as given, so it gets exactly the values our dump holds.
    theirs = oracle.describe([[tuple(v["value"]) for v in tree.dump()["values"]] for tree in ours])
    for tree, reference in zip(ours, theirs, strict=True):
        assert tree.root_hex == reference["root"]
        assert tree.dump() == reference["dump"]
        for i, proof in enumerate(reference["proofs"]):
            assert tree.proof_hex(tree.account_at(i)) == proof


@settings(max_examples=40)
@given(batch=st.lists(payout_leaves(), min_size=1, max_size=trees_per_batch_max))
@example(batch=[[(to_checksum_address(b"\x01" * 20), 7)]])
@example(batch=[[(to_checksum_address(b"\x01" * 20), 7), (to_checksum_address(b"\x02" * 20), 0)]])
def test_root_proofs_and_dump_equal_openzeppelin(oz_merkle: OzMerkle, batch: list) -> None:  # noqa: F811
    """Pins byte-for-byte compatibility: root, each proof and dump() equal OpenZeppelin's, 1..2,000 leaves."""
    assert_same_as_openzeppelin(oz_merkle, batch)


def test_small_and_boundary_sizes_equal_openzeppelin(oz_merkle: OzMerkle) -> None:  # noqa: F811
    """Pins every size from 1 to 17 and the sizes around powers of two up to 2,000, in one node call."""
    sizes = [*range(1, 18), 31, 32, 33, 63, 64, 65, 127, 128, 129, 1023, 1024, 1025, 1999, 2000]
    rnd = random.Random(12)
    trees = []
    for size in sizes:
        accounts = dict.fromkeys(rnd.randbytes(20) for _ in range(size))
        trees.append([(to_checksum_address(a), rnd.getrandbits(96)) for a in accounts])
    assert_same_as_openzeppelin(oz_merkle, trees)
