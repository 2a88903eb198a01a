"""Token holders as the ledger holds them: indexed `Transfer` logs, the sync cursor, each epoch's block range.

`royalty sync-holders` (`settlement.onchain.holders_sync`) stores every `Transfer` log of an ERC-20 in
`holder_transfer` and each block range it read in `holder_sync` (the cursor, with its last block's hash and
time). A balance at a block is a query over `holder_transfer` (`balances_at`); an epoch that pays a
`holders:<token>` recipient records the block range it weighted balances over in `settlement_epoch_blocks`.

Token amounts are base units of the holder token as decimal text (`value_units`): an ERC-20 amount is a
uint256, which no Parquet integer holds; queries cast it to HUGEINT (the sync refuses a transfer above
`holder_value_units_max`).

A holder's weight over blocks `from..to` is its time-weighted balance: the sum over those blocks of its
balance at the end of each block. With `delta` each transfer's signed change, that is
`sum(delta * (to - greatest(block, from) + 1))` over every transfer up to `to`: one aggregate, no per-block rows.

Balance checkpoints keep that aggregate short over a long history (benchmarks/RESULTS.md, "Token holders"): with
a range it stores, `sync-holders` may store every address's balance at the range's last block
(`holder_balance_checkpoint`, `balance_checkpoint`), once at least `holder_checkpoint_transfers_min` transfers, and
as many as the previous checkpoint's holders, were stored after the previous one (so checkpoints never hold more
rows than the transfers). A balance at block B then sums the latest checkpoint at or before B and the transfers after
it; a weight over `from..to` the latest checkpoint before `from` (a balance held since before `from` is a delta at
a block before `from`: the same aggregate) and the transfers after it. Without a checkpoint, every transfer.

Since ledger format 22 a checkpoint also keeps each address's balance-blocks, its balance summed over every block up
to the checkpoint's (`_balance_blocks_rows`). A weight over `from..to` is the difference of the balance-blocks up to
`to` and up to `from - 1`, each the latest checkpoint carrying them and the transfers after it: with a checkpoint
inside the range, that skips the range's transfers before it (`_balance_blocks_plan` takes whichever reads fewer
rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import polars as pl
import pyarrow as pa

from ledger import recorder
from ledger.query import register_views
from ledger.tables import register_table
from schemas.arrow import timestamp_type
from settlement.tables import chain_sync_schema, table_schema
from settlement.views import view_statements

holder_transfer_table = "holder_transfer"
holder_sync_table = "holder_sync"
epoch_blocks_table = "settlement_epoch_blocks"
holder_dust_table = "settlement_holder_dust"
holder_checkpoint_table = "holder_balance_checkpoint"

zero_address = "0x" + "00" * 20
# A transfer's value is stored as text and summed as HUGEINT (signed 128 bits): a larger value is refused,
# and so is a balance times a block count past it (DuckDB raises on overflow rather than wrapping).
holder_value_units_max = 2**127 - 1
# A balance checkpoint is stored once this many transfers (and at least as many as the previous checkpoint's rows)
# were stored after the previous one: reading a checkpoint of H holders costs about as much as H transfers.
holder_checkpoint_transfers_min = 250_000

_s, _i = pa.string(), pa.int64()


holder_transfer_schema = table_schema(
    ("chain_id", _i, False),
    ("token", _s, False),  # checksummed
    ("block_number", _i, False),
    ("block_hash", _s, False),
    ("tx_hash", _s, False),
    ("log_index", _i, False),
    ("from_address", _s, False),  # checksummed; the zero address for a mint
    ("to_address", _s, False),  # checksummed; the zero address for a burn
    ("value_units", _s, False),  # decimal text of the uint256 value
    ("synced_at", timestamp_type, False),
)
# `checked_holders`: holders whose indexed balance matched balanceOf at to_block.
holder_sync_schema = chain_sync_schema("token", "transfers", ("checked_holders", _i, False))
epoch_blocks_schema = table_schema(
    ("epoch", _i, False),
    ("chain_id", _i, False),
    ("from_block", _i, False),  # holders' balances are weighted over from_block..to_block, both included
    ("to_block", _i, False),
    ("to_block_time", timestamp_type, False),
    # The addresses never paid as holders in this epoch besides the zero address and the token (lowercase,
    # sorted, comma-separated): a re-plan of the epoch (bundle, audit) uses these, not today's settings.
    ("excluded", _s, False),
    # The `holder_dust_units_min` the epoch applied (ledger format 12; NULL before: 0, no dust carried).
    ("dust_units_min", _i, True),
)
# Every address's non-zero balance of a token at the end of one block (the zero address's is minus the supply),
# stored by `sync-holders` with the range ending at that block (ledger format 17; `balance_checkpoint`).
holder_checkpoint_schema = table_schema(
    ("chain_id", _i, False),
    ("token", _s, False),  # checksummed
    ("block_number", _i, False),
    ("holder", _s, False),  # checksummed
    ("balance_units", _s, False),  # decimal text, as value_units
    # The holder's balance summed over every block up to and including block_number (its "balance-blocks"; ledger
    # format 22, NULL in checkpoints stored before), as high * 2**64 + low: decimal text of a HUGEINT and of a
    # number in [0, 2**64). Since the chain's first block it may pass 2**127; a weight, a difference of two, not.
    ("balance_blocks_high", _s, True),
    ("balance_blocks_low", _s, True),
)
# A holder's sub-threshold part carried forward (`holder_dust_units_min`): one row per epoch, token and holder
# whose carried amount that epoch changed, with what is carried after it (0 once paid out). The carried total of a
# token is the balance of the posting account `holders-dust:<token>` (settlement.engine.accounts).
holder_dust_schema = table_schema(
    ("epoch", _i, False),
    ("token", _s, False),  # checksummed
    ("holder", _s, False),  # checksummed
    ("carried_micros", _i, False),  # carried for the holder after this epoch
)


def register() -> None:
    """Declare the tables, which the ledger creates on a writer's next open or append, and their analyst views
    (`holder_balances`, `holder_payables`: settlement/holder_views.sql)."""
    register_table(holder_transfer_table, holder_transfer_schema, inlined=False)
    register_table(holder_sync_table, holder_sync_schema, inlined=True)
    register_table(epoch_blocks_table, epoch_blocks_schema, inlined=True)
    register_table(holder_dust_table, holder_dust_schema, inlined=False)
    register_table(holder_checkpoint_table, holder_checkpoint_schema, inlined=False)
    register_views("settlement.holders", lambda: view_statements("settlement", "holder_views.sql"))


@dataclass(frozen=True)
class HolderCursor:
    """The last block range `sync-holders` stored for one token."""

    chain_id: int
    token: str
    first_block: int  # the first block the sync read: balances are known from there on
    block_number: int
    block_hash: str
    block_time: datetime


def holder_cursor(
    connection: duckdb.DuckDBPyConnection, token: str, chain_id: int | None = None
) -> HolderCursor | None:
    """The stored sync cursor of `token` (on `chain_id`, or the chain it was synced on); None before the first."""
    if holder_sync_table not in recorder.existing_tables(connection):
        return None
    chain = "" if chain_id is None else " AND chain_id = ?"
    row = connection.execute(
        f"SELECT chain_id, token, to_block, to_block_hash, to_block_time, "
        f"min(from_block) OVER (PARTITION BY chain_id) FROM {recorder.table(holder_sync_table)} "
        f"WHERE lower(token) = lower(?){chain} ORDER BY to_block DESC LIMIT 1",
        [token] + ([] if chain_id is None else [chain_id]),
    ).fetchone()
    if row is None:
        return None
    block_time = row[4] if row[4].tzinfo else row[4].replace(tzinfo=UTC)
    return HolderCursor(int(row[0]), str(row[1]), int(row[5]), int(row[2]), str(row[3]), block_time)


_token_filter = "chain_id = $chain AND lower(token) = lower($token)"


def _checkpoint_before(
    connection: duckdb.DuckDBPyConnection, chain_id: int, token: str, before: int, balance_blocks: bool = False
) -> int | None:
    """The block of the latest balance checkpoint of `token` before block `before` (with `balance_blocks`: the latest
    that carries them, ledger format 22); None: there is none."""
    if holder_checkpoint_table not in recorder.existing_tables(connection):
        return None
    carrying = " AND balance_blocks_high IS NOT NULL" if balance_blocks else ""
    (block,) = connection.execute(
        f"SELECT max(block_number) FROM {recorder.table(holder_checkpoint_table)} "
        f"WHERE {_token_filter} AND block_number < $before{carrying}",
        {"chain": chain_id, "token": token, "before": before},
    ).fetchone()
    return None if block is None else int(block)


def _checkpoints(
    connection: duckdb.DuckDBPyConnection, chain_id: int, token: str, before: int
) -> dict[int, tuple[int, bool]]:
    """Every balance checkpoint of `token` before block `before`: block -> (its rows, whether it carries
    balance-blocks, as `_checkpoint_before` tells)."""
    if holder_checkpoint_table not in recorder.existing_tables(connection):
        return {}
    found = connection.execute(
        f"SELECT block_number, count(*), bool_or(balance_blocks_high IS NOT NULL) "
        f"FROM {recorder.table(holder_checkpoint_table)} WHERE {_token_filter} AND block_number < $before "
        f"GROUP BY block_number",
        {"chain": chain_id, "token": token, "before": before},
    ).fetchall()
    return {int(block): (int(count), bool(carrying)) for block, count, carrying in found}


def _deltas(checkpoint: int | None) -> str:
    """(holder, block_number, delta) of every balance change of $token up to $to_block: the balances of the
    checkpoint at block `checkpoint` (None: none) as deltas at that block, then the transfers after it."""
    after = "" if checkpoint is None else f" AND block_number > {int(checkpoint)}"
    transfers = (
        f"SELECT to_address, from_address, block_number, value_units FROM {recorder.table(holder_transfer_table)} "
        f"WHERE {_token_filter} AND block_number <= $to_block{after}"
    )
    parts = [
        """SELECT to_address AS holder, block_number, value_units::HUGEINT AS delta FROM transfers
            UNION ALL
            SELECT from_address AS holder, block_number, -(value_units::HUGEINT) AS delta FROM transfers"""
    ]
    if checkpoint is not None:
        parts.append(
            f"SELECT holder, block_number, balance_units::HUGEINT AS delta FROM "
            f"{recorder.table(holder_checkpoint_table)} WHERE {_token_filter} AND block_number = {int(checkpoint)}"
        )
    return f"(WITH transfers AS ({transfers}) {' UNION ALL '.join(parts)})"


def _weighted_deltas(checkpoint: int | None) -> str:
    """(holder, weighted) of every balance change of $token up to $to_block, each weighted by the blocks of
    $from_block..$to_block it counts for (`_deltas`' rows times `$to_block - greatest(block_number, $from_block) + 1`),
    a transfer's value cast and weighted once for both its sides."""
    weight = "($to_block - greatest(block_number, $from_block) + 1)"
    after = "" if checkpoint is None else f" AND block_number > {int(checkpoint)}"
    parts = [
        "SELECT to_address AS holder, weighted FROM transfers",
        "SELECT from_address AS holder, -weighted FROM transfers",
    ]
    if checkpoint is not None:
        parts.append(
            f"SELECT holder, balance_units::HUGEINT * {weight} AS weighted FROM "
            f"{recorder.table(holder_checkpoint_table)} WHERE {_token_filter} AND block_number = {int(checkpoint)}"
        )
    return (
        f"(WITH transfers AS (SELECT to_address, from_address, value_units::HUGEINT * {weight} AS weighted "
        f"FROM {recorder.table(holder_transfer_table)} WHERE {_token_filter} AND block_number <= $to_block{after}) "
        f"{' UNION ALL '.join(parts)})"
    )


_low_mask = f"{2**64 - 1}::HUGEINT"


def _split(value: str, blocks: str) -> str:
    """`high, low` of HUGEINT `value` times `blocks`, split at 2**64 (value = high * 2**64 + low, 0 <= low < 2**64,
    before the product): a value below 2**127 times a block count below 2**40 stays far inside HUGEINT."""
    return f"({value} >> 64) * {blocks} AS high, ({value} & {_low_mask}) * {blocks} AS low"


def _balance_blocks_rows(at: str, checkpoint: int | None, sources: list[str] | None = None) -> str:
    """(holder, delta, high, low) rows whose sums per holder are its balance at block `at` (a SQL expression) and
    its balance-blocks up to it (high * 2**64 + low, unnormalised): the checkpoint at block `checkpoint` (None:
    none; it must carry balance-blocks) carried on to `at`, and each transfer of `sources` (None: the table) after it
    up to `at`, counted for the blocks from its own to `at`."""
    after = "" if checkpoint is None else f" AND block_number > {int(checkpoint)}"
    transfers = " UNION ALL ".join(
        f"SELECT to_address, from_address, value_units::HUGEINT AS moved, {at} - block_number + 1 AS blocks "
        f"FROM {source} WHERE {_token_filter} AND block_number <= {at}{after}"
        for source in sources or [recorder.table(holder_transfer_table)]
    )
    parts = [
        f"SELECT to_address AS holder, moved AS delta, {_split('moved', 'blocks')} FROM transfers",
        f"SELECT from_address AS holder, -moved AS delta, {_split('-moved', 'blocks')} FROM transfers",
    ]
    if checkpoint is not None:
        carried = f"({at} - {int(checkpoint)})"
        parts.append(
            f"SELECT holder, balance, balance_blocks_high::HUGEINT + (balance >> 64) * {carried}, "
            f"balance_blocks_low::HUGEINT + (balance & {_low_mask}) * {carried} FROM "
            f"(SELECT holder, balance_units::HUGEINT AS balance, balance_blocks_high, balance_blocks_low FROM "
            f"{recorder.table(holder_checkpoint_table)} WHERE {_token_filter} AND block_number = {int(checkpoint)})"
        )
    return f"(WITH transfers AS ({transfers}) {' UNION ALL '.join(parts)})"


def balances_at(connection: duckdb.DuckDBPyConnection, chain_id: int, token: str, block: int) -> dict[str, int]:
    """Every non-zero balance of `token` at the end of `block`, from the indexed transfers (the zero address
    excluded: its 'balance' is minus the supply)."""
    if holder_transfer_table not in recorder.existing_tables(connection):
        return {}
    checkpoint = _checkpoint_before(connection, chain_id, token, block + 1)
    rows = connection.execute(  # through Arrow as text: a million Python HUGEINTs from fetchall take seconds
        f"""SELECT holder, sum(delta)::VARCHAR AS balance FROM {_deltas(checkpoint)}
            WHERE holder <> '{zero_address}' GROUP BY holder HAVING sum(delta) <> 0""",
        {"chain": chain_id, "token": token, "to_block": block},
    ).fetch_arrow_table()
    return dict(zip(rows["holder"].to_pylist(), map(int, rows["balance"].to_pylist()), strict=True))


def holder_weights(
    connection: duckdb.DuckDBPyConnection,
    chain_id: int,
    token: str,
    from_block: int,
    to_block: int,
    excluded: set[str],
) -> pl.DataFrame:
    """Each holder's time-weighted balance of `token` over `from_block..to_block` (holder, weight as decimal
    text, sorted by holder), without `excluded` addresses (lowercase) and without holders of weight 0."""
    units = holder_weight_units(connection, chain_id, token, from_block, to_block, excluded)
    return units.with_columns(pl.col("weight").cast(pl.String))


def holder_weight_units(
    connection: duckdb.DuckDBPyConnection,
    chain_id: int,
    token: str,
    from_block: int,
    to_block: int,
    excluded: set[str],
) -> pl.DataFrame:
    """`holder_weights` with the weight as Int128 (a HUGEINT sum: it fits), not text.

    Each transfer's value is weighted once (not once per side), the HUGEINT sums cross to polars as two 64-bit
    halves (no decimal text to print and parse), and polars drops the excluded holders (not a join of every delta
    or summed holder in DuckDB) and sorts the rest: at 1M holders over 2M transfers about 2 s CPU, was 4 s."""
    empty = pl.DataFrame(schema={"holder": pl.String, "weight": pl.Int128})
    if holder_transfer_table not in recorder.existing_tables(connection):
        return empty
    params = {"chain": chain_id, "token": token, "from_block": from_block, "to_block": to_block}
    plan = _balance_blocks_plan(connection, params)
    if plan is None:
        checkpoint = _checkpoint_before(connection, chain_id, token, from_block)
        query = _halves(f"SELECT holder, sum(weighted) AS weight FROM {_weighted_deltas(checkpoint)} GROUP BY holder")
    elif plan[2] and plan[0] == to_block:  # the range ends at checkpoint `end`, whose rows alone are the weights
        query = _stored_halves(plan[0])
    else:
        query = _halves(_balance_blocks_weights(*plan))
    halves = recorder.frame(connection, query, _used(params, query))
    never = sorted({zero_address, token.lower()} | {address.lower() for address in excluded})
    weight = pl.col("high").cast(pl.Int128) * pl.lit(2**64, pl.Int128) + pl.col("low").cast(pl.Int128)
    # One thread: the summed holders come in hash order, and polars' parallel sort of a million strings took twice the
    # CPU (0.9 s against 0.5 s) for no shorter wall time on two cores.
    weights = (
        halves.filter(~pl.col("holder").str.to_lowercase().is_in(never))
        .select("holder", weight=weight)
        .sort("holder", multithreaded=False)
    )
    return weights if weights.height else empty


def _halves(sums: str) -> str:
    """(holder, high BIGINT, low UBIGINT) of the positive weights of `sums` (holder, weight HUGEINT)."""
    return f"""WITH sums AS ({sums})
        SELECT holder, (weight >> 64)::BIGINT AS high, (weight & {_low_mask})::UBIGINT AS low FROM sums
        WHERE weight > 0"""


def _stored_halves(end: int) -> str:
    """`_halves` of checkpoint `end`'s balance-blocks, as stored (high, and 0 <= low < 2**64): each half cast from its
    text to a 64-bit integer, no HUGEINT made and split again (at a million holders 0.19 s of one core against 0.37)."""
    kept = f"{recorder.table(holder_checkpoint_table)} WHERE {_token_filter} AND block_number = {int(end)}"
    return f"""SELECT holder, high, low FROM (
            SELECT holder, balance_blocks_high::BIGINT AS high, balance_blocks_low::UBIGINT AS low FROM {kept})
        WHERE high > 0 OR (high = 0 AND low > 0)"""


def _used(params: dict, query: str) -> dict:
    """The named parameters `query` refers to (DuckDB refuses any other)."""
    return {name: value for name, value in params.items() if f"${name}" in query}


def _balance_blocks_plan(
    connection: duckdb.DuckDBPyConnection, params: dict
) -> tuple[int, int | None, bool] | None:
    """(end, start, end_only): the checkpoints a weight over $from_block..$to_block reads as a difference of
    balance-blocks (`_balance_blocks_weights`), when that reads fewer rows than the transfers after the checkpoint
    before $from_block do; None: read those (`_weighted_deltas`). `end` is the latest checkpoint inside the range that
    carries balance-blocks, `start` the latest before it (None: none, every transfer before $from_block); `end_only`:
    no transfer came after `end` within the range nor before $from_block, so `end`'s rows alone are the weights."""
    chain_id, token, from_block, to_block = params["chain"], params["token"], params["from_block"], params["to_block"]
    held = _checkpoints(connection, chain_id, token, to_block + 1)  # one scan, not one per checkpoint looked for
    end = max((block for block, (_, carrying) in held.items() if carrying), default=None)
    if end is None or end < from_block:
        return None
    start = max((block for block, (_, carrying) in held.items() if carrying and block < from_block), default=None)
    direct = max((block for block in held if block < from_block), default=None)
    after = {name: -1 if block is None else block for name, block in (("direct", direct), ("start", start))}
    transfers = connection.execute(
        f"""SELECT count(*) FILTER (WHERE block_number > {after["direct"]}),
                   count(*) FILTER (WHERE block_number > {end}),
                   count(*) FILTER (WHERE block_number > {after["start"]} AND block_number < $from_block)
            FROM {recorder.table(holder_transfer_table)} WHERE {_token_filter} AND block_number <= $to_block""",
        params,
    ).fetchone()
    rows = {block: count for block, (count, _) in held.items()}
    direct_rows = rows.get(direct, 0) + 2 * transfers[0]
    difference_rows = rows.get(end, 0) + 2 * transfers[1] + rows.get(start, 0) + 2 * transfers[2]
    if difference_rows >= direct_rows:
        return None
    return end, start, start is None and transfers[1] == 0 and transfers[2] == 0


def _balance_blocks_weights(end: int, start: int | None, end_only: bool = False) -> str:
    """(holder, weight) of every holder of $token over $from_block..$to_block: its balance-blocks up to $to_block
    (from checkpoint `end`) less those up to $from_block - 1 (from checkpoint `start`; None: from every transfer),
    summed as two halves (high * 2**64 + low) so no partial sum nears HUGEINT's bounds. `end_only` (see
    `_balance_blocks_plan`): checkpoint `end`'s rows carried on to $to_block, one per holder, read without a sum (at
    a million holders ~0.3 s against ~0.8 s of one core); a range ending at `end` reads `_stored_halves`."""
    if end_only:
        kept = f"{recorder.table(holder_checkpoint_table)} WHERE {_token_filter} AND block_number = {int(end)}"
        carried = f"($to_block - {int(end)})"
        rows = (
            f"SELECT holder, balance_blocks_high::HUGEINT + (balance >> 64) * {carried} AS high, "
            f"balance_blocks_low::HUGEINT + (balance & {_low_mask}) * {carried} AS low FROM "
            f"(SELECT *, balance_units::HUGEINT AS balance FROM {kept})"
        )
        return f"SELECT holder, (high + (low >> 64)) * {2**64}::HUGEINT + (low & {_low_mask}) AS weight FROM ({rows})"
    rows = (
        f"SELECT holder, high, low FROM {_balance_blocks_rows('$to_block', end)} UNION ALL "
        f"SELECT holder, -high, -low FROM {_balance_blocks_rows('($from_block - 1)', start)}"
    )
    return (
        f"SELECT holder, (high + (low >> 64)) * {2**64}::HUGEINT + (low & {_low_mask}) AS weight "
        f"FROM (SELECT holder, sum(high) AS high, sum(low) AS low FROM ({rows}) GROUP BY holder)"
    )


def balance_checkpoint(
    connection: duckdb.DuckDBPyConnection,
    chain_id: int,
    token: str,
    block: int,
    pending: pa.Table,
    transfers_min: int | None = None,
) -> pa.Table | None:
    """The `holder_balance_checkpoint` rows to store with `pending` (the transfers of a range ending at `block`, not
    stored yet: every transfer up to `block` is stored or pending), or None when none is due: fewer than
    `transfers_min` (None: `holder_checkpoint_transfers_min`), or than the previous checkpoint's rows, transfers came
    after the previous checkpoint."""
    previous = _checkpoint_before(connection, chain_id, token, block + 1)
    params = {"chain": chain_id, "token": token, "to_block": block}
    after = "" if previous is None else f" AND block_number > {previous}"
    stored_count = 0
    if holder_transfer_table in recorder.existing_tables(connection):
        (stored_count,) = connection.execute(
            f"SELECT count(*) FROM {recorder.table(holder_transfer_table)} WHERE {_token_filter}"
            f" AND block_number <= $to_block{after}",
            params,
        ).fetchone()
    held = 0
    if previous is not None:
        (held,) = connection.execute(
            f"SELECT count(*) FROM {recorder.table(holder_checkpoint_table)} WHERE {_token_filter}"
            f" AND block_number = {previous}",
            {"chain": chain_id, "token": token},
        ).fetchone()
    due = holder_checkpoint_transfers_min if transfers_min is None else transfers_min
    if int(stored_count) + pending.num_rows < max(due, int(held), 1):
        return None
    pending_name = "holder_transfer_pending"
    tables = recorder.existing_tables(connection)
    stored = [recorder.table(holder_transfer_table)] if holder_transfer_table in tables else []
    # Carried on from the previous checkpoint when it has balance-blocks; after one stored without (before format
    # 22), summed once from every transfer.
    with_blocks = _checkpoint_before(connection, chain_id, token, block + 1, balance_blocks=True)
    carried = previous if previous == with_blocks else None
    connection.register(pending_name, pending)
    try:
        rows = connection.execute(
            f"""SELECT $chain::BIGINT AS chain_id, $checksummed AS token, $to_block::BIGINT AS block_number, holder,
                       balance::VARCHAR AS balance_units, high::VARCHAR AS balance_blocks_high,
                       low::VARCHAR AS balance_blocks_low
                FROM (SELECT holder, sum(delta) AS balance, sum(high) + (sum(low) >> 64) AS high,
                             sum(low) & {_low_mask} AS low
                      FROM {_balance_blocks_rows("$to_block", carried, [*stored, pending_name])} GROUP BY holder)
                WHERE balance <> 0 OR high <> 0 OR low <> 0
                ORDER BY holder""",
            {**params, "checksummed": token},
        ).fetch_arrow_table()
    finally:
        connection.unregister(pending_name)
    return rows.cast(holder_checkpoint_schema)


def excluded_addresses(excluded: tuple[str, ...] | list[str]) -> list[str]:
    """The exclusion list as an epoch records it: lowercase, sorted, without duplicates or blanks."""
    return sorted({address.strip().lower() for address in excluded if address.strip()})


# Where the ledger names a distributor contract (`settlement.onchain.tables`): each column is its address.
_distributor_columns = (
    ("settlement_record", "contract", True),
    ("settlement_intent", "contract", True),
    ("settlement_claim", "contract", True),
    ("settlement_migration", "predecessor", False),  # no chain id: a predecessor is excluded on every chain
)


def known_distributors(connection: duckdb.DuckDBPyConnection, chain_id: int) -> list[str]:
    """Every distributor the ledger knows on `chain_id` (lowercase): settled to, proposed to, claimed from or migrated
    from. None of them is ever paid as a holder: a holder share credited to a distributor could not be claimed."""
    tables = recorder.existing_tables(connection)
    parts = [
        f"SELECT lower({column}) AS address FROM {recorder.table(table)}"
        + (f" WHERE chain_id = {int(chain_id)}" if by_chain else "")
        for table, column, by_chain in _distributor_columns
        if table in tables
    ]
    if not parts:
        return []
    rows = connection.execute(f"SELECT DISTINCT address FROM ({' UNION ALL '.join(parts)}) ORDER BY 1").fetchall()
    return [str(row[0]) for row in rows]


def last_epoch_blocks(connection: duckdb.DuckDBPyConnection) -> tuple[int, int] | None:
    """(chain id, to_block) of the last epoch that recorded a block range; None before the first."""
    if epoch_blocks_table not in recorder.existing_tables(connection):
        return None
    row = connection.execute(
        f"SELECT chain_id, to_block FROM {recorder.table(epoch_blocks_table)} ORDER BY epoch DESC LIMIT 1"
    ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def epoch_blocks_row(
    epoch: int,
    chain_id: int,
    from_block: int,
    to_block: int,
    to_block_time: datetime,
    excluded: list[str],
    dust_units_min: int = 0,
) -> pa.Table:
    """The `settlement_epoch_blocks` row of an epoch that weighted holders over `from_block..to_block` and carried
    parts below `dust_units_min` forward."""
    return pa.Table.from_pylist(
        [
            {
                "epoch": epoch,
                "chain_id": chain_id,
                "from_block": from_block,
                "to_block": to_block,
                "to_block_time": to_block_time,
                "excluded": ",".join(excluded),
                "dust_units_min": dust_units_min,
            }
        ],
        schema=epoch_blocks_schema,
    )
