"""The native tree build (`settlement.onchain._merkle_native`): the same tree and the same refusals as the Python
build, on any number of threads, with either Keccak code, from concurrent callers, and never a fork or a process."""

from __future__ import annotations

import logging
import os
import random
import re
import subprocess
import threading

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from eth_utils import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from settlement.onchain import merkle
from settlement.onchain.exceptions import MerkleTreeError
from settlement.onchain.merkle import MerkleTree, amount_units_max
from tests.conftest import examples
from tests.settlement.test_merkle import random_accounts

try:
    from settlement.onchain import _merkle_native as native
except ImportError:  # no C compiler at install time; CI requires the extension (tests/test_native_built.py)
    native = None
needs_native = pytest.mark.skipif(native is None, reason="the native tree build is not built here")

# Each thread takes at least 4,096 items of a step (ITEMS_PER_THREAD_MIN in _merkle_native.c): this many leaves
# split the leaf hashing and the widest node steps over three threads, with a tail of fewer than four.
several_threads_leaves = 3 * 4096 + 3
# The removed helper process (fork + exec of a hashing interpreter) took over from 50,000 leaves.
helper_era_leaves = 60_000


def lowercase_accounts(count: int, seed: int) -> list[str]:
    """Distinct accounts, cheaper to make than checksummed ones (the checksums are then computed, not checked)."""
    rnd = random.Random(seed)
    return list(dict.fromkeys("0x" + rnd.randbytes(20).hex() for _ in range(count)))


def python_build(accounts: list[str], amounts: list[int], monkeypatch: pytest.MonkeyPatch) -> MerkleTree:
    with monkeypatch.context() as patch:
        patch.setattr(merkle, "_merkle_native", None)
        return MerkleTree.build(accounts, amounts)


# The native build's `keccak` argument: each Keccak code it has, the fastest the CPU runs at most.
keccak_portable, keccak_avx2, keccak_avx512 = 0, 1, 2


def native_tree_bytes(accounts: list[str], amounts: list[int], threads: int, keccak: int) -> bytes:
    return native.build(accounts, amounts, threads, 7, keccak)[0]


@st.composite
def leaves(draw: st.DrawFn) -> tuple[list[str], list[int]]:
    raw = draw(st.lists(st.binary(min_size=20, max_size=20), min_size=1, max_size=40, unique=True))
    style = draw(st.sampled_from(["checksummed", "lower", "upper"]))
    accounts = [to_checksum_address(a) for a in raw]
    if style == "lower":
        accounts = [a.lower() for a in accounts]
    elif style == "upper":
        accounts = ["0x" + a[2:].upper() for a in accounts]
    amounts = draw(st.lists(st.integers(0, amount_units_max), min_size=len(raw), max_size=len(raw)))
    return accounts, amounts


@needs_native
@settings(max_examples=examples(150), deadline=None)
@given(leaves())
def test_native_tree_equals_the_python_build(leaf_columns: tuple[list[str], list[int]]) -> None:
    """Property: for any distinct accounts (any case style) and uint256 amounts, the native build's nodes, dump and
    proofs equal the Python build's, with each Keccak code alike (AVX-512VL, AVX2, portable)."""
    accounts, amounts = leaf_columns
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(merkle, "_merkle_native", None)
        python = MerkleTree.build(accounts, amounts)
        python_dump = python.dump()
        python_proofs = [(python.proof(a), python.proof_hex(a)) for a in accounts]
    tree = MerkleTree.build(accounts, amounts)
    assert tree.dump() == python_dump
    assert [(tree.proof(a), tree.proof_hex(a)) for a in accounts] == python_proofs
    for keccak in (keccak_portable, keccak_avx2):  # the fastest code the CPU runs built `tree` above
        assert native_tree_bytes(accounts, amounts, 1, keccak) == python._tree_bytes, keccak


@needs_native
def test_any_thread_count_and_any_keccak_give_the_same_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins the split over threads (ranges, tails of 1-3, the node steps) and the AVX-512VL and AVX2 lanes against
    the Python build at a size that uses several threads."""
    accounts = random_accounts(several_threads_leaves, seed=21)
    amounts = [i * 10**15 for i in range(len(accounts))]
    expected = python_build(accounts, amounts, monkeypatch)._tree_bytes
    for threads in (1, 2, 3, 8):
        for keccak in (keccak_avx2, keccak_avx512):
            assert native_tree_bytes(accounts, amounts, threads, keccak) == expected, (threads, keccak)
    assert native_tree_bytes(accounts, amounts, 3, keccak_portable) == expected


def bad_inputs() -> list[tuple[list, list]]:
    good = random_accounts(6, seed=22)
    typo_at = next(i for i, c in enumerate(good[4]) if i >= 2 and c.isalpha())
    typo = good[4][:typo_at] + good[4][typo_at].swapcase() + good[4][typo_at + 1 :]
    ones = [1] * 6
    return [
        (good, [1, 2, 3, -1, 5, 2**256]),  # the first bad amount, not the last
        (good, [1, 2, True, 4, 5.0, 6]),
        (good, [1, 2, 3, 4, 5, 2**256]),
        ([*good[:2], good[2].lower()[:-1], *good[3:]], ones),
        ([*good[:2], "0X" + good[2][2:], *good[3:]], ones),
        ([*good[:2], good[2][:-1] + "g", *good[3:]], ones),
        ([*good[:2], good[2][:-1] + "é", *good[3:]], ones),
        ([*good[:2], b"\x11" * 20, *good[3:]], ones),
        ([*good[:5], good[1].lower()], ones),  # the same address in another case
        ([*good[:4], typo, good[1]], ones),  # a duplicate after a typo: the duplicate is named (as in Python)
        ([*good[:4], typo, good[5]], ones),
        ([*good[:3], good[4], typo, good[5]], [1, 2, 3, 4, -5, 6]),  # amounts are checked first
    ]


@needs_native
@pytest.mark.parametrize(("accounts", "amounts"), bad_inputs())
def test_native_refusals_equal_the_python_build(accounts: list, amounts: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins that a bad leaf is refused with the Python build's message and index, its first bad leaf first."""
    with pytest.raises(MerkleTreeError) as python:
        python_build(accounts, amounts, monkeypatch)
    with pytest.raises(MerkleTreeError, match=re.escape(str(python.value))) as ours:
        MerkleTree.build(accounts, amounts)
    assert (ours.value.index, ours.value.account) == (python.value.index, python.value.account)


def test_build_never_forks_nor_starts_a_process_while_duckdb_and_polars_pools_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As in `settle`: DuckDB and polars have run (their thread pools are up); a tree large enough for several
    hashing threads (and past the size at which the removed helper process started) is built in this process,
    with no fork and no process started."""
    duckdb.sql("SELECT sum(range) FROM range(1000000)").fetchall()
    pl.DataFrame({"a": list(range(100_000))}).group_by("a").len()
    assert len(os.listdir("/proc/self/task")) > 1
    accounts = lowercase_accounts(helper_era_leaves, seed=23)
    amounts = list(range(len(accounts)))

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a process was forked or started while other threads run")

    with monkeypatch.context() as patch:
        for module, name in ((os, "fork"), (os, "posix_spawn"), (subprocess, "Popen")):
            patch.setattr(module, name, refused)
        patch.setattr(merkle, "hashing_threads_max", 3, raising=False)
        root = MerkleTree.build(accounts, amounts).root
    assert root == python_build(accounts, amounts, monkeypatch).root


@needs_native
def test_concurrent_builds_from_several_threads_each_get_their_own_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """The build runs without the GIL: builds started together from three threads each return their tree."""
    inputs = [
        (lowercase_accounts(several_threads_leaves, seed=30 + k), [k + 1] * several_threads_leaves) for k in range(3)
    ]
    expected = [python_build(a, m, monkeypatch).root for a, m in inputs]
    roots: dict[int, bytes] = {}
    start = threading.Barrier(len(inputs))

    def build(k: int) -> None:
        start.wait()
        roots[k] = MerkleTree.build(*inputs[k]).root

    threads = [threading.Thread(target=build, args=(k,)) for k in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [roots[k] for k in range(len(inputs))] == expected


@needs_native
def test_account_lookup_finds_every_leaf_and_nothing_else() -> None:
    """Pins the native account index: every account finds its position, an absent one finds none."""
    accounts = random_accounts(5000, seed=24)
    *_, index = native.build(accounts, [1] * len(accounts), 2, 99, keccak_avx512)
    assert [index.get(bytes.fromhex(a[2:])) for a in accounts] == list(range(len(accounts)))
    assert index.get(bytes(20)) is None
    with pytest.raises(TypeError):
        index.get(b"\x00" * 19)


def test_the_python_build_says_once_that_the_extension_is_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the extension the tree is still built, and the first build logs why it is slow and what to do."""
    monkeypatch.setattr(merkle, "_merkle_native", None)
    monkeypatch.setattr(merkle, "_python_build_logged", False)
    accounts = random_accounts(3, seed=25)
    with caplog.at_level(logging.WARNING, logger="royalty.settlement"):
        first = MerkleTree.build(accounts, [1, 2, 3])
        MerkleTree.build(accounts, [1, 2, 3])
    warnings = [r.getMessage() for r in caplog.records if "native tree build" in r.getMessage()]
    assert len(warnings) == 1
    assert "install a C compiler" in warnings[0]
    assert first.proof(accounts[0])


@st.composite
def int64_leaves(draw: st.DrawFn) -> tuple[list[str], list[int]]:
    accounts, _ = draw(leaves())
    amounts = draw(st.lists(st.integers(0, 2**63 - 1), min_size=len(accounts), max_size=len(accounts)))
    return accounts, amounts


@needs_native
@settings(max_examples=examples(150), deadline=None)
@given(int64_leaves(), st.integers(0, 3), st.sampled_from([pa.string(), pa.large_string()]))
def test_a_tree_built_from_arrow_columns_equals_the_tree_built_from_lists(
    leaf_columns: tuple[list[str], list[int]], sliced_off: int, string_type: pa.DataType
) -> None:
    """Property: `build_columns` over Arrow columns (either string type, sliced out of longer columns) gives the
    tree, dump, proofs, lookups, total and amounts `build` gives over the same values as lists."""
    accounts, amounts = leaf_columns
    account_column = pa.array(["0x" + "ab" * 20] * sliced_off + accounts + ["bad"], string_type)
    amount_column = pa.array([-1] * sliced_off + amounts + [-1], pa.int64())
    length = len(accounts)
    tree = MerkleTree.build_columns(account_column.slice(sliced_off, length), amount_column.slice(sliced_off, length))
    expected = MerkleTree.build(accounts, amounts)
    assert tree.dump() == expected.dump()
    assert [tree.proof(a) for a in accounts] == [expected.proof(a) for a in accounts]
    assert [tree.amount_units(a) for a in accounts] == amounts
    assert (tree.total_amount_units, list(tree.amounts_units)) == (sum(amounts), amounts)


@needs_native
@pytest.mark.parametrize(
    ("accounts", "amounts"),
    [
        (["0x" + "11" * 20, "0x" + "22" * 19], [1, 2]),  # 40 characters: the column's offsets do not go up by 42
        (["0x" + "11" * 20, "0x" + "22" * 21], [1, 2]),
        (["0x" + "11" * 20, "0x" + "2g" * 20], [1, 2]),
        (["0x" + "11" * 20, "0x" + "22" * 20, "0x" + "11" * 20], [1, 2, 3]),
        (["0x" + "11" * 20, "0x" + "22" * 20], [1, -2]),
        ([random_accounts(6, seed=26)[0][:-1] + "0"], [1]),  # a checksum typo (when the last digit was not 0)
        (["0x" + "11" * 20, None], [1, 2]),
        (["0x" + "11" * 20, "0x" + "22" * 20], [1, None]),
        ([], []),
    ],
)
def test_a_tree_from_columns_refuses_what_the_build_from_lists_refuses(accounts: list, amounts: list) -> None:
    """A bad leaf in the columns is refused with the message and index the build from lists gives it."""
    with pytest.raises(MerkleTreeError) as from_lists:
        MerkleTree.build(accounts, amounts)
    with pytest.raises(MerkleTreeError, match=re.escape(str(from_lists.value))) as from_columns:
        MerkleTree.build_columns(pa.array(accounts, pa.string()), pa.array(amounts, pa.int64()))
    assert (from_columns.value.index, from_columns.value.account) == (from_lists.value.index, from_lists.value.account)


@needs_native
def test_build_columns_checks_its_buffers() -> None:
    """The native entry refuses buffers that do not make a column of the amounts' length (no read past them)."""
    offsets = pa.array(["0x" + "11" * 20]).buffers()[1]
    text = pa.array(["0x" + "11" * 20]).buffers()[2]
    one = pa.array([1], pa.int64()).buffers()[1]
    with pytest.raises(ValueError, match="large_string"):
        # 32-bit offsets: 8 bytes, not the 16 of one int64 pair
        native.build_columns(offsets, text, one, 1, 1, keccak_avx512)
    large = pa.array(["0x" + "11" * 20], pa.large_string())
    with pytest.raises(ValueError, match="large_string"):
        native.build_columns(large.buffers()[1], large.buffers()[2][:41], one, 1, 1, keccak_avx512)
    with pytest.raises(ValueError, match="large_string"):
        native.build_columns(large.buffers()[1], large.buffers()[2], b"", 1, 1, keccak_avx512)
    assert native.build_columns(large.buffers()[1], large.buffers()[2], one, 1, 1, keccak_avx512)[0]
