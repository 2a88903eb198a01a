"""The on-chain registry as the ledger holds it: synced events, the sync cursor, and the registry records they mean.

`royalty sync-registry` (`settlement.onchain.registry_sync`) stores every ModelRegistry event, already decoded
to the ledger's names (ids as identifiers, accounts as checksummed addresses, recipients as the address,
`model:<id>` or `dataset:<id>`), in `registry_event`, and each block range it read in `registry_sync` (the
cursor). An epoch closed in on-chain mode settles with the registry as of the cursor's block, recorded in
`settlement_epoch_registry` in the epoch's own transaction.

`registry_records` maps those events onto the records the split engine already resolves (`model_registered`,
`split_policy_set`, payout addresses), so on-chain mode runs the same engine with the chain as the only
authority: the contract has already refused everything the operator mode must judge (a second registration,
a policy by anyone but the governor, a retroactive or un-noticed change, a payout change by anyone but the
account). A dataset is a registry record of its own, named `dataset:<id>`, with no parents; a model policy
that names it sends that share down to the dataset's policy, as a parent's share goes up the lineage.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import polars as pl
import pyarrow as pa
from eth_utils import to_checksum_address

from ledger import recorder
from ledger.tables import register_table
from schemas.arrow import timestamp_type
from settlement.tables import chain_sync_schema, table_schema

registry_event_table = "registry_event"
registry_sync_table = "registry_sync"
epoch_registry_table = "settlement_epoch_registry"

_s, _i = pa.string(), pa.int64()
_address = re.compile(r"0x[0-9a-fA-F]{40}")


registry_event_schema = table_schema(
    ("chain_id", _i, False),
    ("contract", _s, False),
    ("block_number", _i, False),
    ("block_hash", _s, False),
    ("block_time", timestamp_type, False),
    ("tx_hash", _s, False),
    ("log_index", _i, False),
    ("event", _s, False),  # ModelRegistered, DatasetRegistered, SplitPolicySet, PayoutAddressSet, GovernorChanged
    ("subject", _s, True),  # the model or dataset id, or the account; null: an id that is no identifier
    ("detail", _s, False),  # the event's arguments in the ledger's names, canonical JSON
    ("synced_at", timestamp_type, False),
)
registry_sync_schema = chain_sync_schema("contract", "events")
epoch_registry_schema = table_schema(
    ("epoch", _i, False),
    ("chain_id", _i, False),
    ("contract", _s, False),
    ("block_number", _i, False),  # the registry state the epoch settled with: every event up to this block
    ("block_hash", _s, False),
    ("block_time", timestamp_type, False),
)



def register() -> None:
    """Declare the registry's tables (inlined: a few rows per sync), which the ledger creates on a writer's next open
    or append."""
    for name, schema in (
        (registry_event_table, registry_event_schema),
        (registry_sync_table, registry_sync_schema),
        (epoch_registry_table, epoch_registry_schema),
    ):
        register_table(name, schema, inlined=True)


@dataclass(frozen=True)
class RegistrySource:
    """Which on-chain registry an on-chain-mode ledger settles with."""

    chain_id: int
    contract: str


@dataclass(frozen=True)
class RegistryCursor:
    """The last block range `sync-registry` stored: the registry state is known up to `block_number`."""

    block_number: int
    block_hash: str
    block_time: datetime


def registry_cursor(connection: duckdb.DuckDBPyConnection, chain_id: int, contract: str) -> RegistryCursor | None:
    """The stored sync cursor of the registry at `contract` on `chain_id`; None before the first sync."""
    if registry_sync_table not in recorder.existing_tables(connection):
        return None
    row = connection.execute(
        f"SELECT to_block, to_block_hash, to_block_time FROM {recorder.table(registry_sync_table)} "
        "WHERE chain_id = ? AND lower(contract) = lower(?) ORDER BY to_block DESC LIMIT 1",
        [chain_id, contract],
    ).fetchone()
    if row is None:
        return None
    block_time = row[2] if row[2].tzinfo else row[2].replace(tzinfo=UTC)
    return RegistryCursor(int(row[0]), str(row[1]), block_time)


def registry_events(
    connection: duckdb.DuckDBPyConnection, source: RegistrySource, up_to_block: int
) -> pl.DataFrame:
    """The stored events of the registry up to and including `up_to_block`, in chain order."""
    if registry_event_table not in recorder.existing_tables(connection):
        return pl.from_arrow(registry_event_schema.empty_table())  # type: ignore[return-value]
    return recorder.frame(
        connection,
        f"SELECT * FROM {recorder.table(registry_event_table)} "
        "WHERE chain_id = ? AND lower(contract) = lower(?) AND block_number <= ? ORDER BY block_number, log_index",
        [source.chain_id, source.contract, up_to_block],
    )


_parents_type = pl.List(pl.Struct({"model_id": pl.String, "share_ppm": pl.Int64}))
_shares_type = pl.List(pl.Struct({"recipient": pl.String, "share_ppm": pl.Int64}))
_time = pl.Datetime("us", "UTC")
model_schema = {
    "event_id": pl.String,
    "event_time": _time,
    "model_id": pl.String,
    "parents": _parents_type,
    "known_snapshot": pl.Int64,
}
policy_schema = {
    "event_id": pl.String,
    "event_time": _time,
    "model_id": pl.String,
    "effective_from": _time,
    "compute_share_ppm": pl.Int64,
    "shares": _shares_type,
    "known_snapshot": pl.Int64,
}
address_schema = {"contributor_id": pl.String, "payout_address": pl.String}


@dataclass
class RegistryRecords:
    """The chain's registry as the split engine's inputs (each row's `known_snapshot` 0: the block decides)."""

    models: pl.DataFrame
    policies: pl.DataFrame
    addresses: pl.DataFrame


def registry_records(events: pl.DataFrame) -> RegistryRecords:
    """Map stored registry events (chain order) onto model, policy and payout-address records."""
    models: list[dict] = []
    policies: list[dict] = []
    payouts: dict[str, str] = {}
    for row in events.sort(["block_number", "log_index"]).iter_rows(named=True):
        detail = json.loads(row["detail"])
        # The chain's order, zero-padded so that text order is block order (a policy tie breaks by it).
        event_id = f"chain:{row['block_number']:012d}:{row['log_index']:06d}"
        at = row["block_time"] if row["block_time"].tzinfo else row["block_time"].replace(tzinfo=UTC)
        subject = row["subject"]
        if row["event"] == "ModelRegistered" and subject is not None:
            if any(p["model_id"] is None for p in detail["parents"]):
                continue  # a parent id that is no identifier: the model is never paid (its fees wait)
            models.append({"event_id": event_id, "event_time": at, "model_id": subject, "parents": detail["parents"]})
        elif row["event"] == "DatasetRegistered" and subject is not None:
            models.append({"event_id": event_id, "event_time": at, "model_id": f"dataset:{subject}", "parents": []})
        elif row["event"] == "SplitPolicySet" and subject is not None:
            if any(s["recipient"] is None for s in detail["shares"]):
                continue
            name = subject if detail["subject_kind"] == "model" else f"dataset:{subject}"
            policies.append(
                {
                    "event_id": event_id,
                    "event_time": at,
                    "model_id": name,
                    "effective_from": datetime.fromtimestamp(detail["effective_from"], UTC),
                    "compute_share_ppm": detail["compute_share_ppm"],
                    "shares": detail["shares"],
                }
            )
        elif row["event"] == "PayoutAddressSet":
            payouts[detail["account"]] = detail["payout"]
    for policy in policies:  # an account named in a split is paid at its own address until it sets another
        for share in policy["shares"]:
            recipient = share["recipient"]
            if recipient.startswith("0x"):
                payouts.setdefault(recipient, recipient)
    return RegistryRecords(
        pl.DataFrame(models, schema={k: v for k, v in model_schema.items() if k != "known_snapshot"}).with_columns(
            known_snapshot=pl.lit(0, pl.Int64)
        ),
        pl.DataFrame(policies, schema={k: v for k, v in policy_schema.items() if k != "known_snapshot"}).with_columns(
            known_snapshot=pl.lit(0, pl.Int64)
        ),
        pl.DataFrame(
            [{"contributor_id": a, "payout_address": p} for a, p in sorted(payouts.items())], schema=address_schema
        ),
    )


def registry_source(connection: duckdb.DuckDBPyConnection, contract: str) -> RegistrySource | None:
    """The chain of the synced registry at `contract` (the one its `registry_sync` rows name); None: never synced."""
    if registry_sync_table not in recorder.existing_tables(connection):
        return None
    rows = connection.execute(
        f"SELECT DISTINCT chain_id, contract FROM {recorder.table(registry_sync_table)} "
        "WHERE lower(contract) = lower(?)",
        [contract],
    ).fetchall()
    if len(rows) != 1:
        return None  # never synced (several chains under one address cannot happen: deployments differ)
    return RegistrySource(int(rows[0][0]), str(rows[0][1]))


def with_own_addresses(addresses: pl.DataFrame, accounts: list[str]) -> pl.DataFrame:
    """`addresses` plus each of `accounts` that is an address and has none yet: paid at the payout address its
    account set (the registry keys it by the checksummed address; an account may be written in any case, a compute
    provider being free text), else at itself (on-chain, an account that never set one is paid where it is)."""
    known = set(addresses["contributor_id"].to_list())
    extra = sorted({a for a in accounts if a and _address.fullmatch(a) and a not in known})
    if not extra:
        return addresses
    pairs = addresses.select("contributor_id", "payout_address").iter_rows()
    set_by = {account.lower(): paid_at for account, paid_at in pairs if _address.fullmatch(account)}
    own = pl.DataFrame(
        {"contributor_id": extra, "payout_address": [set_by.get(a.lower(), to_checksum_address(a)) for a in extra]}
    )
    return pl.concat([addresses, own.cast(address_schema)])  # type: ignore[arg-type]


def epoch_registry_row(epoch: int, source: RegistrySource, cursor: RegistryCursor) -> pa.Table:
    """The `settlement_epoch_registry` row of an epoch settled with the registry as of `cursor`."""
    return pa.Table.from_pylist(
        [
            {
                "epoch": epoch,
                "chain_id": source.chain_id,
                "contract": source.contract,
                "block_number": cursor.block_number,
                "block_hash": cursor.block_hash,
                "block_time": cursor.block_time,
            }
        ],
        schema=epoch_registry_schema,
    )
