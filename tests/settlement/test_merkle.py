"""Unit tests of settlement.onchain.merkle: encoding, validation, proofs, dump and load."""

import random
import re

import pytest
from eth_abi import encode
from eth_utils import keccak, to_checksum_address
from hypothesis import given
from hypothesis import strategies as st

from settlement.onchain import merkle
from settlement.onchain.exceptions import MerkleTreeError
from settlement.onchain.merkle import (
    MerkleTree,
    amount_units_max,
    leaf_hash,
    process_proof,
    verify,
)


def random_accounts(count: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return [to_checksum_address(rnd.randbytes(20)) for _ in range(count)]


@given(st.binary(min_size=20, max_size=20), st.integers(0, amount_units_max))
def test_leaf_hash_is_double_keccak_of_abi_encoding(account_raw: bytes, amount_units: int) -> None:
    """Pins the leaf encoding: our hand-built 64-byte encoding equals eth_abi's, double-hashed."""
    account = to_checksum_address(account_raw)
    expected = keccak(keccak(encode(["address", "uint256"], [account, amount_units])))
    assert leaf_hash(account, amount_units) == expected


@given(st.lists(st.binary(min_size=20, max_size=20), min_size=1, max_size=50))
def test_bulk_checksums_equal_eth_utils(accounts_raw: list[bytes]) -> None:
    """Pins the bulk EIP-55 code: the dumped (checksummed) accounts equal eth_utils' for lowercase input."""
    distinct = list(dict.fromkeys(accounts_raw))
    tree = MerkleTree.build(["0x" + a.hex() for a in distinct], [1] * len(distinct))
    assert [tree.account_at(i) for i in range(len(distinct))] == [to_checksum_address(a) for a in distinct]


def test_every_proof_verifies_and_a_wrong_amount_does_not() -> None:
    """Pins proof/verify agreement over several tree sizes, including odd and power-of-two ones."""
    for count in (1, 2, 3, 4, 5, 7, 8, 9, 100):
        accounts = random_accounts(count, seed=count)
        amounts = list(range(10, 10 + count))
        tree = MerkleTree.build(accounts, amounts)
        for account, amount in zip(accounts, amounts, strict=True):
            proof = tree.proof(account)
            assert verify(tree.root, account, amount, proof)
            assert verify(tree.root_hex, account, amount, tree.proof_hex(account))
            assert not verify(tree.root, account, amount + 1, proof)
            assert tree.amount_units(account) == amount


def test_single_leaf_tree_has_the_leaf_as_root_and_an_empty_proof() -> None:
    """Pins the 1-leaf edge case the way OpenZeppelin lays it out: root == leaf, proof == []."""
    account = random_accounts(1, seed=1)[0]
    tree = MerkleTree.build([account], [42])
    assert tree.root == leaf_hash(account, 42)
    assert tree.proof(account) == []
    assert process_proof(leaf_hash(account, 42), []) == tree.root


def test_lowercase_accounts_are_accepted_and_dumped_checksummed() -> None:
    """Pins that a checksum-free (single-case) address is accepted and normalised in the dump."""
    accounts = random_accounts(3, seed=2)
    tree = MerkleTree.build([a.lower() for a in accounts], [1, 2, 3])
    same = MerkleTree.build(accounts, [1, 2, 3])
    assert tree.root == same.root
    assert [v["value"][0] for v in tree.dump()["values"]] == accounts
    assert tree.proof(accounts[0].lower()) == tree.proof(accounts[0])


@pytest.mark.parametrize(
    ("accounts", "amounts", "message"),
    [
        ([], [], "at least one leaf"),
        (["0x" + "11" * 20], [1, 2], "one amount per account"),
        (["0x" + "11" * 19], [1], "not an address"),
        (["0x" + "1g" * 20], [1], "not an address"),
        (["0X" + "11" * 20], [1], "not an address"),
        (["0x" + "11" * 19 + " 1"], [1], "not an address"),
        ([b"\x11" * 20], [1], "not an address"),
        (["0x" + "11" * 20], [-1], "outside [0, 2**256)"),
        (["0x" + "11" * 20], [2**256], "outside [0, 2**256)"),
        (["0x" + "11" * 20], [1.0], "not an int"),
        (["0x" + "11" * 20], [True], "not an int"),
        (["0x" + "11" * 20, "0x" + "11" * 20], [1, 2], "repeats leaf 0"),
    ],
)
def test_bad_leaves_are_rejected_with_the_reason(accounts: list, amounts: list, message: str) -> None:
    """Pins input validation: each bad input raises MerkleTreeError naming what is wrong."""
    with pytest.raises(MerkleTreeError, match=re.escape(message)):
        MerkleTree.build(accounts, amounts)


def test_duplicate_accounts_differing_only_in_case_are_rejected() -> None:
    """Pins that duplicate detection works on the address, not on its spelling."""
    account = random_accounts(1, seed=3)[0]
    with pytest.raises(MerkleTreeError, match="repeats leaf 0") as raised:
        MerkleTree.build([account, account.lower()], [1, 2])
    assert raised.value.index == 1


def test_mixed_case_address_with_a_wrong_checksum_is_rejected() -> None:
    """Pins EIP-55 enforcement: flipping the case of one letter of a checksummed address is a typo."""
    account = random_accounts(1, seed=4)[0]
    position = next(i for i, c in enumerate(account) if i >= 2 and c.isalpha())
    typo = account[:position] + account[position].swapcase() + account[position + 1 :]
    with pytest.raises(MerkleTreeError, match="bad EIP-55 checksum") as raised:
        MerkleTree.build([random_accounts(1, seed=5)[0], typo], [1, 2])
    assert raised.value.index == 1


def test_bad_checksum_is_caught_on_the_native_multithreaded_path_too() -> None:
    """Pins that the large-tree path (checksums computed on several native threads) still rejects typos."""
    accounts = random_accounts(2 * 4096 + 3, seed=6)
    last = accounts[-1]
    position = next(i for i, c in enumerate(last) if i >= 2 and c.isalpha())
    accounts[-1] = last[:position] + last[position].swapcase() + last[position + 1 :]
    with pytest.raises(MerkleTreeError, match="bad EIP-55 checksum") as raised:
        MerkleTree.build(accounts, [1] * len(accounts))
    assert raised.value.index == len(accounts) - 1


def test_native_and_python_builds_give_the_same_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins that the native build (threads, vendored Keccak) changes nothing: same tree as the Python build."""
    accounts = random_accounts(2 * 4096 + 3, seed=7)
    amounts = list(range(len(accounts)))
    native = MerkleTree.build(accounts, amounts)
    monkeypatch.setattr(merkle, "_merkle_native", None)
    python = MerkleTree.build([a.lower() for a in accounts], amounts)
    assert native.dump() == python.dump()
    assert python.account_at(len(accounts) - 1) == native.account_at(len(accounts) - 1) == accounts[-1]


def test_proof_for_an_unknown_account_is_an_error() -> None:
    """Pins that asking for an account outside the tree raises instead of returning a bogus proof."""
    tree = MerkleTree.build(random_accounts(2, seed=8), [1, 2])
    with pytest.raises(MerkleTreeError, match="not a leaf"):
        tree.proof(random_accounts(1, seed=9)[0])


def test_dump_then_load_round_trips_and_a_tampered_dump_is_rejected() -> None:
    """Pins load(): a dump rebuilds the same tree; a changed node or amount is detected."""
    accounts = random_accounts(5, seed=10)
    tree = MerkleTree.build(accounts, [5, 4, 3, 2, 1])
    dumped = tree.dump()
    assert MerkleTree.load(dumped).root == tree.root
    assert MerkleTree.load(dumped).dump() == dumped

    tampered_node = {**dumped, "tree": [dumped["tree"][1], *dumped["tree"][1:]]}
    with pytest.raises(MerkleTreeError, match="dumped nodes differ"):
        MerkleTree.load(tampered_node)
    tampered_value = {
        **dumped,
        "values": [{**dumped["values"][0], "value": [accounts[0], "6"]}, *dumped["values"][1:]],
    }
    with pytest.raises(MerkleTreeError, match="dumped nodes differ"):
        MerkleTree.load(tampered_value)
    with pytest.raises(MerkleTreeError, match="unknown dump format"):
        MerkleTree.load({**dumped, "format": "simple-v1"})


def test_amounts_are_dumped_as_decimal_strings_up_to_uint256_max() -> None:
    """Pins the dump's amount format: decimal strings, exact even at 2**256 - 1."""
    accounts = random_accounts(2, seed=11)
    tree = MerkleTree.build(accounts, [0, amount_units_max])
    assert [v["value"][1] for v in tree.dump()["values"]] == ["0", str(amount_units_max)]
