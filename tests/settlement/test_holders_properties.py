"""Token-holder shares (issue 17), as properties: the time-weighted balances the ledger computes from Transfer
rows, the exact largest-remainder allocation over them, and whole epochs paying a `holders:<token>` recipient.

The balance queries run on an in-memory DuckDB database attached under the ledger's catalog name, holding
`holder_transfer` as the ledger declares it: the same SQL, without a DuckLake per example.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from fractions import Fraction

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.connection import catalog_alias
from ledger.tables import create_statements
from settlement import holders as holders_module
from settlement.engine.allocation import allocate_by_weight
from settlement.exceptions import HoldersBehindError
from settlement.holders import (
    balance_checkpoint,
    balances_at,
    epoch_blocks_table,
    holder_checkpoint_table,
    holder_sync_table,
    holder_transfer_schema,
    holder_transfer_table,
    holder_weights,
    zero_address,
)
from settlement.ledger_io import read_holder_weights
from tests.conftest import depth
from tests.settlement.split_world import contributors, run_epochs, worlds

chain_id = 31337
token = "0x" + "7e" * 20
holders = [f"0x{i:040x}" for i in range(1, 6)]


@pytest.fixture(scope="module")
def connection() -> Iterator[duckdb.DuckDBPyConnection]:
    database = duckdb.connect()
    database.execute(f"ATTACH ':memory:' AS {catalog_alias}")
    for statement in create_statements(catalog_alias, [holder_transfer_table, holder_checkpoint_table]):
        database.execute(statement)
    yield database
    database.close()


@st.composite
def transfer_logs(draw: st.DrawFn, blocks_max: int = 30) -> list[tuple[int, str, str, int]]:
    """(block, from, to, value) in chain order: mints from the zero address, transfers within balances, burns."""
    balances: dict[str, int] = {}
    logs = []
    for block in sorted(draw(st.lists(st.integers(0, blocks_max), min_size=1, max_size=25))):
        holder = draw(st.sampled_from(holders))
        kind = draw(st.sampled_from(["mint", "transfer", "burn"])) if balances.get(holder) else "mint"
        if kind == "mint":
            value = draw(st.integers(1, 10**30))
            logs.append((block, zero_address, holder, value))
        else:
            value = draw(st.integers(1, balances[holder]))
            target = zero_address if kind == "burn" else draw(st.sampled_from(holders))
            logs.append((block, holder, target, value))
            balances[holder] -= value
        balances[logs[-1][2]] = balances.get(logs[-1][2], 0) + value
    return logs


def _transfer_rows(logs: list) -> list[dict]:
    """`holder_transfer` rows of `logs` ((block, from, to, value) in chain order), one transaction per log."""
    return [
        {
            "chain_id": chain_id,
            "token": token,
            "block_number": block,
            "block_hash": f"0x{block:064x}",
            "tx_hash": f"0x{index:064x}",
            "log_index": index,
            "from_address": sender,
            "to_address": receiver,
            "value_units": str(value),
            "synced_at": datetime(2026, 1, 1, tzinfo=UTC),
        }
        for index, (block, sender, receiver, value) in enumerate(logs)
    ]


def _store(connection: duckdb.DuckDBPyConnection, logs: list, batches: int, seed: int) -> None:
    """Replace the table's rows by `logs`, inserted in `batches` batches in a shuffled order; no balance checkpoint
    (another test's would stand for these transfers: the module shares one connection)."""
    for table in (holder_transfer_table, holder_checkpoint_table):
        connection.execute(f"DELETE FROM {catalog_alias}.main.{table}")
    rows = _transfer_rows(logs)
    random.Random(seed).shuffle(rows)
    size = max(1, len(rows) // batches)
    for first in range(0, len(rows), size):
        batch = pa.Table.from_pylist(rows[first : first + size], schema=holder_transfer_schema)  # noqa: F841
        connection.execute(f"INSERT INTO {catalog_alias}.main.{holder_transfer_table} SELECT * FROM batch")


def _brute_force(logs: list, first: int, last: int) -> dict[str, int]:
    """Each holder's balance at the end of every block first..last, summed block by block."""
    weights: dict[str, int] = {}
    for block in range(first, last + 1):
        balance: dict[str, int] = {}
        for at, sender, receiver, value in logs:
            if at <= block:
                balance[sender] = balance.get(sender, 0) - value
                balance[receiver] = balance.get(receiver, 0) + value
        for holder, amount in balance.items():
            weights[holder] = weights.get(holder, 0) + amount
    return {h: w for h, w in weights.items() if h != zero_address and w > 0}


@settings(max_examples=depth(25, 300), deadline=None)
@given(
    logs=transfer_logs(),
    first=st.integers(0, 30),
    length=st.integers(0, 30),
    batches=st.integers(1, 5),
    seed=st.integers(0, 1000),
)
def test_time_weighted_balances_are_the_per_block_sums_whatever_the_batching(
    connection: duckdb.DuckDBPyConnection, logs: list, first: int, length: int, batches: int, seed: int
) -> None:
    """The one-aggregate weight equals the balance summed block by block over the range, and each balance
    at a block equals the running sum, however the rows were batched and ordered when stored."""
    _store(connection, logs, batches, seed)
    last = first + length
    weights = holder_weights(connection, chain_id, token, first, last, set())
    assert dict(zip(weights["holder"], map(int, weights["weight"]), strict=True)) == _brute_force(logs, first, last)
    at_last = _brute_force(logs, last, last)
    assert {h: b for h, b in balances_at(connection, chain_id, token, last).items() if b > 0} == at_last
    excluded = holder_weights(connection, chain_id, token, first, last, {holders[0]})
    assert holders[0] not in excluded["holder"].to_list()


def _sync_with_checkpoints(
    connection: duckdb.DuckDBPyConnection, logs: list, ends: list[int], due: int, stored_before_22: int = 0
) -> int:
    """Store `logs` as `sync-holders` does, range by range (ranges ending at `ends`), each with the balance
    checkpoint `balance_checkpoint` gives with `due` as `transfers_min`; return how many checkpoints were stored.
    The first `stored_before_22` ranges' checkpoints are stored without balance-blocks, as before ledger format 22."""
    for table in (holder_transfer_table, holder_checkpoint_table):
        connection.execute(f"DELETE FROM {catalog_alias}.main.{table}")
    start, stored = 0, 0
    for end in ends:
        pending = pa.Table.from_pylist(
            [row for row in _transfer_rows(logs) if start <= row["block_number"] <= end],
            schema=holder_transfer_schema,
        )
        checkpoint = balance_checkpoint(connection, chain_id, token, end, pending, transfers_min=due)
        connection.execute(f"INSERT INTO {catalog_alias}.main.{holder_transfer_table} SELECT * FROM pending")
        if checkpoint is not None:
            if ends.index(end) < stored_before_22:
                blank = pa.nulls(checkpoint.num_rows, pa.string())
                checkpoint = checkpoint.set_column(5, "balance_blocks_high", blank).set_column(
                    6, "balance_blocks_low", blank
                )
            connection.execute(f"INSERT INTO {catalog_alias}.main.{holder_checkpoint_table} SELECT * FROM checkpoint")
            stored += 1
        start = end + 1
    return stored


@settings(max_examples=depth(25, 300), deadline=None)
@given(
    logs=transfer_logs(),
    cuts=st.lists(st.integers(0, 30), max_size=6),
    due=st.integers(1, 6),
    first=st.integers(0, 30),
    length=st.integers(0, 30),
)
def test_balances_and_weights_read_over_checkpoints_equal_the_sums_over_every_transfer(
    connection: duckdb.DuckDBPyConnection, logs: list, cuts: list[int], due: int, first: int, length: int
) -> None:
    """The sync's balance checkpoints change no balance and no weight: read from the latest checkpoint and the
    transfers after it, they equal the balances summed block by block over every transfer (the simple reference),
    at and after each checkpoint's block, and the weights over any range (starting before, at or after a checkpoint)."""
    stored = _sync_with_checkpoints(connection, logs, [*sorted(set(cuts)), 60], due)
    assert stored >= (due == 1)  # the first range with a transfer is due its checkpoint
    for block in sorted({first, first + length, *cuts, *(cut + 1 for cut in cuts)}):
        assert {h: b for h, b in balances_at(connection, chain_id, token, block).items() if b > 0} == _brute_force(
            logs, block, block
        )
    last = first + length
    weights = holder_weights(connection, chain_id, token, first, last, set())
    assert dict(zip(weights["holder"], map(int, weights["weight"]), strict=True)) == _brute_force(logs, first, last)


def _difference_weights(
    connection: duckdb.DuckDBPyConnection, first: int, last: int, end: int, logs: list
) -> list[dict[str, int]]:
    """The weights over first..last as checkpoint `end`'s balance-blocks (carried on to `last`) less those of the
    latest checkpoint carrying them before `first`, whatever the row counts say; and, where no transfer came after
    `end` up to `last` nor before `first`, as `end`'s rows alone (carried on to `last`, and as stored when `last` is
    `end`)."""
    start = holders_module._checkpoint_before(connection, chain_id, token, first, balance_blocks=True)
    reads = [holders_module._balance_blocks_weights(end, start)]
    if start is None and not any(end < block <= last or block < first for block, *_ in logs):
        reads += [holders_module._balance_blocks_weights(end, None, True)]
        if last == end:  # the range ends at the checkpoint: its stored halves, as read
            halves = holders_module._stored_halves(end)
            reads += [f"SELECT holder, high::HUGEINT * {2**64}::HUGEINT + low::HUGEINT AS weight FROM ({halves})"]
    weights = []
    for read in reads:
        params = {"chain": chain_id, "token": token, "from_block": first, "to_block": last}
        rows = connection.execute(
            f"SELECT holder, weight::VARCHAR FROM ({read}) WHERE weight > 0", holders_module._used(params, read)
        ).fetchall()
        weights.append({holder: int(weight) for holder, weight in rows if holder != zero_address})
    return weights


@settings(max_examples=depth(40, 400), deadline=None)
@given(
    logs=transfer_logs(),
    cuts=st.lists(st.integers(0, 30), min_size=1, max_size=6),
    due=st.integers(1, 3),
    first=st.integers(0, 30),
    length=st.integers(0, 30),
    offset=st.sampled_from([0, 10**9]),
    scale=st.sampled_from([1, 2**16]),
    before_format_22=st.integers(0, 3),
)
def test_weights_as_a_difference_of_balance_blocks_equal_the_per_block_sums(
    connection: duckdb.DuckDBPyConnection,
    logs: list,
    cuts: list[int],
    due: int,
    first: int,
    length: int,
    offset: int,
    scale: int,
    before_format_22: int,
) -> None:
    """Each checkpoint's balance-blocks (summed from every transfer, carried on from the previous checkpoint, or
    summed afresh after checkpoints stored without them before format 22) give, as a difference, the per-block sums
    over any range: also at block numbers past 10**9 with values near 2**116, where a holder's balance-blocks since
    the first block pass HUGEINT (2**127) and only the weights fit; so do a checkpoint's rows alone, carried on past
    it, where no transfer came after it nor before the range. The read the row counts choose agrees."""
    logs = [(block + offset, sender, receiver, value * scale) for block, sender, receiver, value in logs]
    ends = [cut + offset for cut in sorted(set(cuts))]
    _sync_with_checkpoints(connection, logs, [*ends, 60 + offset], due, stored_before_22=before_format_22)
    first, last = first + offset, first + offset + length
    expected = _brute_force(logs, first, last)
    weights = holder_weights(connection, chain_id, token, first, last, set())
    assert dict(zip(weights["holder"], map(int, weights["weight"]), strict=True)) == expected
    (ends_with,) = connection.execute(
        f"SELECT list(DISTINCT block_number) FROM {catalog_alias}.main.{holder_checkpoint_table} "
        "WHERE balance_blocks_high IS NOT NULL"
    ).fetchone()
    ends_with = sorted(ends_with or [])
    for end in ends_with:  # each checkpoint with balance-blocks as the end of a range holding it
        # ranges starting at the drawn block, and at and after each earlier checkpoint's next block (`start` read)
        # ranges from the first block, the drawn one, and at and after each earlier checkpoint's next block (`start`
        # read); to the drawn block, or a few blocks past `end` (its balances carried on)
        starts = {offset, min(first, end), *(block + step for block in ends_with if block < end for step in (1, 2))}
        for start in sorted(block for block in starts if block <= end):
            for around in [(start, max(last, end)), (start, end + 3)]:
                expected = _brute_force(logs, *around)
                assert all(read == expected for read in _difference_weights(connection, *around, end, logs))


@settings(max_examples=depth(100, 1000), deadline=None)
@given(
    total=st.integers(-(10**13), 10**13),
    weights=st.dictionaries(st.sampled_from(holders + contributors), st.integers(1, 10**40), min_size=1),
    seed=st.integers(0, 1000),
)
def test_allocation_by_weight_sums_to_the_take_exactly_and_each_part_is_within_one_unit(
    total: int, weights: dict[str, int], seed: int
) -> None:
    """Conservation (the parts sum to the take exactly), each part within one unit of its exact fraction, and
    the same parts whatever order the holders come in."""
    pairs = sorted(weights.items())
    allocated = dict(allocate_by_weight(total, pairs))
    assert sum(allocated.values()) == total
    whole = sum(weights.values())
    for holder, weight in weights.items():
        assert abs(allocated[holder] - Fraction(total * weight, whole)) < 1
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    assert dict(allocate_by_weight(total, shuffled)) == allocated


@settings(max_examples=depth(100, 1000), deadline=None)
@given(
    total=st.integers(-(10**6), 10**6),
    weights=st.dictionaries(st.sampled_from(holders + contributors), st.integers(1, 4), min_size=1),
)
def test_allocation_by_weight_gives_the_left_over_units_to_the_largest_remainders_ties_to_the_smaller_holder(
    total: int, weights: dict[str, int]
) -> None:
    """The exact rule, written plainly: floors of the exact fractions, then one unit each to the largest
    remainders, equal remainders to the smaller holder (small weights make ties common), the sign applied last."""
    whole, size = sum(weights.values()), abs(total)
    exact = {holder: Fraction(size * weight, whole) for holder, weight in weights.items()}
    parts = {holder: int(fraction) for holder, fraction in exact.items()}
    ranked = sorted(weights, key=lambda holder: (-(exact[holder] - parts[holder]), holder))
    for holder in ranked[: size - sum(parts.values())]:
        parts[holder] += 1
    expected = sorted((holder, amount if total >= 0 else -amount) for holder, amount in parts.items())
    assert allocate_by_weight(total, sorted(weights.items())) == expected


@settings(max_examples=depth(25, 300), deadline=None)
@given(
    take=st.integers(0, 10**13),
    balance=st.integers(1, 10**27),
    half_blocks=st.integers(1, 500),
    others=st.lists(st.integers(1, 10**27), max_size=3),
)
def test_a_holder_for_half_the_range_gets_half_within_the_largest_remainder_unit(
    connection: duckdb.DuckDBPyConnection, take: int, balance: int, half_blocks: int, others: list[int]
) -> None:
    """A holds `balance` over the whole range, B the same for its first half (then sells to C, who holds it for
    the second half): B's part is half of A's, and so is C's, each within the largest-remainder unit."""
    a, b, c, *rest = holders
    first, last = 10, 10 + 2 * half_blocks - 1
    logs = [(0, zero_address, a, balance), (0, zero_address, b, balance)]
    logs += [(0, zero_address, holder, value) for holder, value in zip(rest, others, strict=False)]
    logs.append((first + half_blocks, b, c, balance))  # B holds blocks first..first+half-1
    _store(connection, logs, 1, 0)
    weights = holder_weights(connection, chain_id, token, first, last, set())
    paid = dict(allocate_by_weight(take, list(zip(weights["holder"], map(int, weights["weight"]), strict=True))))
    assert abs(2 * paid[b] - paid[a]) <= 2 and abs(2 * paid[c] - paid[a]) <= 2


def _with_holders(world, recipient: str):
    """The same world with contributor `c0` replaced by `recipient` in every policy."""
    for policy in world.policies:
        policy["shares"] = [
            {**share, "recipient": recipient if share["recipient"] == contributors[0] else share["recipient"]}
            for share in policy["shares"]
        ]
    return world


@settings(max_examples=depth(15, 200), deadline=None)
@given(
    world=worlds(),
    weights=st.lists(st.dictionaries(st.sampled_from(holders), st.integers(1, 10**30), min_size=1), min_size=3),
)
def test_epochs_paying_holders_pass_exactly_the_take_on_and_change_nobody_else(world, weights) -> None:
    """Whole epochs (new events, suspense, reversals): with `holders:<token>` in c0's place, each epoch credits
    the holders together exactly what c0 is credited without it (so payables + suspense still equal fees),
    by the largest-remainder rule over that epoch's weights; every other recipient's rows are unchanged, and
    every cumulative payable only grows."""
    import copy

    baseline = run_epochs(copy.deepcopy(world))
    recipient = f"holders:{token}"
    per_epoch = {epoch: sorted(weights[epoch - 1].items()) for epoch in range(1, world.epochs + 1)}
    plans = run_epochs(_with_holders(world, recipient), holder_weights=lambda epoch: {token: per_epoch[epoch]})
    suspense_before = receivable_before = 0
    cumulative: dict[str, int] = {}
    for before, after in zip(baseline, plans, strict=True):
        take = before.payables.filter(pl.col("recipient") == contributors[0])["credited_micros"].sum()
        received = after.payables.filter(pl.col("recipient").is_in(holders))
        expected = {h: a for h, a in allocate_by_weight(int(take), per_epoch[after.epoch]) if a}
        assert dict(zip(received["recipient"], received["credited_micros"], strict=True)) == expected
        assert (received["amount_micros"] >= 0).all()
        assert recipient not in after.payables["recipient"].to_list()
        others = [pl.col("recipient") != contributors[0], ~pl.col("recipient").is_in(holders)]
        assert before.payables.filter(others).equals(after.payables.filter(others))
        assert (before.fee_micros, before.suspense_micros) == (after.fee_micros, after.suspense_micros)
        # Conservation: payables + suspense change - receivables change = fees - reversed, every epoch.
        accounted = (
            after.payable_micros
            + (after.suspense_micros - suspense_before)
            - (after.receivable_micros - receivable_before)
        )
        assert accounted == after.fee_micros - after.reversed_micros
        suspense_before, receivable_before = after.suspense_micros, after.receivable_micros
        assert int(after.postings["amount_micros"].sum()) == 0
        for row in after.payables.iter_rows(named=True):  # monotone: a holder's cumulative amount never falls
            assert row["amount_micros"] >= 0 and row["cumulative_micros"] >= cumulative.get(row["recipient"], 0)
            cumulative[row["recipient"]] = row["cumulative_micros"]


def _range_ledger() -> duckdb.DuckDBPyConnection:
    """An in-memory database under the ledger's catalog name with the holders' three tables."""
    database = duckdb.connect()
    database.execute(f"ATTACH ':memory:' AS {catalog_alias}")
    for statement in create_statements(catalog_alias, [holder_transfer_table, holder_sync_table, epoch_blocks_table]):
        database.execute(statement)
    return database


def _synced(database: duckdb.DuckDBPyConnection, token_address: str, first: int, last: int, at: datetime) -> None:
    database.execute(
        f"INSERT INTO {catalog_alias}.main.{holder_sync_table} VALUES (?, ?, ?, ?, '0xhash', ?, 0, 0, ?)",
        [chain_id, token_address, first, last, at, at],
    )


def test_the_epoch_block_range_and_the_refusals_while_the_holder_sync_is_behind() -> None:
    """Operator mode: the range ends at the lowest token cursor and starts after the previous range (the first
    at the sync's first block); close refuses (HoldersBehindError, transient: exit 75) for a token never synced,
    a cursor older than the epoch's latest event, or no new block. On-chain mode: the range ends at the registry
    block, refused while a token's cursor is before it."""
    database = _range_ledger()
    other = "0x" + "8e" * 20
    noon = datetime(2026, 1, 1, 12, tzinfo=UTC)
    with pytest.raises(HoldersBehindError, match="holds none of its Transfer logs") as never:
        read_holder_weights(database, [token], 1, noon, None)
    assert never.value.transient
    _synced(database, token, 5, 40, noon)
    _synced(database, other, 7, 30, noon)
    weights, row = read_holder_weights(database, sorted([token, other]), 1, noon, None, ("0xABC",))
    assert row.to_pylist()[0] | {"to_block_time": None} == {
        "epoch": 1,
        "chain_id": chain_id,
        "from_block": 7,
        "to_block": 30,
        "to_block_time": None,
        "excluded": "0xabc",
        "dust_units_min": 0,
    }
    assert weights == {token: [], other: []}
    with pytest.raises(HoldersBehindError, match="earlier than the epoch's latest event"):
        read_holder_weights(database, [token], 1, datetime(2026, 1, 1, 13, tzinfo=UTC), None)
    database.execute(f"INSERT INTO {catalog_alias}.main.{epoch_blocks_table} SELECT * FROM row")
    with pytest.raises(HoldersBehindError, match="no block after 30"):
        read_holder_weights(database, [other], 2, noon, None)
    _, row = read_holder_weights(database, [token], 2, noon, None)
    assert (row["from_block"][0].as_py(), row["to_block"][0].as_py()) == (31, 40)
    with pytest.raises(HoldersBehindError, match="before the registry block 41"):
        read_holder_weights(database, [token], 2, noon, (chain_id, 41, noon))
    _, row = read_holder_weights(database, [token], 2, None, (chain_id, 35, noon))
    assert (row["from_block"][0].as_py(), row["to_block"][0].as_py()) == (31, 35)


def _dust_after(state: dict[tuple[str, str], int], plan) -> dict[tuple[str, str], int]:
    """The holders' carried dust after `plan` (token, holder -> micros; non-zero), from the rows it changed."""
    after = dict(state)
    for token_address, holder, carried in plan.holder_dust.iter_rows():
        after[(token_address, holder)] = carried
    return {key: value for key, value in after.items() if value}


@settings(max_examples=depth(15, 200), deadline=None)
@given(
    world=worlds(epochs_max=4),
    weights=st.lists(
        st.dictionaries(st.sampled_from(holders), st.one_of(st.integers(1, 10**3), st.integers(1, 10**30)), min_size=2),
        min_size=4,
    ),
    dust_units_min=st.one_of(st.integers(0, 200), st.sampled_from([10**6, 10**12])),
    order_seed=st.integers(0, 1000),
)
def test_holder_dust_is_carried_never_lost_and_conserved(world, weights, dust_units_min: int, order_seed: int) -> None:
    """`holder_dust_units_min`: every epoch, payables + Δsuspense + Δdust − Δreceivables = fees − reversed and the
    postings balance (the `holders-dust:<token>` account moves by exactly the change in carried dust). A holder is
    credited only an accumulated amount at or past the threshold (or a negative one), and carries only amounts
    strictly between 0 and it. Nothing is lost: over the epochs, what each holder was credited plus what it still
    carries is what it is credited with no threshold. Every cumulative payable only grows, and the epochs give the
    same payables and dust whatever order their events come in."""
    import copy

    recipient = f"holders:{token}"
    per_epoch = {epoch: sorted(weights[epoch - 1].items()) for epoch in range(1, world.epochs + 1)}
    source = lambda epoch: {token: per_epoch[epoch]}  # noqa: E731
    without = run_epochs(_with_holders(copy.deepcopy(world), recipient), holder_weights=source)
    plans = run_epochs(
        _with_holders(copy.deepcopy(world), recipient), holder_weights=source, holder_dust_units_min=dust_units_min
    )
    shuffled = run_epochs(
        _with_holders(copy.deepcopy(world), recipient),
        order_seed,
        holder_weights=source,
        holder_dust_units_min=dust_units_min,
    )
    dust: dict[tuple[str, str], int] = {}
    suspense_before = receivable_before = 0
    cumulative: dict[str, int] = {}
    for plan, again, plain in zip(plans, shuffled, without, strict=True):
        assert plan.payables.equals(again.payables) and plan.holder_dust.equals(again.holder_dust)
        after = _dust_after(dust, plan)
        # The rule, simulated from the parts the epoch gives with no threshold: part + carried below the threshold
        # (and above 0) is carried, anything else credited.
        expected_dust, expected_credit = dict(dust), {}
        parts = plain.payables.filter(pl.col("recipient").is_in(holders))
        for holder, part in parts.select("recipient", "credited_micros").iter_rows():
            accumulated = dust.get((token, holder), 0) + part
            carried = accumulated if 0 < accumulated < dust_units_min else 0
            expected_dust[(token, holder)] = carried
            if accumulated and not carried:
                expected_credit[holder] = accumulated
        assert after == {key: value for key, value in expected_dust.items() if value}
        received = plan.payables.filter(pl.col("recipient").is_in(holders))
        assert dict(received.select("recipient", "credited_micros").iter_rows()) == expected_credit
        assert all(0 < carried < dust_units_min for carried in after.values())
        dust_change = sum(after.values()) - sum(dust.values())
        accounted = (
            plan.payable_micros
            + (plan.suspense_micros - suspense_before)
            + dust_change
            - (plan.receivable_micros - receivable_before)
        )
        assert accounted == plan.fee_micros - plan.reversed_micros
        assert int(plan.postings["amount_micros"].sum()) == 0
        dust_postings = plan.postings.filter(pl.col("account") == f"holders-dust:{token}")["amount_micros"].sum()
        assert -int(dust_postings or 0) == dust_change
        credited = plan.payables.filter(pl.col("recipient").is_in(holders))["credited_micros"].to_list()
        assert all(amount >= dust_units_min or amount < 0 for amount in credited)
        for row in plan.payables.iter_rows(named=True):
            assert row["amount_micros"] >= 0 and row["cumulative_micros"] >= cumulative.get(row["recipient"], 0)
            cumulative[row["recipient"]] = row["cumulative_micros"]
        dust, suspense_before, receivable_before = after, plan.suspense_micros, plan.receivable_micros

    def credited_to(runs: list, holder: str) -> int:
        return sum(int(p.payables.filter(pl.col("recipient") == holder)["credited_micros"].sum() or 0) for p in runs)

    for holder in holders:
        assert credited_to(plans, holder) + dust.get((token, holder), 0) == credited_to(without, holder)


def test_a_holders_dust_is_carried_until_it_reaches_the_threshold_then_paid_whole() -> None:
    """Epoch by epoch through `pass_to_holders` with a threshold of 3 micros: B's 1-micro parts are carried (1, then
    2) and paid whole (3) in the epoch they reach the threshold; a taken-back epoch (negative take) lowers the
    carried amount first; each entry balances on `holders-dust:<token>`; a threshold of 0 carries nothing."""
    from settlement.engine.holders import dust_schema, pass_to_holders

    a, b = holders[0], holders[1]
    recipient = f"holders:{token}"
    dust = pl.DataFrame(schema=dust_schema)
    seen = []
    for epoch, take in enumerate([10, 10, 10, 10, -10], start=1):
        credits = pl.DataFrame(
            {"recipient": [recipient], "amount_micros": [take]},
            schema={"recipient": pl.String, "amount_micros": pl.Int128},
        )
        merged, postings, changed = pass_to_holders(epoch, credits, {token: [(a, 9), (b, 1)]}, dust, 3)
        assert int(postings["amount_micros"].sum()) == 0
        dust_posting = int(postings.filter(pl.col("account") == f"holders-dust:{token}")["amount_micros"].sum() or 0)
        before = dict(dust.select("holder", "carried_micros").iter_rows())
        now = {**before, **dict(changed.select("holder", "carried_micros").iter_rows())}
        assert -dust_posting == sum(now.values()) - sum(before.values())
        dust = pl.DataFrame(
            [{"token": token, "holder": h, "carried_micros": c} for h, c in sorted(now.items()) if c],
            schema=dust_schema,
        )
        seen.append((dict(merged.select("recipient", "amount_micros").iter_rows()), now.get(b, 0)))
    assert seen == [
        ({a: 9}, 1),
        ({a: 9}, 2),
        ({a: 9, b: 3}, 0),
        ({a: 9}, 1),
        ({a: -9}, 0),  # B's part of the reversal (-1) takes back the micro it carried: nothing credited, 0 carried
    ]
    merged, _, changed = pass_to_holders(
        1, credits.with_columns(amount_micros=pl.lit(10, pl.Int128)), {token: [(a, 9), (b, 1)]}, None, 0
    )
    assert dict(merged.select("recipient", "amount_micros").iter_rows()) == {a: 9, b: 1} and changed.is_empty()


@settings(max_examples=depth(10, 150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    world=worlds(epochs_max=3),
    weights=st.lists(
        st.dictionaries(st.sampled_from(holders), st.one_of(st.integers(1, 10**3), st.integers(1, 10**30)), min_size=1),
        min_size=3,
    ),
    dust_units_min=st.one_of(st.integers(0, 200), st.just(10**6)),
)
def test_the_audit_recomputes_every_epoch_paying_holders_from_its_v3_bundle(
    world, weights, dust_units_min: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every epoch paying `holders:<token>` (with dust carried and paid) publishes a settlement-v3 bundle holding
    the holders' weights and the dust carried in and out, and the audit, written from the spec, recomputes its
    payables, leaves and root from the bundle alone; a holder's weight moved past half or below a quarter of the
    total (manifest hash updated) changes its part, and the audit names a holder (its payable, or its dust)."""
    import hashlib
    import json

    from settlement.reports.audit import AuditDisagreement, audit_bundle
    from settlement.reports.bundle import bundle_frames, holder_frames, write_bundle

    root = tmp_path_factory.mktemp("holders-bundle")
    recipient = f"holders:{token}"
    per_epoch = {epoch: sorted(weights[epoch - 1].items()) for epoch in range(1, world.epochs + 1)}
    stored: list[pl.DataFrame] = []
    section = {"chain_id": chain_id, "from_block": 1, "to_block": 2, "excluded": [], "dust_units_min": dust_units_min}

    def publish(inputs, prior, plan) -> None:
        stored.append(plan.payables.with_columns(epoch=pl.lit(plan.epoch, pl.Int64)))
        rows = pl.concat(stored, how="diagonal_relaxed")
        frames = {
            **bundle_frames(inputs, prior, plan, rows, plan.epoch, receipts=False),
            **holder_frames(inputs, prior, plan),
        }
        directory = root / f"epoch-{plan.epoch}"
        write_bundle(
            directory,
            frames,
            rows,
            plan.epoch,
            (prior.closing_snapshot, plan.closing_snapshot),
            holders={**section, "from_block": plan.epoch, "to_block": plan.epoch},
        )
        manifest = json.loads((directory / "manifest.json").read_text())
        assert manifest["rules_version"] == "settlement-v3" and manifest["holders"]["dust_units_min"] == dust_units_min
        assert audit_bundle(directory).epoch == plan.epoch
        weighted = pl.read_parquet(directory / "holder_weights.parquet")
        received = plan.payables.filter(pl.col("recipient").is_in(holders))
        if weighted.height < 2 or received.is_empty():
            return
        # Tamper: the first holder's weight moved from at least half the total to at most a quarter, or the reverse.
        first, values = weighted["holder"][0], [int(w) for w in weighted["weight"]]
        others = sum(values[1:])
        changed = str(max(1, others // 3) if values[0] >= others else 3 * others)
        weighted = weighted.with_columns(
            pl.when(pl.col("holder") == first).then(pl.lit(changed)).otherwise(pl.col("weight")).alias("weight")
        )
        weighted.write_parquet(directory / "holder_weights.parquet")
        manifest["files"]["holder_weights.parquet"]["sha256"] = hashlib.sha256(
            (directory / "holder_weights.parquet").read_bytes()
        ).hexdigest()
        (directory / "manifest.json").write_text(json.dumps(manifest))
        take = int(received["credited_micros"].sum())
        if abs(take) < 1_000:  # a quarter of the take at least moves: past the largest-remainder units
            return
        with pytest.raises(AuditDisagreement) as caught:
            audit_bundle(directory)
        named = caught.value.what
        assert named.startswith("holder dust 0x") or (
            named.startswith("recipient 0x") and "holder_weights.parquet" in str(caught.value)
        ), str(caught.value)

    run_epochs(
        _with_holders(world, recipient),
        each=publish,
        holder_weights=lambda epoch: {token: per_epoch[epoch]},
        holder_dust_units_min=dust_units_min,
    )


def test_the_spec_dust_example_by_hand_and_by_the_engine() -> None:
    """docs/spec/settlement-v3.md §6b's worked example: take 1,001 over weights 6, 3, 1 with a threshold of 150 and
    40 micros carried in by the third holder, by hand with fractions (independent of both implementations), then
    through the engine's `pass_to_holders`: the same credits, dust and balanced entry."""
    from settlement.engine.holders import dust_schema, pass_to_holders

    a, b, c = (f"0x{letter * 40}" for letter in "abc")
    weights, take, threshold, carried_in = {a: 6, b: 3, c: 1}, 1_001, 150, {c: 40}
    exact = {h: Fraction(take * w, sum(weights.values())) for h, w in weights.items()}
    floors = {h: int(x) for h, x in exact.items()}
    left = take - sum(floors.values())
    lucky = sorted(weights, key=lambda h: (-(exact[h] - floors[h]), h))[:left]
    parts = {h: floors[h] + (h in lucky) for h in weights}
    assert parts == {a: 601, b: 300, c: 100}
    accumulated = {h: parts[h] + carried_in.get(h, 0) for h in weights}
    credited = {h: v for h, v in accumulated.items() if not 0 < v < threshold}
    carried_out = {h: v for h, v in accumulated.items() if 0 < v < threshold}
    assert (credited, carried_out) == ({a: 601, b: 300}, {c: 140})

    credits = pl.DataFrame(
        {"recipient": [f"holders:{token}"], "amount_micros": [take]},
        schema={"recipient": pl.String, "amount_micros": pl.Int128},
    )
    dust = pl.DataFrame([{"token": token, "holder": c, "carried_micros": 40}], schema=dust_schema)
    merged, postings, changed = pass_to_holders(7, credits, {token: sorted(weights.items())}, dust, threshold)
    assert dict(merged.select("recipient", "amount_micros").iter_rows()) == credited
    assert changed.to_dicts() == [{"token": token, "holder": c, "carried_micros": 140}]
    assert dict(postings.select("account", "amount_micros").iter_rows()) == {
        f"contributor:holders:{token}": 1_001,
        f"contributor:{a}": -601,
        f"contributor:{b}": -300,
        f"holders-dust:{token}": -100,
    }
    assert set(postings["entry_id"]) == {f"e7:holders:{token}"}
