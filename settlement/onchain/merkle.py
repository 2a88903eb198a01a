"""Cumulative payout Merkle tree, byte for byte OpenZeppelin's `StandardMerkleTree`.

Each leaf is `(address account, uint256 cumulative_amount_units)`, hashed as
`keccak256(keccak256(abi.encode(account, amount)))`; pairs are hashed sorted; leaves are sorted by hash
and laid out, with the internal nodes, in one array as a complete binary tree (`tree[0]` is the root,
the children of `i` are `2i+1` and `2i+2`, the smallest leaf hash is last). This is what
`StandardMerkleTree.of(values, ["address", "uint256"])` of `@openzeppelin/merkle-tree` builds, so its
root, proofs and `dump()` are interchangeable with ours and verify with OpenZeppelin's `MerkleProof`.

A million leaves is about four million Keccak-256 calls (two per leaf, one per internal node, one per
address checksum). `settlement.onchain._merkle_native` (a C extension built by `setup.py`) does the whole
build: it checks the leaves, hashes them with vendored Keccak code (XKCP's four permutations at once in 256-bit
lanes, by AVX-512VL where the CPU has it, else AVX2; PQClean's portable code without AVX2;
`settlement/onchain/vendor/README.md`), sorts them and hashes
every internal node, on up to `hashing_threads_max` threads that run without the GIL; no process is started
or forked (DuckDB, polars and pyarrow threads run in this process). Where the extension could not be built
(no C compiler) the same tree is built here in Python through `safe-pysha3`, on one core and several times
slower; CI requires the extension (`tests/test_native_built.py`).
"""

import logging
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NoReturn

import pyarrow as pa
from sha3 import keccak_256

from settlement.onchain.exceptions import MerkleTreeError
from settlement.onchain.tree_hashing import checksum_bodies as _checksum_bodies
from settlement.onchain.tree_hashing import leaf_hashes as _leaf_hashes

try:
    from settlement.onchain import _merkle_native
except ImportError:  # no C compiler at install time: the Python build below, same tree
    _merkle_native = None

log = logging.getLogger("royalty.settlement")
_python_build_logged = False

DUMP_FORMAT = "standard-v1"
LEAF_ENCODING = ("address", "uint256")

# 2**24 leaves (~16.7M payees) take over a minute and several GiB to build here; a larger epoch is a
# bug upstream (or needs a sharded tree), not something to grind through.
leaves_count_max = 2**24
amount_units_max = 2**256 - 1
# The native build hashes on this many threads at most (and no more than this process may run on); each
# thread takes at least 4,096 leaves or nodes of a step, so a small tree is built on one.
hashing_threads_max = 8
# The native build's `keccak` argument: the fastest Keccak code the CPU runs (0 portable, 1 AVX2, 2 AVX-512VL).
keccak_best = 2

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
        "_tree_bytes",
        "_tree_index_by_value",
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
        accounts_list = list(accounts)
        amounts_units = list(cumulative_amounts_units)
        build_parts = _build_python if _merkle_native is None else _build_native
        tree_bytes, checksummed_hex, tree_index_by_value, index_by_account = build_parts(accounts_list, amounts_units)

        self = object.__new__(cls)
        self._amounts_units = amounts_units
        self._checksummed_hex = checksummed_hex
        self._index_by_account = index_by_account
        self._tree_bytes = tree_bytes
        self._tree_index_by_value = tree_index_by_value
        return self

    @classmethod
    def build_columns(cls, accounts: pa.Array, cumulative_amounts_units: pa.Array) -> "MerkleTree":
        """`build` from Arrow columns: `accounts` strings (no nulls), `cumulative_amounts_units` int64 (no nulls).

        The native build reads the columns' buffers, with no str or int per leaf (at a million leaves the lists cost
        a quarter of a second to make, hold 120 MB and take as long again to convert back for `settle`'s leaf rows);
        the tree keeps the amounts' buffer. The same tree and the same refusals as `build` of the columns' values.
        """
        leaves_count = len(accounts)
        if leaves_count != len(cumulative_amounts_units):
            raise MerkleTreeError(
                f"{leaves_count} accounts but {len(cumulative_amounts_units)} amounts; pass one amount per account"
            )
        native = _merkle_native is not None and 0 < leaves_count <= leaves_count_max
        if not native or accounts.null_count or cumulative_amounts_units.null_count:  # `build` names the problem
            return cls.build(accounts.to_pylist(), cumulative_amounts_units.to_pylist())
        accounts = accounts.cast(pa.large_string())
        amounts = cumulative_amounts_units.cast(pa.int64())
        offsets_view = _int64_view(accounts.buffers()[1], accounts.offset, leaves_count + 1)
        amounts_view = _int64_view(amounts.buffers()[1], amounts.offset, leaves_count)
        try:
            tree_bytes, checksummed_hex, tree_index, index = _merkle_native.build_columns(
                offsets_view, accounts.buffers()[2], amounts_view, _hashing_threads(), secrets.randbits(64), keccak_best
            )
        except _merkle_native.LeafError:
            return cls.build(accounts.to_pylist(), amounts.to_pylist())  # raises the same error, naming the leaf
        self = object.__new__(cls)
        self._amounts_units = amounts_view.cast("q")
        self._checksummed_hex = checksummed_hex
        self._index_by_account = index
        self._tree_bytes = tree_bytes
        self._tree_index_by_value = memoryview(tree_index).cast("I")
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
        if b"".join([_to_bytes32(node) for node in data["tree"]]) != tree._tree_bytes:
            raise MerkleTreeError("the dumped nodes differ from the tree rebuilt from its values")
        for i, entry in enumerate(values):
            if entry["treeIndex"] != tree._tree_index(i):
                raise MerkleTreeError(f"treeIndex {entry['treeIndex']} is wrong", accounts[i], i)
        return tree

    def __len__(self) -> int:
        return len(self._amounts_units)

    @property
    def root(self) -> bytes:
        """The 32-byte root to propose on-chain."""
        return self._node(0)

    @property
    def root_hex(self) -> str:
        return "0x" + self._node(0).hex()

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
        hexes = self._checksummed_hex.decode("ascii")  # decoded once, not per leaf (seconds at 1M leaves)
        return zip(("0x" + hexes[i : i + 40] for i in range(0, len(hexes), 40)), self._amounts_units, strict=True)

    @property
    def checksummed_bodies(self) -> bytes:
        """Every leaf's checksummed account without its `0x`, 40 ASCII hex digits each, joined, in the order the
        leaves were given (what `items()` reads; `settle` writes the leaves from it as a column)."""
        return self._checksummed_hex

    @property
    def amounts_units(self) -> Sequence[int]:
        """Every leaf's cumulative amount, in the order the leaves were given."""
        return self._amounts_units

    def amount_units(self, account: str) -> int:
        """The cumulative amount of `account` in this tree."""
        return self._amounts_units[self._value_index(account)]

    def proof(self, account: str) -> list[bytes]:
        """The sibling path from `account`'s leaf to the root, leaf side first."""
        return self._proof(account, as_hex=False)

    def proof_hex(self, account: str) -> list[str]:
        return self._proof(account, as_hex=True)

    def _proof(self, account: str, as_hex: bool) -> list:
        tree_index = self._tree_index(self._value_index(account))
        if _merkle_native is not None:
            return _merkle_native.proof(self._tree_bytes, tree_index, as_hex)
        proof = []
        while tree_index > 0:
            # The sibling of an odd (left) child is the next node, of an even (right) child the previous.
            proof.append(self._node(tree_index + 1 if tree_index % 2 else tree_index - 1))
            tree_index = (tree_index - 1) // 2
        return ["0x" + node.hex() for node in proof] if as_hex else proof

    @property
    def node_bytes(self) -> bytes:
        """Every node, 32 bytes each, in `dump()`'s order (the root first, the leaves last): what `settle` stores."""
        return self._tree_bytes

    def tree_index(self, account: str) -> int:
        """The position of `account`'s leaf among the nodes (`dump()`'s `treeIndex`)."""
        return self._tree_index(self._value_index(account))

    @property
    def tree_indexes(self) -> Sequence[int]:
        """Each leaf's position among the nodes, in the order the leaves were given."""
        return self._tree_index_by_value

    def dump_header(self) -> dict[str, Any]:
        """The keys of `dump()` before its node and value lists."""
        return {"format": DUMP_FORMAT, "leafEncoding": list(LEAF_ENCODING)}

    def dump(self) -> dict[str, Any]:
        """The tree in `@openzeppelin/merkle-tree`'s `dump()` format; amounts as decimal strings."""
        bodies = self._checksummed_hex.decode("ascii")
        return {
            **self.dump_header(),
            "tree": _nodes_hex(self._tree_bytes),
            "values": [
                {"value": ["0x" + bodies[i * 40 : i * 40 + 40], str(amount)], "treeIndex": tree_index}
                for i, (amount, tree_index) in enumerate(
                    zip(self._amounts_units, self._tree_index_by_value, strict=True)
                )
            ],
        }

    def _value_index(self, account: str) -> int:
        raw = _account_raw(account)
        value_index = None if raw is None else self._index_by_account.get(raw)
        if value_index is not None:
            body = account[2:]
            checksummed = self._checksummed_hex[value_index * 40 : value_index * 40 + 40].decode("ascii")
            if body == checksummed or body in (body.lower(), body.upper()):
                return value_index
        _parse_accounts([account])  # names a malformed address or a wrong checksum
        raise MerkleTreeError("account is not a leaf of this tree", account)

    def _tree_index(self, value_index: int) -> int:
        return self._tree_index_by_value[value_index]

    def _node(self, tree_index: int) -> bytes:
        return self._tree_bytes[tree_index * _word_bytes : (tree_index + 1) * _word_bytes]


# A built tree's parts: every node joined (the root first), the checksummed account bodies joined, each
# leaf's tree index in the order given, and a lookup from an account's 20 bytes to its position there.
_BuildParts = tuple[bytes, bytes, Sequence[int], Any]


def _int64_view(buffer: pa.Buffer, first: int, count: int) -> memoryview:
    """The bytes of `count` int64 values of an Arrow buffer from value `first` on (a sliced column's)."""
    return memoryview(buffer).cast("B")[first * 8 : (first + count) * 8]


def _hashing_threads() -> int:
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = os.cpu_count() or 1
    return max(1, min(usable_cpus, hashing_threads_max))


def _build_native(accounts: list[str], amounts_units: list[int]) -> _BuildParts:
    try:
        tree_bytes, checksummed_hex, tree_index, index = _merkle_native.build(
            accounts, amounts_units, _hashing_threads(), secrets.randbits(64), keccak_best
        )
    except _merkle_native.LeafError as error:
        _raise_leaf_error(accounts, amounts_units, *error.args)
    return tree_bytes, checksummed_hex, memoryview(tree_index).cast("I"), index


def _raise_leaf_error(accounts: list[str], amounts_units: list[int], kind: str, index: int, earlier: int) -> NoReturn:
    """The error the Python build raises for the same first offending leaf (the native build names it)."""
    if kind in ("amount_type", "amount_range"):
        _check_amounts(amounts_units[index : index + 1], first_index=index)
    elif kind == "account":
        _raise_first_bad_account(accounts[index : index + 1], first_index=index)
    elif kind == "duplicate":
        raise MerkleTreeError(_duplicate_message(earlier), accounts[index], index)
    elif kind == "checksum":
        given = accounts[index][2:].encode("ascii")
        _check_mismatches_are_single_case(accounts[index : index + 1], given, _checksum_bodies(given), index)
    raise MerkleTreeError(f"the native build refused leaf {index} ({kind}) but the check here passes it")


def _build_python(accounts: list[str], amounts_units: list[int]) -> _BuildParts:
    global _python_build_logged
    if not _python_build_logged:
        _python_build_logged = True
        log.warning(
            "merkle: the native tree build (settlement.onchain._merkle_native) is not built; building trees in "
            "Python, several times slower (install a C compiler, e.g. Debian's gcc, then reinstall the package)"
        )
    leaves_count = len(accounts)
    _check_amounts(amounts_units)
    raw, given_hex = _parse_account_format(accounts)
    accounts_raw = [raw[i : i + _account_bytes] for i in range(0, len(raw), _account_bytes)]
    index_by_account = dict(zip(accounts_raw, range(leaves_count), strict=True))
    if len(index_by_account) != leaves_count:
        _raise_duplicate(accounts_raw, accounts)
    checksummed_hex = _checksum_bodies(given_hex)
    if checksummed_hex != given_hex:
        _check_mismatches_are_single_case(accounts, given_hex, checksummed_hex)
    leaves = _leaf_hashes(accounts_raw, amounts_units)
    ascending = sorted(range(leaves_count), key=leaves.__getitem__)
    tree: list[bytes] = [b""] * (leaves_count - 1)
    tree.extend([leaves[i] for i in reversed(ascending)])
    _fill_internal_nodes(tree, leaves_count)
    # Leaves sit in descending hash order at the end of the array.
    last = len(tree) - 1
    tree_index_by_value = [0] * leaves_count
    for rank, value_index in enumerate(ascending):
        tree_index_by_value[value_index] = last - rank
    return b"".join(tree), checksummed_hex, tree_index_by_value, index_by_account


def _nodes_hex(tree_bytes: bytes) -> list[str]:
    digits = tree_bytes.hex()
    step = 2 * _word_bytes
    return ["0x" + digits[i : i + step] for i in range(0, len(digits), step)]


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


def proof_indexes(tree_index: int) -> list[int]:
    """The positions of the siblings from the node at `tree_index` up to the root, in a tree laid out as `dump()`'s."""
    indexes = []
    while tree_index > 0:
        # The sibling of an odd (left) child is the next node, of an even (right) child the previous.
        indexes.append(tree_index + 1 if tree_index % 2 else tree_index - 1)
        tree_index = (tree_index - 1) // 2
    return indexes


def _check_amounts(amounts_units: Sequence[int], first_index: int = 0) -> None:
    if (
        all(type(m) is int for m in amounts_units)
        and min(amounts_units) >= 0
        and (max(amounts_units) <= amount_units_max)
    ):
        return
    for i, m in enumerate(amounts_units, start=first_index):
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


def _check_mismatches_are_single_case(
    accounts: Sequence[str], given: bytes, checksummed: bytes, first_index: int = 0
) -> None:
    # An all-lowercase or all-uppercase address carries no checksum (EIP-55), so it is accepted as is;
    # a mixed-case one is a checksum the writer meant, and a mismatch there is a typo.
    if given in (given.lower(), given.upper()):
        return
    for i in range(len(accounts)):
        body = given[i * 40 : i * 40 + 40]
        if body != checksummed[i * 40 : i * 40 + 40] and body not in (body.lower(), body.upper()):
            expected = "0x" + checksummed[i * 40 : i * 40 + 40].decode("ascii")
            raise MerkleTreeError(f"bad EIP-55 checksum; did you mean `{expected}`?", accounts[i], first_index + i)


def _raise_first_bad_account(accounts: Sequence[str], first_index: int = 0) -> None:
    for i, account in enumerate(accounts, start=first_index):
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
            raise MerkleTreeError(_duplicate_message(first_index[raw]), accounts[i], i)
        first_index[raw] = i
    raise AssertionError("unreachable: a duplicate was detected but not found")


def _account_raw(account: object) -> bytes | None:
    """The 20 bytes of one `0x` + 40 hex digits address (its checksum unchecked), or None."""
    if type(account) is not str or len(account) != _account_chars or not account.startswith("0x"):
        return None
    try:
        raw = bytes.fromhex(account[2:])
    except ValueError:
        return None
    return raw if len(raw) == _account_bytes else None  # fromhex skips whitespace


def _duplicate_message(earlier_index: int) -> str:
    return f"account repeats leaf {earlier_index}; sum the contributors sharing an address first"


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
