"""Cumulative payout Merkle tree, byte for byte OpenZeppelin's `StandardMerkleTree`.

Each leaf is `(address account, uint256 cumulative_amount_units)`, hashed as
`keccak256(keccak256(abi.encode(account, amount)))`; pairs are hashed sorted; leaves are sorted by hash
and laid out, with the internal nodes, in one array as a complete binary tree (`tree[0]` is the root,
the children of `i` are `2i+1` and `2i+2`, the smallest leaf hash is last). This is what
`StandardMerkleTree.of(values, ["address", "uint256"])` of `@openzeppelin/merkle-tree` builds, so its
root, proofs and `dump()` are interchangeable with ours and verify with OpenZeppelin's `MerkleProof`.

A million leaves is about four million keccak calls (two per leaf, one per internal node, one per
address checksum); at roughly 0.7 µs a call through `safe-pysha3` that is the whole time budget, so the
hot paths work on whole columns with C-level bytes operations and list comprehensions, never on one
leaf at a time through `eth_abi` or `eth_utils`.
"""

import logging
import subprocess
import sys
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sha3 import keccak_256

from settlement.onchain import tree_hashing
from settlement.onchain.exceptions import MerkleTreeError
from settlement.onchain.tree_hashing import checksum_bodies as _checksum_bodies
from settlement.onchain.tree_hashing import leaf_hashes as _leaf_hashes

log = logging.getLogger("royalty.settlement")

DUMP_FORMAT = "standard-v1"
LEAF_ENCODING = ("address", "uint256")

# 2**24 leaves (~16.7M payees) take over a minute and several GiB to build here; a larger epoch is a
# bug upstream (or needs a sharded tree), not something to grind through.
leaves_count_max = 2**24
amount_units_max = 2**256 - 1
# Below this many leaves a second process costs more to start than the hashing it takes over.
helper_leaves_min = 50_000
# The helper process computes every checksum (one keccak per leaf) plus this share of the leaf hashes
# (two each), while this one also slices and indexes the accounts: measured here, a quarter
# balances the two cores.
helper_leaves_share_ppm = 250_000
# The helper's share of the largest tree (2**24 leaves) takes about 20 s here; past this bound it is
# taken for stuck, killed, and its work done in this process instead.
helper_wait_s_max = 120.0
# A fresh interpreter that imports only `sha3` (`-I`: no PYTHONPATH, no user site, no current folder).
_helper_command = [sys.executable, "-I", tree_hashing.__file__]

_account_chars = 42  # "0x" + 40 hex digits
_account_bytes = 20
_word_bytes = 32


def leaf_hash(account: str, cumulative_amount_units: int) -> bytes:
    """The leaf of one `(account, cumulative amount)`, exactly as the contract recomputes it."""
    raw, _ = _parse_accounts([account])
    _check_amounts([cumulative_amount_units])
    return _leaf_hashes([raw], [cumulative_amount_units])[0]


def node_hash(a: bytes, b: bytes) -> bytes:
    """The parent of two nodes: keccak256 of the pair in ascending byte order."""
    return keccak_256(a + b).digest() if a < b else keccak_256(b + a).digest()


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` leads to from `leaf`, as OpenZeppelin's `MerkleProof.processProof`."""
    node = leaf
    for sibling in proof:
        node = node_hash(node, sibling)
    return node


def verify(root: bytes | str, account: str, cumulative_amount_units: int, proof: Sequence[bytes | str]) -> bool:
    """Whether `proof` shows that `(account, cumulative_amount_units)` is a leaf of the tree with `root`."""
    proof_bytes = [_to_bytes32(p) for p in proof]
    return process_proof(leaf_hash(account, cumulative_amount_units), proof_bytes) == _to_bytes32(root)


class MerkleTree:
    """An immutable payout tree over distinct accounts; build it with `MerkleTree.build`."""

    __slots__ = (
        "_amounts_units",
        "_checksummed_hex",
        "_index_by_account",
        "_leaves",
        "_sorted_leaves",
        "_tree",
    )

    def __init__(self) -> None:
        raise TypeError("use MerkleTree.build(accounts, cumulative_amounts_units) or MerkleTree.load(dump)")

    @classmethod
    def build(cls, accounts: Sequence[str], cumulative_amounts_units: Sequence[int]) -> "MerkleTree":
        """Build the tree over `accounts[i]` earning `cumulative_amounts_units[i]` in total so far.

        Accounts are `0x` + 40 hex digits, either EIP-55 checksummed or in one case throughout; each
        account may appear once (sum the contributors sharing an address first). Amounts are `int`
        in [0, 2**256). Raises `MerkleTreeError` naming the first offending leaf.
        """
        leaves_count = len(accounts)
        if leaves_count != len(cumulative_amounts_units):
            raise MerkleTreeError(
                f"{leaves_count} accounts but {len(cumulative_amounts_units)} amounts; pass one amount per account"
            )
        if leaves_count == 0:
            raise MerkleTreeError("a tree needs at least one leaf; skip the epoch when nobody is owed anything")
        if leaves_count > leaves_count_max:
            raise MerkleTreeError(f"{leaves_count} leaves exceed leaves_count_max={leaves_count_max}")
        amounts_units = list(cumulative_amounts_units)
        _check_amounts(amounts_units)
        raw, given_hex = _parse_account_format(accounts)
        # The checksums and the last leaves are hashed on the second core while this one hashes the
        # rest; the checksums are only compared once both are done.
        first_child_leaf = leaves_count - leaves_count * helper_leaves_share_ppm // 1_000_000
        wait_for_child = _hashes_started(given_hex, raw, amounts_units, first_child_leaf)
        try:
            accounts_raw = [raw[i : i + _account_bytes] for i in range(0, len(raw), _account_bytes)]
            index_by_account = dict(zip(accounts_raw, range(leaves_count), strict=True))
            if len(index_by_account) != leaves_count:
                _raise_duplicate(accounts_raw, accounts)
            leaves = _leaf_hashes(accounts_raw[:first_child_leaf], amounts_units[:first_child_leaf])
        finally:
            checksummed_hex, child_leaves = wait_for_child()
        leaves.extend(child_leaves)
        if checksummed_hex != given_hex:
            _check_mismatches_are_single_case(accounts, given_hex, checksummed_hex)

        sorted_leaves = sorted(leaves)
        tree: list[bytes] = [b""] * (leaves_count - 1)
        tree.extend(reversed(sorted_leaves))
        _fill_internal_nodes(tree, leaves_count)

        self = object.__new__(cls)
        self._amounts_units = amounts_units
        self._checksummed_hex = checksummed_hex
        self._index_by_account = index_by_account
        self._leaves = leaves
        self._sorted_leaves = sorted_leaves
        self._tree = tree
        return self

    @classmethod
    def from_amounts(cls, amounts_units_by_account: Mapping[str, int]) -> "MerkleTree":
        """Build the tree from a mapping of account to cumulative amount."""
        return cls.build(list(amounts_units_by_account), list(amounts_units_by_account.values()))

    @classmethod
    def load(cls, data: Mapping[str, Any]) -> "MerkleTree":
        """Rebuild a tree from `dump()` output (ours or OpenZeppelin's) and check every stored node."""
        if data.get("format") != DUMP_FORMAT:
            raise MerkleTreeError(f"unknown dump format `{data.get('format')}`; expected `{DUMP_FORMAT}`")
        if tuple(data.get("leafEncoding", ())) != LEAF_ENCODING:
            raise MerkleTreeError(f"leaf encoding `{data.get('leafEncoding')}` is not {list(LEAF_ENCODING)}")
        values = data["values"]
        accounts = [entry["value"][0] for entry in values]
        amounts_units = [_parse_amount(entry["value"][1], i, accounts[i]) for i, entry in enumerate(values)]
        tree = cls.build(accounts, amounts_units)
        if [_to_bytes32(node) for node in data["tree"]] != tree._tree:
            raise MerkleTreeError("the dumped nodes differ from the tree rebuilt from its values")
        for i, entry in enumerate(values):
            if entry["treeIndex"] != tree._tree_index(i):
                raise MerkleTreeError(f"treeIndex {entry['treeIndex']} is wrong", accounts[i], i)
        return tree

    def __len__(self) -> int:
        return len(self._leaves)

    @property
    def root(self) -> bytes:
        """The 32-byte root to propose on-chain."""
        return self._tree[0]

    @property
    def root_hex(self) -> str:
        return "0x" + self._tree[0].hex()

    def account_at(self, value_index: int) -> str:
        """The checksummed account of the `value_index`-th leaf, in the order the leaves were given."""
        start = value_index * 40
        return "0x" + self._checksummed_hex[start : start + 40].decode("ascii")

    @property
    def total_amount_units(self) -> int:
        """The sum of every leaf's cumulative amount: the `totalCumulative` to propose with the root."""
        return sum(self._amounts_units)

    def items(self) -> Iterator[tuple[str, int]]:
        """`(checksummed account, cumulative amount)` for every leaf, in the order they were given."""
        for i, amount in enumerate(self._amounts_units):
            yield self.account_at(i), amount

    def amount_units(self, account: str) -> int:
        """The cumulative amount of `account` in this tree."""
        return self._amounts_units[self._value_index(account)]

    def proof(self, account: str) -> list[bytes]:
        """The sibling path from `account`'s leaf to the root, leaf side first."""
        tree_index = self._tree_index(self._value_index(account))
        proof = []
        while tree_index > 0:
            # The sibling of an odd (left) child is the next node, of an even (right) child the previous.
            proof.append(self._tree[tree_index + 1 if tree_index % 2 else tree_index - 1])
            tree_index = (tree_index - 1) // 2
        return proof

    def proof_hex(self, account: str) -> list[str]:
        return ["0x" + node.hex() for node in self.proof(account)]

    def dump(self) -> dict[str, Any]:
        """The tree in `@openzeppelin/merkle-tree`'s `dump()` format; amounts as decimal strings."""
        return {
            "format": DUMP_FORMAT,
            "leafEncoding": list(LEAF_ENCODING),
            "tree": ["0x" + node.hex() for node in self._tree],
            "values": [
                {"value": [self.account_at(i), str(amount)], "treeIndex": self._tree_index(i)}
                for i, amount in enumerate(self._amounts_units)
            ],
        }

    def _value_index(self, account: str) -> int:
        raw, _ = _parse_accounts([account])
        try:
            return self._index_by_account[raw]
        except KeyError:
            raise MerkleTreeError("account is not a leaf of this tree", account) from None

    def _tree_index(self, value_index: int) -> int:
        # Leaves sit in descending hash order at the end of the array.
        position = bisect_left(self._sorted_leaves, self._leaves[value_index])
        return len(self._tree) - 1 - position


def _fill_internal_nodes(tree: list[bytes], leaves_count: int) -> None:
    # Nodes hi//2.. hi have all their children past hi, so each such range is one comprehension over
    # already-computed children: a whole level at a time instead of one indexed step per node.
    k = keccak_256
    last = leaves_count - 2
    while last >= 0:
        first = (last + 1) // 2
        children = tree[2 * first + 1 : 2 * last + 3]
        tree[first : last + 1] = [
            k(a + b).digest() if a < b else k(b + a).digest()
            for a, b in zip(children[0::2], children[1::2], strict=True)
        ]
        last = first - 1


def _check_amounts(amounts_units: Sequence[int]) -> None:
    if (
        all(type(m) is int for m in amounts_units)
        and min(amounts_units) >= 0
        and (max(amounts_units) <= amount_units_max)
    ):
        return
    for i, m in enumerate(amounts_units):
        if type(m) is not int:
            raise MerkleTreeError(f"amount `{m!r}` is a {type(m).__name__}, not an int of minor units", index=i)
        if not 0 <= m <= amount_units_max:
            raise MerkleTreeError(f"amount `{m}` is outside [0, 2**256)", index=i)
    raise AssertionError("unreachable: a bad amount was detected but not found")


def _parse_accounts(accounts: Sequence[str]) -> tuple[bytes, bytes]:
    """Validate accounts in bulk; return their concatenated 20-byte values and checksummed hex bodies."""
    raw, given = _parse_account_format(accounts)
    checksummed = _checksum_bodies(given)
    if checksummed != given:
        _check_mismatches_are_single_case(accounts, given, checksummed)
    return raw, checksummed


def _parse_account_format(accounts: Sequence[str]) -> tuple[bytes, bytes]:
    """Check that every account is `0x` + 40 hex digits; return the 20-byte values and hex bodies, joined."""
    count = len(accounts)
    if not (all(type(a) is str for a in accounts) and set(map(len, accounts)) == {_account_chars}):
        _raise_first_bad_account(accounts)
    joined = "".join(accounts)
    if not (
        joined[0::_account_chars] == "0" * count
        and joined[1::_account_chars] == "x" * count
        and joined.count("x") == count
    ):
        _raise_first_bad_account(accounts)
    # Every "x" is a prefix's (checked just above), so this removes exactly the prefixes.
    body = joined.replace("0x", "")
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        raw = b""
    if len(raw) != _account_bytes * count:  # fromhex skips whitespace, so a length check is needed
        _raise_first_bad_account(accounts)
    return raw, body.encode("ascii")


def _hashes_started(
    given: bytes, raw: bytes, amounts_units: list[int], first_leaf: int
) -> Callable[[], tuple[bytes, list[bytes]]]:
    """Start hashing in a helper process; return the function that waits for and returns its results.

    The helper (`settlement/onchain/tree_hashing.py` run as a script) computes `checksum_bodies(given)` and the
    hashes of leaves `first_leaf..`. It is a new interpreter, not a fork: DuckDB, polars and pyarrow run
    threads in this process, and a forked copy would hold their locks in whatever state they were. Below
    `helper_leaves_min`, if the helper cannot start or fails, or if it outlives `helper_wait_s_max` (it is
    killed then), the same work is done here instead.
    """
    leaves_count = len(amounts_units)

    def compute() -> tuple[bytes, list[bytes]]:
        accounts_raw = [raw[i * _account_bytes : (i + 1) * _account_bytes] for i in range(first_leaf, leaves_count)]
        return _checksum_bodies(given), _leaf_hashes(accounts_raw, amounts_units[first_leaf:])

    if leaves_count < helper_leaves_min:
        return compute
    request = tree_hashing.request(given, raw[first_leaf * _account_bytes :], amounts_units[first_leaf:])
    try:
        helper = subprocess.Popen(_helper_command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    except OSError as error:
        log.warning(f"merkle: the hashing helper process did not start ({error}); hashing here on one core")
        return compute
    answer: dict[str, bytes] = {}

    def exchange() -> None:
        # The helper reads all of its input before it writes, so one thread feeds it, then reads it; a killed
        # helper ends this with a broken pipe or an end of file.
        try:
            helper.stdin.write(request)
            helper.stdin.close()
            answer["out"] = helper.stdout.read()
        except OSError:
            pass

    exchanging = threading.Thread(target=exchange, name="merkle-helper-io", daemon=True)
    exchanging.start()
    expected_bytes = len(given) + _word_bytes * (leaves_count - first_leaf)

    def wait() -> tuple[bytes, list[bytes]]:
        exchanging.join(helper_wait_s_max)
        if exchanging.is_alive():
            helper.kill()
            exchanging.join()
            helper.wait()
            log.warning(
                f"merkle: the hashing helper process did not finish within {helper_wait_s_max:g} s "
                "(helper_wait_s_max); killed it and hashed its share here instead"
            )
            return compute()
        returncode = helper.wait()
        out = answer.get("out", b"")
        if returncode != 0 or len(out) != expected_bytes:
            log.warning(f"merkle: the hashing helper process failed (exit {returncode}); hashed its share here")
            return compute()
        joined = out[len(given) :]
        return out[: len(given)], [joined[i : i + _word_bytes] for i in range(0, len(joined), _word_bytes)]

    return wait


def _check_mismatches_are_single_case(accounts: Sequence[str], given: bytes, checksummed: bytes) -> None:
    # An all-lowercase or all-uppercase address carries no checksum (EIP-55), so it is accepted as is;
    # a mixed-case one is a checksum the writer meant, and a mismatch there is a typo.
    if given in (given.lower(), given.upper()):
        return
    for i in range(len(accounts)):
        body = given[i * 40 : i * 40 + 40]
        if body != checksummed[i * 40 : i * 40 + 40] and body not in (body.lower(), body.upper()):
            expected = "0x" + checksummed[i * 40 : i * 40 + 40].decode("ascii")
            raise MerkleTreeError(f"bad EIP-55 checksum; did you mean `{expected}`?", accounts[i], i)


def _raise_first_bad_account(accounts: Sequence[str]) -> None:
    for i, account in enumerate(accounts):
        ok = type(account) is str and len(account) == _account_chars and account.startswith("0x")
        if ok:
            body = account[2:]
            ok = body.isascii() and all(c in "0123456789abcdefABCDEF" for c in body)
        if not ok:
            raise MerkleTreeError("not an address: expected `0x` and 40 hex digits", account, i)
    raise AssertionError("unreachable: a bad account was detected but not found")


def _raise_duplicate(accounts_raw: Sequence[bytes], accounts: Sequence[str]) -> None:
    first_index: dict[bytes, int] = {}
    for i, raw in enumerate(accounts_raw):
        if raw in first_index:
            raise MerkleTreeError(
                f"account repeats leaf {first_index[raw]}; sum the contributors sharing an address first",
                accounts[i],
                i,
            )
        first_index[raw] = i
    raise AssertionError("unreachable: a duplicate was detected but not found")


def _parse_amount(value: object, index: int, account: object) -> int:
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isascii() and value.isdecimal():
        return int(value)
    raise MerkleTreeError(f"amount `{value!r}` is neither an int nor a decimal string", account, index)


def _to_bytes32(value: bytes | str) -> bytes:
    if isinstance(value, str):
        if not value.startswith("0x"):
            raise MerkleTreeError(f"`{value}` is not 0x-prefixed hex")
        try:
            value = bytes.fromhex(value[2:])
        except ValueError:
            raise MerkleTreeError(f"`{value}` is not 0x-prefixed hex") from None
    if len(value) != 32:
        raise MerkleTreeError(f"expected 32 bytes, got {len(value)}")
    return bytes(value)
