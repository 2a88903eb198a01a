"""The column-wise paths a million-holder epoch takes (issue 17, session 10) against the plain row-wise rules they
replaced, as properties on small frames: the same leaves, digest, credits, postings and stored leaf rows.

Each reference below is the code the fast path replaced, written out: hash group-bys then a sort, a dict of leaves
and its digest line by line, a sort on both posting keys, a tuple per leaf.
"""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from settlement.engine.holders import _summed_by_recipient, own_address_column
from settlement.engine.postings import _with_entries
from settlement.onchain.merkle import MerkleTree
from settlement.onchain.payout_tree import address_leaves, build_epoch_tree, ledger_digest
from settlement.onchain.settle import _accounts_column, _tree_index_column
from tests.conftest import depth

_addresses = [f"0x{n:040x}" for n in (1, 2, 0xABCDEF, 2**159 + 7, 2**160 - 1)]
# The same address in other cases (contributors sharing an address are summed case-insensitively), and ids.
_payout = st.one_of(
    st.none(), st.sampled_from(_addresses), st.sampled_from(_addresses).map(str.upper).map(lambda a: "0x" + a[2:])
)
_payable = st.tuples(
    st.sampled_from(["c1", "c2", "c3", "c4", _addresses[0]]), st.integers(1, 4), st.integers(0, 10**15), _payout
)


def _reference_leaves(payables: pl.DataFrame) -> tuple[dict[str, int], int]:
    """`address_leaves` as it was: the address carried back per recipient, a hash group-by, sorted after."""
    rows = (
        payables.sort(["recipient", "epoch"])
        .with_columns(
            address=pl.col("payout_address").str.to_lowercase().fill_null(strategy="backward").over("recipient")
        )
        .filter(pl.col("amount_micros") > 0)
    )
    unaddressed = int(rows.filter(pl.col("address").is_null())["amount_micros"].sum() or 0)
    sums = (
        rows.filter(pl.col("address").is_not_null())
        .group_by("address")
        .agg(pl.col("amount_micros").cast(pl.Int128).sum().alias("units"))
        .sort("address")
    )
    return dict(zip(sums["address"].to_list(), map(int, sums["units"]), strict=True)), unaddressed


@settings(max_examples=depth(150, 1500), deadline=None)
@given(rows=st.lists(_payable, max_size=25, unique_by=lambda row: (row[0], row[1])))
def test_the_tree_from_address_sums_is_the_tree_and_digest_of_the_leaves_summed_row_by_row(rows: list) -> None:
    """With or without addresses missing (carried back from a later epoch), shared in other cases, zero growth:
    the same checksummed leaves, unaddressed units, root and settlement-v1 digest as the dict of leaves."""
    payables = pl.DataFrame(
        rows,
        schema={"recipient": pl.String, "epoch": pl.Int64, "amount_micros": pl.Int64, "payout_address": pl.String},
        orient="row",
    )
    expected, expected_unaddressed = _reference_leaves(payables)
    leaves, unaddressed = address_leaves(payables)
    assert {a.lower(): units for a, units in leaves.items()} == expected and unaddressed == expected_unaddressed
    tree = build_epoch_tree(3, 41, payables)
    if not expected:
        assert tree is None
        return
    assert tree is not None and tree.unaddressed_units == expected_unaddressed
    assert tree.root == MerkleTree.from_amounts(leaves).root
    assert tree.ledger_digest == ledger_digest(3, 41, leaves)
    # The stored leaf rows, by column, are what the tree's items and indexes say, leaf by leaf.
    assert _accounts_column(tree.tree).to_pylist() == [account for account, _ in tree.tree.items()]
    assert _tree_index_column(tree.tree).to_pylist() == [tree.tree.tree_index(a) for a, _ in tree.tree.items()]


_credit = st.tuples(st.sampled_from(["a", "b", "c", "0xA", "0xb", "zz"]), st.integers(-(10**20), 10**20))


@settings(max_examples=depth(150, 1500), deadline=None)
@given(kept=st.lists(_credit, max_size=8), received=st.lists(_credit, max_size=12))
def test_credits_summed_over_sorted_runs_are_the_hash_group_by_sorted(kept: list, received: list) -> None:
    """The holders' credits merged with the other recipients' (a holder may also be a contributor id): summed per
    recipient over sorted runs, exactly as a group-by then a sort; a recipient credited a holder's part is marked
    paid at its own address."""
    schema = {"recipient": pl.String, "amount_micros": pl.Int128}
    rows = pl.concat(
        [
            pl.DataFrame(kept, schema=schema, orient="row").with_columns(pl.lit(False).alias(own_address_column)),
            pl.DataFrame(received, schema=schema, orient="row").with_columns(pl.lit(True).alias(own_address_column)),
        ]
    )
    expected = (
        rows.group_by("recipient")
        .agg(pl.col("amount_micros").sum(), pl.col(own_address_column).any())
        .sort("recipient")
    )
    assert _summed_by_recipient(rows).equals(expected)


_posting = st.tuples(
    st.sampled_from(["e1:billing", "e1:pool:p", "e1:cut:x", "e1:suspense"]),
    st.sampled_from(["model:m", "payer:p", "contributor:c", "suspense"]),
    st.integers(-99, 99),
)


@settings(max_examples=depth(150, 1500), deadline=None)
@given(
    postings=st.lists(_posting, max_size=12, unique_by=lambda row: row[:2]),
    entries=st.dictionaries(
        st.sampled_from(["e1:holders:0xA", "e1:holders:0xb", "e1:holders:0xc"]),
        st.dictionaries(
            st.sampled_from(["contributor:0x2", "contributor:0x1", "contributor:holders:0xA", "holders-dust:0xA"]),
            st.integers(-99, 99),
            min_size=1,
        ),
        max_size=3,
    ),
)
def test_holders_entries_sliced_into_the_sorted_postings_are_the_postings_sorted_on_both_keys(
    postings: list, entries: dict
) -> None:
    """The holders' entries (one row per account each) placed where their ids sort are the same rows, in the
    same order, as every posting sorted by entry and account."""
    columns = {"entry_id": pl.String, "account": pl.String, "amount_micros": pl.Int128}
    grouped = pl.DataFrame(postings, schema=columns, orient="row").sort(["entry_id", "account"])
    rows = [(entry, account, amount) for entry, accounts in entries.items() for account, amount in accounts.items()]
    extra = pl.DataFrame(rows, schema=columns, orient="row")
    if extra.is_empty():
        return
    expected = pl.concat([grouped, extra]).sort(["entry_id", "account"])
    assert _with_entries(1, grouped, extra).equals(expected)


_key = st.sampled_from(["a", "b", "c", "0xA", "0xa"])


@settings(max_examples=depth(150, 1500), deadline=None)
@given(
    left=st.lists(_key, max_size=10, unique=True),
    right=st.lists(st.tuples(st.one_of(_key, st.none()), st.one_of(st.none(), st.integers(0, 9))), max_size=8),
)
def test_a_left_join_by_binary_search_is_the_hash_join(left: list, right: list) -> None:
    """Payables find their prior totals and addresses by a binary search of the sorted right side: the same rows
    as the hash join, whether a right key repeats or is missing (then the hash join itself)."""
    from settlement.engine.postings import _left_join_unique

    lefts = pl.DataFrame(
        {"recipient": left, "amount_micros": list(range(len(left)))}, schema_overrides={"recipient": pl.String}
    )
    rights = pl.DataFrame(right, schema={"recipient": pl.String, "payout": pl.Int64}, orient="row")
    expected = lefts.join(rights, on="recipient", how="left").sort("recipient", "payout", nulls_last=True)
    assert _left_join_unique(lefts, rights, "recipient").sort("recipient", "payout", nulls_last=True).equals(expected)


@settings(max_examples=depth(100, 1000), deadline=None)
@given(
    total=st.integers(-(10**13), 10**13),
    weights=st.dictionaries(st.sampled_from(["0xA", "0xb", "c", "d", "e"]), st.integers(1, 10**40), min_size=1),
)
def test_weights_read_as_columns_allocate_as_the_same_pairs(total: int, weights: dict) -> None:
    """The ledger hands the holders' weights to the allocation as two columns (`WeightColumns`): the same parts as
    the (holder, weight) pairs, in or out of holder order, and the same pairs to whoever iterates them."""
    from settlement.engine.allocation import WeightColumns, allocate_by_weight

    pairs = list(weights.items())
    columns = WeightColumns([holder for holder, _ in pairs], [weight for _, weight in pairs])
    assert list(columns) == pairs and len(columns) == len(pairs)
    assert allocate_by_weight(total, columns) == allocate_by_weight(total, pairs)


def _largest_remainders_by_sorting_them(remainders: list[int], left: int) -> list[int]:
    """The rule as it was: one stable sort of every remainder, largest first (equal ones keep index order)."""
    return sorted(sorted(range(len(remainders)), key=remainders.__getitem__, reverse=True)[:left])


@settings(max_examples=depth(200, 2000), deadline=None)
@given(
    bits=st.integers(1, 200),
    data=st.data(),
)
def test_the_largest_remainders_found_by_their_top_bits_are_those_of_the_full_sort(bits: int, data) -> None:
    """`largest_remainders` sorts the remainders' top 62 bits in polars and compares exactly only those sharing the
    last key taken: the same indexes as sorting every remainder as a Python integer; with
    remainders far past 62 bits, equal top bits, equal remainders and every count left."""
    from settlement.engine.allocation import largest_remainders

    whole = data.draw(st.integers(2 ** (bits - 1), 2**bits))
    base = data.draw(st.integers(0, whole - 1))
    # Remainders near one another (same top bits, differing low bits), repeated ones, and anywhere below `whole`.
    near = st.integers(max(0, base - 3), min(whole - 1, base + 3))
    remainders = data.draw(st.lists(st.one_of(near, st.integers(0, whole - 1)), min_size=1, max_size=60))
    left = data.draw(st.integers(0, len(remainders)))
    assert largest_remainders(remainders, whole, left) == _largest_remainders_by_sorting_them(remainders, left)


@settings(max_examples=depth(200, 2000), deadline=None)
@given(
    total=st.one_of(st.integers(-(10**13), 10**13), st.integers(-(2**126), 2**126)),
    weights=st.dictionaries(
        st.text("0123456789abcdef", min_size=1, max_size=4),
        st.one_of(st.integers(1, 4), st.integers(1, 10**6), st.integers(1, 2**100), st.integers(2**120, 2**127 - 1)),
        min_size=1,
        max_size=40,
    ),
    shuffled=st.randoms(use_true_random=False),
)
def test_an_allocation_in_int128_is_the_allocation_in_python_integers(total: int, weights: dict, shuffled) -> None:
    """`allocate_by_weight_frame` allocates weights held as a frame in polars' Int128 when every product and the sum
    stay below 2**127, and in Python integers otherwise (products past Int128, weights out of recipient order): the
    same parts as `allocate_by_weight` either way, in recipient order, equal remainders (small weights) included."""
    from settlement.engine.allocation import WeightColumns, allocate_by_weight, allocate_by_weight_frame

    pairs = list(weights.items())
    if shuffled.random() < 0.7:  # mostly in recipient order, as the ledger reads them
        pairs.sort()
    else:
        shuffled.shuffle(pairs)
    frame = pl.DataFrame(pairs, schema={"recipient": pl.String, "weight": pl.Int128}, orient="row")
    allocated = allocate_by_weight_frame(total, WeightColumns.of_frame(frame))
    assert allocated.schema == {"recipient": pl.String, "amount_micros": pl.Int128}
    assert list(allocated.iter_rows()) == allocate_by_weight(total, pairs)


@settings(max_examples=depth(60, 600), deadline=None)
@given(total=st.integers(-50, 50), weights=st.lists(st.integers(1, 3), min_size=1, max_size=12))
def test_an_allocation_in_int128_gives_equal_remainders_to_the_smaller_recipients(total: int, weights: list) -> None:
    """Small weights make many remainders equal at the last unit given: the Int128 path gives those units to the
    recipients first in order, as the Python integers' path does."""
    from settlement.engine.allocation import WeightColumns, allocate_by_weight, allocate_by_weight_frame

    pairs = [(f"r{index:02d}", weight) for index, weight in enumerate(weights)]
    frame = pl.DataFrame(pairs, schema={"recipient": pl.String, "weight": pl.Int128}, orient="row")
    assert list(allocate_by_weight_frame(total, WeightColumns.of_frame(frame)).iter_rows()) == allocate_by_weight(
        total, pairs
    )


def test_an_allocation_in_int128_is_taken_only_where_it_cannot_wrap(monkeypatch) -> None:
    """Products just below 2**127 are allocated in Int128 and give the Python integers' parts; one unit past, the
    Python path takes them (a wrapped Int128 product would give parts that do not sum to the total)."""
    from settlement.engine import allocation

    taken: list[bool] = []
    exact = allocation._allocated_in_int128

    def counted(total: int, frame: pl.DataFrame) -> pl.DataFrame | None:
        result = exact(total, frame)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(allocation, "_allocated_in_int128", counted)
    frame = pl.DataFrame({"recipient": ["a", "b"], "weight": pl.Series([2**62, 2**62 + 1], dtype=pl.Int128)})
    weights = allocation.WeightColumns.of_frame(frame)
    for total in (2**64 - 1, 2**65):  # (2**62 + 1) * (2**64 - 1) < 2**127 <= (2**62 + 1) * 2**65
        parts = allocation.allocate_by_weight_frame(total, weights)
        assert list(parts.iter_rows()) == allocation.allocate_by_weight(total, list(weights))
    assert taken == [True, False]


@settings(max_examples=depth(150, 1500), deadline=None)
@given(
    credits=st.dictionaries(_key, st.tuples(st.integers(-(10**6), 10**6), st.booleans()), max_size=6),
    registered=st.dictionaries(_key, st.one_of(st.none(), st.sampled_from(["0xPAY", "0xOTHER"])), max_size=4),
)
def test_holders_are_paid_at_their_own_address_unless_the_registry_names_one(
    credits: dict, registered: dict
) -> None:
    """A recipient credited a holder's part (`own_address_column`) is paid at its own id, one the registry names
    (a holder that is also a contributor) at the registry's address, even none, and any other at the registry's
    address or none: as joining the registry's addresses and the holders' own ones beside them."""
    from settlement.engine.postings import build_payables

    rows = [(recipient, amount, own) for recipient, (amount, own) in sorted(credits.items())]
    frame = pl.DataFrame(
        rows, schema={"recipient": pl.String, "amount_micros": pl.Int128, own_address_column: pl.Boolean}, orient="row"
    )
    addresses = pl.DataFrame(
        list(registered.items()), schema={"contributor_id": pl.String, "payout_address": pl.String}, orient="row"
    )
    prior = pl.DataFrame(schema={"recipient": pl.String, "earned_micros": pl.Int64, "cumulative_micros": pl.Int64})
    payables = build_payables(1, frame, prior, addresses)
    expected = {
        recipient: registered.get(recipient, recipient if own else None)
        for recipient, amount, own in rows
        if amount
    }
    assert dict(payables.select("recipient", "payout_address").iter_rows()) == expected
    assert payables["recipient"].to_list() == sorted(expected)
