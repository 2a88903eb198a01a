"""Proofs read off the stored tree nodes (ledger format 14): `settle` stores each tree's nodes in binary
(`settlement_tree_node`) instead of every proof in hex (61.7-73.4 s at 1M leaves), and `royalty proof`, `claim
--account` and the demo read an account's siblings there. A ledger written before keeps its hex proofs, read as
they are. Since format 23 only the internal nodes are stored: a sibling that is a leaf is hashed from its
`settlement_proof` row; a tree stored with every node before is read as it is. On real DuckLake ledgers."""

from __future__ import annotations

import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import Ledger
from ledger.verify import verify as verify_ledger
from settlement.onchain import account_proof, largest_leaves, proof_in_root
from settlement.onchain.merkle import MerkleTree, proof_indexes, verify
from settlement.onchain.payout_tree import EpochTree, build_epoch_tree, published_dump, published_dump_json
from settlement.onchain.settle import _payables, _stored_tree, read_stored_tree, write_tree
from settlement.onchain.tables import tree_node_chunk_nodes
from tests.conftest import repo_root, royalty_command
from tests.ledger.test_recorder import _LockedFor

fixture_v1 = repo_root / "tests" / "fixtures" / "ledger_format_1.tar.gz"


def _accounts(count: int, seed: int) -> list[str]:
    return ["0x" + (seed * 1_000_003 + i + 1).to_bytes(20, "big").hex() for i in range(count)]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MerkleTree]:
    """A ledger holding one tree of 5,000 leaves (4,999 internal nodes: two node rows, the last one partial)."""
    lake = tmp_path_factory.mktemp("stored-proofs") / "lake"
    accounts = _accounts(5_000, 1)
    tree = MerkleTree.build(accounts, [(i * 7_919) % 100_003 + 1 for i in range(len(accounts))])
    with Ledger.open(str(lake)) as ledger:
        write_tree(ledger, EpochTree(1, 1, tree, "0x" + "00" * 32, 0, None))
    return lake, tree


def test_the_tree_is_stored_as_nodes_and_no_hex_proof(stored: tuple[Path, MerkleTree]) -> None:
    """The internal nodes are stored once, in binary, in chunks; the leaf rows carry no hex proof; the ledger
    verifies."""
    lake, tree = stored
    with Ledger.open_read_only(str(lake)) as ledger:
        assert verify_ledger(ledger).ok
        chunks = ledger.connection.execute(
            "SELECT chunk, nodes FROM lake.main.settlement_tree_node WHERE epoch = 1 ORDER BY chunk"
        ).fetchall()
        proofs = ledger.connection.execute(
            "SELECT count(*), count(proof) FROM lake.main.settlement_proof WHERE epoch = 1"
        ).fetchone()
    assert [chunk for chunk, _ in chunks] == [0, 1]
    assert all(len(nodes) == tree_node_chunk_nodes * 32 for _, nodes in chunks[:-1])
    assert b"".join(bytes(nodes) for _, nodes in chunks) == tree.node_bytes[: (len(tree) - 1) * 32]
    assert proofs == (len(tree), 0)


@pytest.fixture(scope="module")
def reader(stored: tuple[Path, MerkleTree]) -> Iterator[Ledger]:
    with Ledger.open_read_only(str(stored[0])) as ledger:
        yield ledger


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value_index=st.integers(min_value=0, max_value=4_999))
def test_any_accounts_proof_read_off_the_nodes_is_the_trees(
    stored: tuple[Path, MerkleTree], reader: Ledger, value_index: int
) -> None:
    """Whichever leaf (near the root or deepest, in any chunk), `royalty proof`'s reader and `claim`'s give the
    proof the tree gives, and it verifies."""
    tree = stored[1]
    account = tree.account_at(value_index)
    found = account_proof(reader, account)
    in_root = proof_in_root(reader, account, tree.root_hex)
    assert found["proof"] == tree.proof_hex(account) == (in_root or {}).get("proof")
    assert verify(tree.root, account, tree.amount_units(account), found["proof"])


def test_the_largest_leaves_come_with_their_proofs(stored: tuple[Path, MerkleTree]) -> None:
    lake, tree = stored
    with Ledger.open_read_only(str(lake)) as ledger:
        largest = largest_leaves(ledger, 1, 5)
    expected = sorted(tree.items(), key=lambda item: (-item[1], item[0]))[:5]
    assert [(account, units) for account, units, _ in largest] == expected
    assert all(proof == tree.proof_hex(account) for account, _, proof in largest)


_settle_side_reads = {
    "royalty proof": lambda ledger, tree: account_proof(ledger, tree.account_at(7))["proof"],
    "claim's proof in the root": lambda ledger, tree: proof_in_root(ledger, tree.account_at(7), tree.root_hex)["proof"],
    "the largest leaves": lambda ledger, tree: largest_leaves(ledger, 1, 1)[0][2],  # checked against its account
    "settle's stored tree": lambda ledger, tree: _stored_tree(ledger, 1).tree.proof_hex(tree.account_at(7)),
}


@pytest.mark.parametrize("read", list(_settle_side_reads))
def test_a_settle_side_read_meeting_another_writers_lock_is_tried_again(
    stored: tuple[Path, MerkleTree], read: str
) -> None:
    """A proof or stored-tree read that meets another writer's SQLite lock (a `settle` or `ingest` committing) waits
    it out through the ledger's recorder, instead of failing the command."""
    lake, tree = stored
    with Ledger.open_read_only(str(lake)) as ledger:
        expected = _settle_side_reads[read](ledger, tree)
        flaky = _LockedFor(ledger.connection, times=2)
        ledger._connection = flaky  # type: ignore[assignment]
        assert _settle_side_reads[read](ledger, tree) == expected
        assert flaky.statements > 2
    account = min(tree.items(), key=lambda item: (-item[1], item[0]))[0] if read == "the largest leaves" else None
    assert expected == tree.proof_hex(account or tree.account_at(7))


def test_a_changed_node_is_refused_not_served(tmp_path: Path) -> None:
    """A node row altered behind the ledger gives a proof that does not lead to the stored root: refused, naming
    the account, rather than printed for a claim that would revert."""
    lake = tmp_path / "lake"
    tree = MerkleTree.build(_accounts(8, 2), list(range(1, 9)))
    with Ledger.open(str(lake)) as ledger:
        write_tree(ledger, EpochTree(1, 1, tree, "0x" + "00" * 32, 0, None))
        ledger.connection.execute("DELETE FROM lake.main.settlement_tree_node WHERE epoch = 1")
        ledger.connection.execute(
            "INSERT INTO lake.main.settlement_tree_node VALUES (1, 0, ?)", [b"\x01" * len(tree.node_bytes)]
        )
        with pytest.raises(Exception, match="leads to its stored root"):
            account_proof(ledger, tree.account_at(3))


@pytest.mark.parametrize("leaves", [1, 2, 3, 4_097])
def test_a_tree_stored_with_every_node_before_format_23_is_read_as_it_is(tmp_path: Path, leaves: int) -> None:
    """A tree written before format 23 holds every node, its leaves too: proofs read them off the rows as before;
    the same tree stored since (internal nodes only; a single leaf's tree stores none) gives the same proofs."""
    tree = MerkleTree.build(_accounts(leaves, 3), [i * 11 + 1 for i in range(leaves)])
    chunk_bytes = tree_node_chunk_nodes * 32
    every_node = [(1, first // chunk_bytes, tree.node_bytes[first : first + chunk_bytes])
                  for first in range(0, len(tree.node_bytes), chunk_bytes)]  # fmt: skip
    for layout in ("since", "before"):
        with Ledger.open(str(tmp_path / layout / "lake")) as ledger:
            write_tree(ledger, EpochTree(1, 1, tree, "0x" + "00" * 32, 0, None))
            (stored_nodes,) = ledger.connection.execute(
                "SELECT coalesce(sum(octet_length(nodes)), 0) FROM lake.main.settlement_tree_node"
            ).fetchone()
            assert stored_nodes == (len(tree) - 1) * 32
            if layout == "before":
                ledger.connection.execute("DELETE FROM lake.main.settlement_tree_node WHERE epoch = 1")
                ledger.connection.executemany("INSERT INTO lake.main.settlement_tree_node VALUES (?, ?, ?)", every_node)
            for index in sorted({0, leaves // 2, leaves - 1}):
                account = tree.account_at(index)
                assert account_proof(ledger, account)["proof"] == tree.proof_hex(account)


def test_a_leaf_row_changed_behind_the_ledger_is_refused_not_served(tmp_path: Path) -> None:
    """A leaf's sibling is hashed from its `settlement_proof` row: a changed amount there gives a proof that does not
    lead to the stored root, refused for the account beside it, naming it."""
    tree = MerkleTree.build(_accounts(8, 4), list(range(1, 9)))
    with Ledger.open(str(tmp_path / "lake")) as ledger:
        write_tree(ledger, EpochTree(1, 1, tree, "0x" + "00" * 32, 0, None))
        (sibling,) = ledger.connection.execute(
            "SELECT account FROM lake.main.settlement_proof WHERE tree_index = ?",
            [proof_indexes(tree._tree_index(3))[0]],  # a leaf: 8 leaves fill the bottom level
        ).fetchone()
        ledger.connection.execute(
            "UPDATE lake.main.settlement_proof SET cumulative_units = cumulative_units + 1 WHERE account = ?", [sibling]
        )
        with pytest.raises(Exception, match="leads to its stored root"):
            account_proof(ledger, tree.account_at(3))


def test_a_ledger_written_before_keeps_its_hex_proofs_and_stores_nodes_after_migrate(tmp_path: Path) -> None:
    """The format-1 fixture settled epoch 1 with hex proofs. Migrated, `royalty proof` prints those stored proofs;
    the next epoch's tree is stored as nodes, and its proofs are read off them."""
    with tarfile.open(fixture_v1) as archive:
        archive.extractall(tmp_path, filter="data")
    lake = tmp_path / "lake"
    for args in (("migrate", "--lake", str(lake)), ("close-epoch", "--lake", str(lake))):
        done = subprocess.run(royalty_command(*args), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    with Ledger.open(str(lake)) as ledger:
        connection = ledger.connection
        hex_rows = connection.execute(
            "SELECT account, proof FROM lake.main.settlement_proof WHERE epoch = 1 ORDER BY account"
        ).fetchall()
        assert hex_rows and all(proof is not None for _, proof in hex_rows)
        for account, proof in hex_rows[:3]:
            assert account_proof(ledger, account)["proof"] == list(proof)
        (closing,) = connection.execute("SELECT max(closing_snapshot) FROM lake.main.settlement_epoch").fetchone()
        second = build_epoch_tree(2, closing, _payables(connection, 2))
        assert second is not None
        write_tree(ledger, second)
        stored_tree = read_stored_tree(connection, 2)
        assert stored_tree is not None and stored_tree.tree.root == second.tree.root
        for account in map(second.tree.account_at, range(len(second.tree))):
            assert proof_in_root(ledger, account, second.tree.root_hex)["proof"] == second.tree.proof_hex(account)
        (nulls,) = connection.execute(
            "SELECT count(*) FROM lake.main.settlement_proof WHERE epoch = 2 AND proof IS NULL"
        ).fetchone()
    assert nulls == len(second.tree)


@settings(max_examples=60, deadline=None)
@given(
    amounts_units=st.lists(st.integers(min_value=0, max_value=2**256 - 1), min_size=1, max_size=40),
    epoch=st.integers(min_value=1, max_value=2**40),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_the_written_dump_is_json_dumps_of_the_published_dump_byte_for_byte(
    amounts_units: list[int], epoch: int, seed: int
) -> None:
    """`settle --tree-dir` writes the dump without a dict per leaf (json.dumps with indent took most of settle's
    time at a million leaves); the bytes are those json.dumps(published_dump, indent=1) wrote before."""
    tree = MerkleTree.build(_accounts(len(amounts_units), seed), amounts_units)
    epoch_tree = EpochTree(epoch, 1, tree, "0x" + f"{seed:064x}", 0, None)
    assert published_dump_json(epoch_tree) == json.dumps(published_dump(epoch_tree), indent=1)
