"""The use case `settle`: close the epoch, build its payout tree, fund and propose the root, record it.

Crash safety and concurrency rest on five rules:

1. The tree and every proof are written in one ledger transaction, once per epoch; a rerun reads
   them back (and asserts the payables still give the same root) instead of writing them again.
2. The `proposeRoot` transaction is signed locally and its hash and nonce are recorded in the ledger
   (`settlement_intent`) BEFORE it is sent.
3. Before proposing, the chain is asked first: a `RootProposed` event for the epoch with our root is
   recorded as found (`outcome = recovered`); one with another root, or a later epoch on the contract,
   stops with `ChainLedgerMismatchError` before anything is sent or written. A recorded intent whose
   transaction the node still holds is waited for; one the node never saw is replaced by a fresh
   proposal (same nonce, so at most one of them can ever be mined).
4. Nothing is recorded as settled before the chain shows the proposal at the configured depth: a node
   restart while waiting is ridden out, a proposal dropped by a reorganisation or a restart stops the run
   (`TransactionDroppedError`), and a node lost between steps stops it (`ChainUnavailableError`); a rerun
   resumes by rules 1-3.
5. Each writing step (close, tree, propose, record) has one writer at a time on any catalog
   (`Ledger.step_lock`): a run that waited for another finds the step done after the lock and goes on
   from there (the epoch closed, the tree written, the proposal on the chain or recorded).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import BadFunctionCallOutput, ContractLogicError
from web3.logs import DISCARD

from ledger import recorder
from ledger.ledger import Ledger
from schemas.errors import require
from settlement.closing import EpochSummary, close_epoch, closed_by_another_message
from settlement.engine.authority import RegistryRules
from settlement.input_checks import InputChecks, verify_close_inputs, verify_settle_inputs
from settlement.ledger_io import Progress, plan_from_ledger
from settlement.onchain import tables as settle_tables
from settlement.onchain.chain import (
    Chain,
    SignedTx,
    broadcast,
    distributor_contract,
    local_chain_ids,
    node_unreachable_errors,
    preflight,
    sign,
    token_contract,
    transact,
    wait_confirmed,
    wait_no_pending,
)
from settlement.onchain.chain_logs import log_start_block, read_logs
from settlement.onchain.exceptions import (
    ChainConfigError,
    ChainLedgerMismatchError,
    ChainUnavailableError,
    FundingRefusedError,
    NonceGapError,
    SettleConflictError,
)
from settlement.onchain.merkle import MerkleTree
from settlement.onchain.payout_tree import EpochTree, build_epoch_tree, manifest_digest, write_dump
from settlement.onchain.safe_batch import check_safe_settler, safe_batch, write_safe_batch

# The step locks (`Ledger.step_lock`) of settle's writes: one writer of each at a time, on any catalog.
tree_step, propose_step, record_step = "settle-tree", "settle-propose", "settle-record"
_steps = ["close epoch", "build tree", "write tree", "check chain", "fund", "propose", "confirm", "record"]


class SettleOutcome(StrEnum):
    """What a `settle` run ended with (its value is what `--json` prints and `settlement_record` stores)."""

    nothing_to_settle = "nothing_to_settle"  # no epoch with an addressed payable
    dry_run = "dry_run"
    proposed = "proposed"  # this run sent and confirmed the proposal
    recovered = "recovered"  # a killed run's proposal, found and recorded
    already_recorded = "already_recorded"  # the ledger holds this epoch's settlement on this contract
    safe_batch = "safe_batch"  # the proposal written as a Safe Transaction Builder batch for the signers


# Composes a closed epoch's manifest.json (settlement.reports.bundle.epoch_manifest; reports import onchain, not
# the other way): (ledger, epoch, registry rules) -> the manifest's bytes.
ManifestOf = Callable[[Ledger, int, RegistryRules | None], bytes]


@dataclass(frozen=True)
class SettlementResult:
    """What `settle` did (or, with `dry_run`, would do). Amounts in token units (= payable micros).

    `outcome`: `nothing_to_settle` (no epoch with an addressed payable), `dry_run`, `proposed` (this
    run sent and confirmed the proposal), `recovered` (a killed run's proposal, found and recorded) or
    `already_recorded` (the ledger already holds this epoch's settlement on this contract).
    """

    outcome: SettleOutcome
    epoch: int | None = None
    root: str | None = None
    total_units: int = 0
    leaf_count: int = 0
    unaddressed_units: int = 0
    funded_units: int = 0
    tx_hash: str | None = None
    block_number: int | None = None
    chain_id: int | None = None
    contract: str | None = None
    tree_path: str | None = None
    tree_snapshot: int | None = None
    closed: EpochSummary | None = None
    notes: list[str] = field(default_factory=list)
    safe_batch_path: str | None = None


# --- ledger side (pure where it can be) ---------------------------------------------------------


def _frame(connection: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pl.DataFrame:
    return pl.from_arrow(connection.execute(sql, params or []).fetch_arrow_table())  # type: ignore[return-value]


def _latest_epoch(connection: duckdb.DuckDBPyConnection) -> tuple[int, int] | None:
    row = connection.execute(
        f"SELECT epoch, closing_snapshot FROM {recorder.table('settlement_epoch')} ORDER BY epoch DESC LIMIT 1"
    ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def _payables(connection: duckdb.DuckDBPyConnection, epoch_max: int) -> pl.DataFrame:
    return _frame(
        connection,
        "SELECT epoch, recipient, amount_micros, payout_address "
        f"FROM {recorder.table('settlement_payable')} WHERE epoch <= ?",
        [epoch_max],
    )


def read_stored_tree(connection: duckdb.DuckDBPyConnection, epoch: int) -> EpochTree | None:
    """The tree `settle` wrote for `epoch`, rebuilt from its proof rows and checked against its root."""
    root_row = connection.execute(
        f"""SELECT closing_snapshot, root, ledger_digest, unaddressed_units, total_units, leaf_count
            FROM {recorder.table('settlement_root')} WHERE epoch = ?""",
        [epoch],
    ).fetchone()
    if root_row is None:
        return None
    closing_snapshot, root, digest, unaddressed_units, total_units, leaf_count = root_row
    leaves = _frame(
        connection,
        f"SELECT account, cumulative_units FROM {recorder.table('settlement_proof')} WHERE epoch = ? ORDER BY account",
        [epoch],
    )
    tree = MerkleTree.build(leaves["account"].to_list(), leaves["cumulative_units"].to_list())
    require(
        tree.root_hex == root and len(tree) == leaf_count and tree.total_amount_units == total_units,
        f"epoch {epoch}: the stored proofs rebuild the stored root {root} (they give {tree.root_hex})",
    )
    tree_snapshot = _tree_snapshot(connection, epoch, closing_snapshot)
    return EpochTree(epoch, closing_snapshot, tree, digest, unaddressed_units, tree_snapshot)


def read_stored_manifest(connection: duckdb.DuckDBPyConnection, epoch: int) -> bytes | None:
    """The manifest `settle` stored with the epoch's tree (settlement-v2); None for an epoch of settlement-v1."""
    if "settlement_manifest" not in recorder.existing_tables(connection):
        return None
    row = connection.execute(
        f"SELECT manifest, manifest_sha256 FROM {recorder.table('settlement_manifest')} WHERE epoch = ?", [epoch]
    ).fetchone()
    if row is None:
        return None
    body = str(row[0]).encode()
    require(manifest_digest(body) == row[1], f"epoch {epoch}: the stored manifest has its recorded SHA-256 {row[1]}")
    return body


def _tree_snapshot(connection: duckdb.DuckDBPyConnection, epoch: int, closing_snapshot: int) -> int:
    """The snapshot that wrote the epoch's tree: the one inserting its root row (DuckLake's change feed)."""
    first = recorder.first_inserting_snapshot(connection, "settlement_root", closing_snapshot, "epoch", epoch)
    require(first is not None, f"epoch {epoch}: a snapshot after {closing_snapshot} inserted its root row")
    return int(first)  # type: ignore[arg-type]


def write_tree(ledger: Ledger, tree: EpochTree) -> int:
    """Append the root, every leaf and the tree's nodes (the proofs are read off them) in one transaction; return the
    snapshot that wrote them."""
    now = datetime.now(UTC)
    t = tree.tree
    root_rows = pa.Table.from_pylist(
        [
            {
                "epoch": tree.epoch,
                "closing_snapshot": tree.closing_snapshot,
                "root": t.root_hex,
                "total_units": t.total_amount_units,
                "leaf_count": len(t),
                "ledger_digest": tree.ledger_digest,
                "unaddressed_units": tree.unaddressed_units,
                "written_at": now,
            }
        ],
        schema=settle_tables.root_schema,
    )
    leaf_rows = pa.Table.from_pydict(
        {
            "epoch": pa.repeat(pa.scalar(tree.epoch, pa.int64()), len(t)),
            "account": _accounts_column(t),
            "cumulative_units": _amounts_column(t),
            "tree_index": _tree_index_column(t),
            "proof": pa.nulls(len(t), pa.list_(pa.string())),  # read off the nodes (format 14)
        },
        schema=settle_tables.proof_schema,
    )
    records = {"settlement_root": root_rows, "settlement_proof": leaf_rows, "settlement_tree_node": _node_rows(tree)}
    if tree.net_of is not None:
        predecessor, predecessor_epoch = tree.net_of
        records["settlement_migration"] = pa.Table.from_pylist(
            [{"epoch": tree.epoch, "predecessor": predecessor, "predecessor_epoch": predecessor_epoch,
              "written_at": now}],
            schema=settle_tables.migration_schema,
        )  # fmt: skip
    if tree.manifest is not None:
        require(manifest_digest(tree.manifest) == tree.ledger_digest, "the tree's digest is its manifest's SHA-256")
        version = str(json.loads(tree.manifest)["rules_version"])
        records["settlement_manifest"] = pa.Table.from_pylist(
            [{"epoch": tree.epoch, "rules_version": version, "manifest": tree.manifest.decode(),
              "manifest_sha256": tree.ledger_digest, "written_at": now}],
            schema=settle_tables.manifest_schema,
        )

    def first_tree(connection: duckdb.DuckDBPyConnection) -> None:
        (count,) = connection.execute(
            f"SELECT count(*) FROM {recorder.table('settlement_root')} WHERE epoch = ?", [tree.epoch]
        ).fetchone()
        if count:
            raise SettleConflictError(tree.epoch, "another `royalty settle` wrote this epoch's tree meanwhile")

    return ledger.append_records(records, precondition=first_tree)


def _accounts_column(tree: MerkleTree) -> pa.Array:
    """The leaves' checksummed accounts (`items()`' order) as one string column, from the tree's joined bodies: a
    string and a tuple per leaf cost about 2 s at a million leaves. "0x" is put before each body in one pass
    (0.03 s at a million leaves; through polars, four copies of the column, 0.1 s)."""
    body = pa.binary(40)
    bodies = pa.FixedSizeBinaryArray.from_buffers(body, len(tree), [None, pa.py_buffer(tree.checksummed_bodies)])
    return pc.binary_replace_slice(bodies.cast(pa.binary()), start=0, stop=0, replacement=b"0x").cast(pa.string())


def _amounts_column(tree: MerkleTree) -> pa.Array:
    """The leaves' cumulative amounts as an int64 column: the tree's own buffer when it was built from columns."""
    amounts = tree.amounts_units
    if isinstance(amounts, memoryview) and amounts.format == "q":
        return pa.Array.from_buffers(pa.int64(), len(amounts), [None, pa.py_buffer(amounts)])
    return pa.array(amounts, pa.int64())


def _tree_index_column(tree: MerkleTree) -> pa.Array:
    """Each leaf's tree index as an int64 column (the native build gives them as a uint32 buffer)."""
    indexes = tree.tree_indexes
    if isinstance(indexes, memoryview) and indexes.format == "I":
        return pa.Array.from_buffers(pa.uint32(), len(indexes), [None, pa.py_buffer(indexes)]).cast(pa.int64())
    return pa.array(indexes, pa.int64())


def _node_rows(tree: EpochTree) -> pa.Table:
    """The tree's internal nodes (all but its leaves: half the bytes, ledger format 23), `tree_node_chunk_nodes` to a
    row (the proofs are read off them by position; a leaf sibling is hashed from its `settlement_proof` row)."""
    nodes = memoryview(tree.tree.node_bytes)[: (len(tree.tree) - 1) * 32]  # a view, not a copy
    chunk_bytes = settle_tables.tree_node_chunk_nodes * 32
    count = -(-len(nodes) // chunk_bytes)
    # One binary column over the nodes' own buffer, cut by offsets: a bytes copy per chunk took ~0.2 s at 64 MB.
    # The offsets are int32: at most leaves_count_max (2**24) leaves, under 1 GiB of nodes.
    offsets = pa.array([min(chunk * chunk_bytes, len(nodes)) for chunk in range(count + 1)], pa.int32())
    chunks = pa.Array.from_buffers(pa.binary(), count, [None, offsets.buffers()[1], pa.py_buffer(nodes)])
    return pa.Table.from_pydict(
        {"epoch": [tree.epoch] * count, "chunk": list(range(count)), "nodes": chunks},
        schema=settle_tables.tree_node_schema,
    )


def _write_tree_once(ledger: Ledger, tree: EpochTree) -> EpochTree:
    """Write the epoch's tree unless another run did meanwhile (the `tree` step lock held); return the stored one.

    A tree another run wrote is the same tree (the same payables give the same root); that is checked.
    """
    with ledger.step_lock(tree_step):
        if _stored_tree(ledger, tree.epoch) is None:
            write_tree(ledger, tree)
        stored = _stored_tree(ledger, tree.epoch)
    require(stored is not None, f"epoch {tree.epoch}: the tree just written reads back")
    require(
        stored.tree.root == tree.tree.root,  # type: ignore[union-attr]
        f"epoch {tree.epoch}: the tree another run wrote has this run's root {tree.tree.root_hex}",
    )
    return stored  # type: ignore[return-value]


def _records(connection: duckdb.DuckDBPyConnection, table: str, epoch: int, chain_id: int, contract: str) -> list:
    return _frame(
        connection,
        f"SELECT * FROM {recorder.table(table)} WHERE epoch = ? AND chain_id = ? AND lower(contract) = lower(?)",
        [epoch, chain_id, contract],
    ).to_dicts()


def _read_records(ledger: Ledger, table: str, epoch: int, chain_id: int, contract: str) -> list:
    """`_records` outside a write transaction: under the ledger's lock and retries."""
    return ledger.recorder.read(
        lambda connection: _records(connection, table, epoch, chain_id, contract), f"read `{table}` of epoch {epoch}"
    )


def _stored_tree(ledger: Ledger, epoch: int) -> EpochTree | None:
    """`read_stored_tree` outside a write transaction: under the ledger's lock and retries."""
    return ledger.recorder.read(lambda connection: read_stored_tree(connection, epoch), f"read epoch {epoch}'s tree")


def _append_guarded(
    ledger: Ledger, table: str, row: dict, schema: pa.Schema, epoch: int, chain_id: int, contract: str
) -> int:
    def not_recorded(connection: duckdb.DuckDBPyConnection) -> None:
        if _records(connection, "settlement_record", epoch, chain_id, contract):
            raise SettleConflictError(epoch, "another `royalty settle` recorded this epoch's settlement meanwhile")

    return ledger.append_records({table: pa.Table.from_pylist([row], schema=schema)}, precondition=not_recorded)


# --- chain side ----------------------------------------------------------------------------------


def _logs_from_block(ledger: Ledger, chain: Chain, distributor: Contract, epoch: int, from_block: int | None) -> int:
    """Where the epoch's RootProposed / RootRevoked logs can start: not before the distributor's deployment,
    nor before the previous epoch's proposal this ledger recorded (epochs only grow on the contract)."""
    (previous,) = ledger.recorder.read(
        lambda connection: connection.execute(
            f"""SELECT max(block_number) FROM {recorder.table('settlement_record')}
                WHERE chain_id = ? AND lower(contract) = lower(?) AND epoch < ?""",
            [chain.chain_id, distributor.address, epoch],
        ).fetchall()[0],
        "read the previous epoch's proposal block",
    )
    if previous is not None and from_block is None:
        return int(previous)  # no need to look for the deployment block
    return max(log_start_block(chain, distributor, from_block), int(previous or 0))


def _proposals(chain: Chain, distributor: Contract, epoch: int, logs_from: int, head: int) -> list[dict]:
    return read_logs(chain, distributor.events.RootProposed, logs_from, head, {"epoch": epoch})


def _revoked(chain: Chain, distributor: Contract, epoch: int, root: str, logs_from: int, head: int) -> dict | None:
    events = read_logs(chain, distributor.events.RootRevoked, logs_from, head, {"epoch": epoch})
    for event in events:
        if "0x" + bytes(event["args"]["root"]).hex() == root:
            return event
    return None


def _hex(value: Any) -> str:
    return "0x" + bytes(value).hex()


# --- the use case --------------------------------------------------------------------------------


def settle(
    ledger: Ledger,
    chain: Chain,
    distributor: Contract,
    dry_run: bool = False,
    progress: Progress | None = None,
    tree_dir: Path | None = None,
    checks: InputChecks | None = None,
    from_block: int | None = None,
    funding_units_max: int | None = None,
    rules: RegistryRules | None = None,
    via_safe: str | None = None,
    safe_batch_dir: Path | None = None,
    *,
    manifest_of: ManifestOf,
) -> SettlementResult:
    """Settle the latest epoch on `distributor`: close it if needed, write its tree, fund, propose, record.

    The chain's logs are read from `from_block` (the distributor's deployment block; None: found on the
    chain, `settlement.onchain.chain_logs`) or from the block of the previous epoch's recorded proposal, in
    bounded ranges.

    Money moves only on verified data: closing checks the epoch's inputs, and before the tree is built or
    read the payables and proofs it reads are checked against their recorded checksums and every
    reconciliation row must be zero (`settlement.input_checks`; `checks` holds the operator's overrides).
    A failed check raises before anything is written or sent.

    Idempotent and resumable (see the module docstring). With `dry_run` nothing is written or sent:
    the epoch is planned, its tree built and the chain read. Raises `ChainLedgerMismatchError` when
    the chain holds a different root for the epoch or a later epoch, `TransactionRevertedError` with
    the contract's decoded error when a preflight call reverts, `ChainUnavailableError` when the node
    stops answering between steps (waiting for confirmations rides out a restart), and
    `TransactionDroppedError` when a reorganisation or a node restart drops a sent transaction.

    Funding: a shortfall is pulled from the distributor's treasury (`fund`, through the allowance the
    treasury gave the distributor), at most `funding_units_max` units per run; above that, or without a cap
    off a local chain, `FundingRefusedError` names the figures before anything is sent.

    With `via_safe` (a Safe holding SETTLER_ROLE) nothing is signed here: the funding and the proposal are
    written as a Safe Transaction Builder batch to `safe_batch_dir` (`SettleOutcome.safe_batch`); once the
    signers execute it, a later run finds the proposal on the chain and records it (`recovered`).

    `manifest_of(ledger, epoch, rules)` composes the epoch's bundle manifest (`settlement.reports.bundle`): a tree
    written by this run proposes its SHA-256 as the ledger digest (settlement-v2) and stores it with the tree.
    """
    try:
        return _settle(
            manifest_of,
            ledger,
            chain,
            distributor,
            dry_run,
            progress,
            tree_dir,
            checks or InputChecks(),
            from_block,
            funding_units_max,
            rules,
            via_safe,
            safe_batch_dir,
        )
    except node_unreachable_errors as error:
        raise ChainUnavailableError(
            chain.rpc_url,
            f"{type(error).__name__}; nothing unconfirmed is recorded as settled, and a rerun resumes from what "
            "the chain and the ledger hold without proposing twice",
        ) from None


@dataclass(frozen=True)
class Funding:
    """What the distributor holds against what the tree's total needs (token units)."""

    total_units: int
    claimed_units: int
    balance_units: int

    @property
    def shortfall_units(self) -> int:
        return max(0, self.total_units - self.claimed_units - self.balance_units)


@dataclass(frozen=True)
class SettlePlan:
    """What a settle run does next, read from the ledger and the chain without writing or sending anything.

    `found`: the epoch's proposal already on the chain, in the node or recorded (see `_check_chain`);
    `funding`: the distributor's figures when a proposal is to be sent.
    """

    tree: EpochTree | None
    closed: EpochSummary | None = None
    notes: tuple[str, ...] = ()
    logs_from: int = 0
    found: dict | None = None
    funding: Funding | None = None


def _settle(
    manifest_of: ManifestOf,
    ledger: Ledger,
    chain: Chain,
    distributor: Contract,
    dry_run: bool,
    progress: Progress | None,
    tree_dir: Path | None,
    checks: InputChecks,
    from_block: int | None,
    funding_units_max: int | None = None,
    rules: RegistryRules | None = None,
    via_safe: str | None = None,
    safe_batch_dir: Path | None = None,
) -> SettlementResult:
    step = progress or (lambda name, done, total: None)
    step(_steps[0], 0, len(_steps))
    refuse_migrated_from(ledger, chain, distributor)
    predecessor = read_predecessor(ledger, chain, distributor)
    if dry_run:
        tree, closed, notes = _dry_run_tree(ledger, checks, rules, predecessor), None, ()
    else:
        tree, closed, notes = _close_and_read_tree(ledger, checks, step, rules, manifest_of, predecessor)
    safe = check_safe_settler(distributor, via_safe) if via_safe else None
    plan = plan_settlement(ledger, chain, distributor, tree, from_block, funding_units_max, safe)
    plan = SettlePlan(plan.tree, closed, notes, plan.logs_from, plan.found, plan.funding)
    if dry_run:
        return _dry_run_result(chain, distributor, plan)
    if safe is not None and plan.found is None and plan.tree is not None:
        return _write_batch(ledger, chain, distributor, plan, step, tree_dir, safe, safe_batch_dir or tree_dir)
    return _apply(ledger, chain, distributor, plan, step, tree_dir, funding_units_max)


def _close_and_read_tree(
    ledger: Ledger,
    checks: InputChecks,
    step: Any,
    rules: RegistryRules | None,
    manifest_of: ManifestOf,
    predecessor: Predecessor | None = None,
) -> tuple:
    """Close the epoch if there is one to close; return the latest epoch's tree (stored, else built: then with
    the epoch's manifest, whose SHA-256 is its digest). For a migrated distributor the leaves are net of what
    its predecessor's last root owes."""
    summary = close_epoch(ledger, checks=checks, rules=rules)
    closed = None if summary.noop or summary.closed_by_another else summary
    notes = (closed_by_another_message(summary.epoch),) if summary.closed_by_another else ()
    latest = ledger.recorder.read(_latest_epoch, "read the latest epoch")
    if latest is None:
        return None, closed, notes
    if predecessor is not None and latest[0] <= predecessor.epoch:
        return None, closed, (*notes, predecessor.not_after_message(latest[0]))
    owed = predecessor.owed_units if predecessor is not None else None
    net_of = predecessor.net_of if predecessor is not None else None
    step(_steps[1], 1, len(_steps))
    verify_settle_inputs(ledger, latest[0], checks)
    tree, payables = ledger.recorder.read(
        lambda connection: (read_stored_tree(connection, latest[0]), _payables(connection, latest[0])),
        f"read epoch {latest[0]}'s tree and payables",
    )
    # A tree to write proposes its manifest's SHA-256 as the digest: given to the build (composed once there is a tree),
    # so the build computes no other.
    manifest = (lambda: manifest_of(ledger, latest[0], rules)) if tree is None else None
    rebuilt = build_epoch_tree(*latest, payables, manifest, owed, net_of)
    if predecessor is not None and tree is not None and (rebuilt is None or rebuilt.tree.root != tree.tree.root):
        raise ChainConfigError(predecessor.stored_plain_message(latest[0]), "distributor")
    require(
        tree is None or (rebuilt is not None and rebuilt.tree.root == tree.tree.root),
        f"epoch {latest[0]}: the ledger's payables still give the stored root",
    )
    return tree or rebuilt, closed, notes


def plan_settlement(
    ledger: Ledger,
    chain: Chain,
    distributor: Contract,
    tree: EpochTree | None,
    from_block: int | None,
    funding_units_max: int | None,
    safe: str | None = None,
) -> SettlePlan:
    """Read-only: what the chain holds for the tree's epoch, and the funding a proposal needs (checked
    against the run's cap and the treasury's allowance; a Safe that is the treasury approves in its batch).
    Raises on a mismatch or a refused funding."""
    if tree is None:
        return SettlePlan(None)
    logs_from = _logs_from_block(ledger, chain, distributor, tree.epoch, from_block)
    found = _check_chain(ledger, chain, distributor, tree, logs_from)
    if found is not None:
        return SettlePlan(tree, logs_from=logs_from, found=found)
    funding = _funding(chain, distributor, tree.tree.total_amount_units)
    check_funding(chain, distributor, tree.epoch, funding, funding_units_max, safe)
    return SettlePlan(tree, logs_from=logs_from, funding=funding)


@dataclass(frozen=True)
class Predecessor:
    """The distributor a migrated one took over from (`royalty deploy --migrate-from`): its address, its last
    epoch, and what that epoch's root owes each address there (forever); the new distributor's leaves are each
    address's cumulative units net of it, so no unit is paid twice and none is lost."""

    address: str
    epoch: int
    owed_units: dict[str, int]

    @property
    def net_of(self) -> tuple[str, int]:
        return self.address, self.epoch

    def not_after_message(self, epoch: int) -> str:
        return (
            f"epoch {epoch} is not after epoch {self.epoch}, the last root of {self.address}, which this distributor "
            "took over from: nothing to settle here until a later epoch closes (ingest, then settle again)"
        )

    def stored_plain_message(self, epoch: int) -> str:
        return (
            f"epoch {epoch}'s tree in the ledger holds whole cumulative leaves, not leaves net of what {self.address} "
            f"(the predecessor) owes after epoch {self.epoch}: it was written for another distributor and cannot be "
            "proposed to this one; close a later epoch (ingest, then settle again). Nothing was written or sent"
        )


def read_predecessor(ledger: Ledger, chain: Chain, distributor: Contract) -> Predecessor | None:
    """The distributor `distributor` took over from, with what its last root owes each address (from the ledger's
    tree of that epoch, checked against the old contract's root) plus what the distributors it took over from in
    turn still owe; None when it took over from none.

    Refuses (ChainConfigError) when the old contract had a root proposed after the migration, or when the ledger
    lacks that epoch's tree or holds another root for it: the net leaves would be wrong."""
    address = distributor.functions.predecessor().call()
    if int(address, 16) == 0:
        return None
    epoch = int(distributor.functions.predecessorEpoch().call())
    if epoch == 0:
        return Predecessor(address, 0, {})  # the old distributor had no root: it owes nothing
    old = distributor_contract(chain, address)
    latest = int(old.functions.latestEpoch().call())
    if latest != epoch:
        raise ChainConfigError(
            f"{address}, which {distributor.address} took over from after epoch {epoch}, has had epoch {latest} "
            "proposed since: the old distributor must get no more roots (a guardian revokes one still waiting; "
            "the admin revokes its settler's role). Nothing was written or sent",
            "distributor",
        )
    active_epoch, root, *_ = old.functions.activeRoot().call()
    stored = _stored_tree(ledger, epoch)
    if stored is None or active_epoch != epoch or stored.tree.root_hex != Web3.to_hex(root):
        raise ChainConfigError(
            f"the ledger holds no tree for epoch {epoch} with the root {Web3.to_hex(root)} that {address} (the "
            f"predecessor of {distributor.address}) holds: settle the migrated distributor from the ledger that "
            "settled the old one. Nothing was written or sent",
            "lake",
        )
    tree = stored.tree
    owed = {account: tree.amount_units(account) for account in map(tree.account_at, range(len(tree)))}
    # The predecessor's leaves are net of its own predecessor's last root, which still owes its leaves too (A -> B
    # -> C): what every distributor before this one owes is added, or A's amounts were claimable twice.
    earlier = _predecessor_of_predecessor(ledger, chain, old)
    for account, units in ({} if earlier is None else earlier.owed_units).items():
        owed[account] = owed.get(account, 0) + units
    return Predecessor(address, epoch, owed)


def _predecessor_of_predecessor(ledger: Ledger, chain: Chain, old: Contract) -> Predecessor | None:
    """`read_predecessor` of the distributor `old`; None when it predates migrations (it answers no `predecessor()`,
    so it took over from none)."""
    try:
        old.functions.predecessor().call()
    except (ContractLogicError, BadFunctionCallOutput):
        return None
    return read_predecessor(ledger, chain, old)


def refuse_migrated_from(ledger: Ledger, chain: Chain, distributor: Contract) -> None:
    """Refuse (ChainConfigError) a settle to a distributor this ledger has migrated from: its leaves would be whole
    cumulative amounts, and every unit already owed by its successor would be claimable twice."""
    migration = ledger.recorder.read(
        lambda connection: _migration_from(connection, chain.chain_id, distributor.address), "read the migrations"
    )
    if migration is None:
        return
    epoch, predecessor_epoch, successors = migration
    successor = successors[0] if successors else f"the distributor epoch {epoch}'s net tree was written for"
    raise ChainConfigError(
        f"this ledger migrated from {distributor.address} to {successor} after epoch {predecessor_epoch} (`royalty "
        f"deploy --migrate-from`): the old distributor gets no more roots. Settle to {successor} instead (pass "
        "--distributor); the old one keeps paying what its last root owes. Nothing was written or sent",
        "distributor",
    )


def _migration_from(
    connection: duckdb.DuckDBPyConnection, chain_id: int, address: str
) -> tuple[int, int, list[str]] | None:
    """(epoch, predecessor epoch, successor contracts) of the ledger's migration from `address`; None if none."""
    if "settlement_migration" not in recorder.existing_tables(connection):
        return None
    row = connection.execute(
        f"""SELECT epoch, predecessor_epoch FROM {recorder.table('settlement_migration')}
            WHERE lower(predecessor) = lower(?) ORDER BY epoch LIMIT 1""",
        [address],
    ).fetchone()
    if row is None:
        return None
    epoch, predecessor_epoch = int(row[0]), int(row[1])
    tables = recorder.existing_tables(connection)
    successors = [
        str(record["contract"])
        for table in ("settlement_record", "settlement_intent")
        if table in tables
        for record in _frame(
            connection, f"SELECT contract FROM {recorder.table(table)} WHERE epoch = ? AND chain_id = ?",
            [epoch, chain_id],
        ).to_dicts()
    ]  # fmt: skip
    return epoch, predecessor_epoch, successors


def _write_batch(
    ledger: Ledger,
    chain: Chain,
    distributor: Contract,
    plan: SettlePlan,
    step: Any,
    tree_dir: Path | None,
    safe: str,
    batch_dir: Path | None,
) -> SettlementResult:
    """Write the tree (once), then the Safe batch funding and proposing it; nothing is signed or sent here."""
    if batch_dir is None:
        raise ChainConfigError("--via safe needs a folder for the batch: pass --safe-batch-dir", "safe_batch_dir")
    tree = plan.tree
    require(tree is not None and plan.funding is not None, "a Safe batch is written for a planned proposal")
    if tree.tree_snapshot is None:  # type: ignore[union-attr]
        step(_steps[2], 2, len(_steps))
        tree = _write_tree_once(ledger, tree)  # type: ignore[arg-type]
    base = _base(chain, distributor, plan, tree)  # type: ignore[arg-type]
    if tree_dir is not None:
        base["tree_path"] = str(write_dump(tree_dir, tree))  # type: ignore[arg-type]
    shortfall_units = plan.funding.shortfall_units  # type: ignore[union-attr]
    batch = safe_batch(chain, distributor, tree, shortfall_units, safe)  # type: ignore[arg-type]
    path = write_safe_batch(batch_dir, tree.epoch, batch)  # type: ignore[union-attr]
    base["notes"].append(
        f"import {path} in the Safe's Transaction Builder and execute it; then run `royalty settle` again to "
        "record the proposal"
    )
    return SettlementResult(SettleOutcome.safe_batch, **base, funded_units=shortfall_units, safe_batch_path=str(path))


def _base(chain: Chain, distributor: Contract, plan: SettlePlan, tree: EpochTree) -> dict:
    return {
        "epoch": tree.epoch,
        "root": tree.tree.root_hex,
        "total_units": tree.tree.total_amount_units,
        "leaf_count": len(tree.tree),
        "unaddressed_units": tree.unaddressed_units,
        "chain_id": chain.chain_id,
        "contract": distributor.address,
        "tree_snapshot": tree.tree_snapshot,
        "closed": plan.closed,
        "notes": list(plan.notes),
    }


def _nothing(chain: Chain, distributor: Contract, plan: SettlePlan) -> SettlementResult:
    return SettlementResult(
        SettleOutcome.nothing_to_settle,
        chain_id=chain.chain_id,
        contract=distributor.address,
        closed=plan.closed,
        notes=list(plan.notes),
    )


def _dry_run_result(chain: Chain, distributor: Contract, plan: SettlePlan) -> SettlementResult:
    """What a real run would do, from the plan alone (the proposal is preflighted when it is fundable)."""
    if plan.tree is None:
        return _nothing(chain, distributor, plan)
    base = _base(chain, distributor, plan, plan.tree)
    found = plan.found
    if found is not None and found["outcome"] == SettleOutcome.already_recorded:
        return SettlementResult(**base, **found)
    if found is not None:
        base["notes"].append(f"would record tx {found['tx_hash']}, already sent")
        return SettlementResult(SettleOutcome.dry_run, **base)
    shortfall_units = plan.funding.shortfall_units if plan.funding else 0
    if shortfall_units:
        base["notes"].append(f"would pull {shortfall_units} units from the treasury into the distributor")
    else:
        preflight(chain, _propose_call(distributor, plan.tree), f"proposeRoot(epoch {plan.tree.epoch})")
    return SettlementResult(SettleOutcome.dry_run, **base, funded_units=shortfall_units)


def _apply(
    ledger: Ledger,
    chain: Chain,
    distributor: Contract,
    plan: SettlePlan,
    step: Any,
    tree_dir: Path | None,
    funding_units_max: int | None,
) -> SettlementResult:
    """Write the tree (once), then fund, propose and record, or record a proposal already on the chain."""
    if plan.tree is None:
        return _nothing(chain, distributor, plan)
    tree = plan.tree
    if tree.tree_snapshot is None:
        step(_steps[2], 2, len(_steps))
        tree = _write_tree_once(ledger, tree)
    base = _base(chain, distributor, plan, tree)
    if tree_dir is not None:
        base["tree_path"] = str(write_dump(tree_dir, tree))
    if plan.found is not None:
        return _finish_found(ledger, chain, distributor, tree, base, plan.found, step)
    # One proposer at a time: under the lock the chain and the ledger are asked again, so a run that
    # waited for another one's proposal finds it (and records it) instead of proposing again.
    with ledger.step_lock(propose_step):
        found = _check_chain(ledger, chain, distributor, tree, plan.logs_from)
        if found is None:
            signed, shortfall_units = _fund_and_send(ledger, chain, distributor, tree, step, funding_units_max)
    if found is not None:
        return _finish_found(ledger, chain, distributor, tree, base, found, step)
    step(_steps[6], 6, len(_steps))
    receipt = wait_confirmed(chain, signed.tx_hash, f"proposeRoot(epoch {tree.epoch})")
    step(_steps[7], 7, len(_steps))
    recorded = _record(ledger, chain, tree, distributor, signed.tx_hash, receipt, SettleOutcome.proposed)
    return SettlementResult(**base, funded_units=shortfall_units, **recorded)


def _finish_found(
    ledger: Ledger, chain: Chain, distributor: Contract, tree: EpochTree, base: dict, found: dict, step: Any
) -> SettlementResult:
    """The epoch's proposal is already on the chain or in the node: record it (or report it recorded)."""
    if found["outcome"] == SettleOutcome.already_recorded:
        return SettlementResult(**base, **found)
    step(_steps[6], 6, len(_steps))
    receipt = wait_confirmed(chain, found["tx_hash"], f"proposeRoot(epoch {tree.epoch})")
    step(_steps[7], 7, len(_steps))
    recorded = _record(ledger, chain, tree, distributor, found["tx_hash"], receipt, SettleOutcome.recovered)
    return SettlementResult(**base, **recorded)


def _fund_and_send(
    ledger: Ledger, chain: Chain, distributor: Contract, tree: EpochTree, step: Any, funding_units_max: int | None
) -> tuple[SignedTx, int]:
    """Pull the distributor's shortfall from the treasury, sign the proposal, record the intent, send it
    (propose lock held). The settler's key holds no funds: `fund` moves tokens only treasury → distributor."""
    contract = distributor.address
    funding = _funding(chain, distributor, tree.tree.total_amount_units)
    check_funding(chain, distributor, tree.epoch, funding, funding_units_max)
    shortfall_units = funding.shortfall_units
    step(_steps[4], 4, len(_steps))
    if shortfall_units:
        transact(chain, distributor.functions.fund(shortfall_units), "fund the distributor from the treasury")
    step(_steps[5], 5, len(_steps))
    call = _propose_call(distributor, tree)
    action = f"proposeRoot(epoch {tree.epoch})"
    preflight(chain, call, action)
    signed = sign(chain, call, _replacement_nonce(ledger, chain, tree.epoch, contract))
    intent = {
        "epoch": tree.epoch,
        "chain_id": chain.chain_id,
        "contract": contract,
        "sender": chain.sender,
        "nonce": signed.nonce,
        "tx_hash": signed.tx_hash,
        "root": tree.tree.root_hex,
        "prepared_at": datetime.now(UTC),
    }
    _append_guarded(
        ledger, "settlement_intent", intent, settle_tables.intent_schema, tree.epoch, chain.chain_id, contract
    )
    broadcast(chain, signed)
    return signed, shortfall_units


def _replacement_nonce(ledger: Ledger, chain: Chain, epoch: int, contract: str) -> int | None:
    """The nonce of the epoch's recorded intent, if that nonce is still unused; None for the next one.

    A proposal that was recorded but never mined (dropped, or never sent) is replaced with the same nonce,
    so the old transaction, should it still reach a block, and its replacement can never both be mined.
    Once the sender's mined transactions have used that nonce (by another transaction: `_check_chain`
    found no proposal of ours), the old one can never be mined and the next nonce is safe. A nonce ahead of
    the account's next one (earlier transactions dropped) is a `NonceGapError`: a replacement could not be
    mined before the gap is filled, and a fresh nonce would let both be mined.
    """
    sender = chain.sender
    intents = [
        intent
        for intent in _read_records(ledger, "settlement_intent", epoch, chain.chain_id, contract)
        if intent["sender"].lower() == sender.lower()
    ]
    if not intents:
        return None
    intent = max(intents, key=lambda intent: intent["prepared_at"])
    nonce, next_nonce = int(intent["nonce"]), chain.w3.eth.get_transaction_count(sender, "latest")
    if next_nonce > nonce:
        return None
    if next_nonce < nonce:
        raise NonceGapError(epoch, intent["tx_hash"], nonce, next_nonce, sender)
    return nonce


def _propose_call(distributor: Contract, tree: EpochTree) -> Any:
    return distributor.functions.proposeRoot(
        tree.epoch, tree.tree.root, tree.tree.total_amount_units, bytes.fromhex(tree.ledger_digest[2:])
    )


def _funding(chain: Chain, distributor: Contract, total_units: int) -> Funding:
    if not chain.embedded and chain.signer is not None:
        # A funding transaction of a killed run may still be pending; count it before topping up again.
        wait_no_pending(chain)
    token = token_contract(chain, distributor)
    claimed_units = distributor.functions.totalClaimed().call()
    return Funding(total_units, claimed_units, token.functions.balanceOf(distributor.address).call())


def check_funding(
    chain: Chain,
    distributor: Contract,
    epoch: int,
    funding: Funding,
    funding_units_max: int | None,
    safe: str | None = None,
) -> None:
    """Refuse (`FundingRefusedError`, with the figures) a shortfall above the run's cap, or one the treasury
    has not approved or does not hold. Without a cap, funding is refused off a local chain."""
    shortfall_units = funding.shortfall_units
    if not shortfall_units:
        return
    figures = (
        f"the tree's total {funding.total_units} − claimed {funding.claimed_units} − the distributor's balance "
        f"{funding.balance_units} = {shortfall_units} units to fund"
    )
    if funding_units_max is None and chain.chain_id not in local_chain_ids:
        raise FundingRefusedError(
            epoch,
            f"{figures}, and this run has no funding cap: pass --funding-cap-units (the most one run may "
            "pull from the treasury) after checking the epoch's payables",
        )
    if funding_units_max is not None and shortfall_units > funding_units_max:
        raise FundingRefusedError(
            epoch,
            f"{figures}, above this run's cap of {funding_units_max} (--funding-cap-units): check the "
            "epoch's payables (`royalty statement`), then raise the cap for this run if they are right",
        )
    token = token_contract(chain, distributor)
    treasury = distributor.functions.treasury().call()
    allowance_units = token.functions.allowance(treasury, distributor.address).call()
    held_units = token.functions.balanceOf(treasury).call()
    if safe is not None and treasury == safe:
        allowance_units = shortfall_units  # the Safe's batch approves the distributor first
    if allowance_units < shortfall_units or held_units < shortfall_units:
        raise FundingRefusedError(
            epoch,
            f"{figures}, but the treasury {treasury} holds {held_units} and allows the distributor "
            f"{allowance_units}: have the treasury approve the distributor (ERC-20 approve) and hold the units",
        )


def _dry_run_tree(
    ledger: Ledger, checks: InputChecks, rules: RegistryRules | None = None, predecessor: Predecessor | None = None
) -> EpochTree | None:
    after = predecessor.epoch if predecessor is not None else 0  # a migrated distributor's epochs start after it
    owed = predecessor.owed_units if predecessor is not None else None
    net_of = predecessor.net_of if predecessor is not None else None
    latest = ledger.recorder.read(_latest_epoch, "read the latest epoch")
    if latest is not None:
        verify_settle_inputs(ledger, latest[0], checks)
    payables = ledger.recorder.read(
        lambda connection: _payables(connection, latest[0] if latest else 0), "read the payables"
    )
    plan, _ = plan_from_ledger(
        ledger, check_inputs=lambda prior, closing: verify_close_inputs(ledger, prior, closing, checks), rules=rules
    )
    if not plan.noop:
        new_rows = plan.payables.select(
            pl.lit(plan.epoch, pl.Int64).alias("epoch"), "recipient", "amount_micros", "payout_address"
        )
        payables = pl.concat([payables, new_rows.cast(payables.schema)])  # type: ignore[arg-type]
        return build_epoch_tree(plan.epoch, plan.closing_snapshot, payables, None, owed, net_of)
    if latest is None or latest[0] <= after:
        return None
    return _stored_tree(ledger, latest[0]) or build_epoch_tree(*latest, payables, None, owed, net_of)


def _check_chain(ledger: Ledger, chain: Chain, distributor: Contract, tree: EpochTree, logs_from: int) -> dict | None:
    """What the chain already holds for the epoch, read-only: `already_recorded` (with the recorded tx),
    `recovered` (a tx to wait for and record), or None to go on and propose. Raises on a mismatch.

    Another run may propose and record meanwhile, so the ledger is read first and the chain after it, at one
    block: a run records its intent before sending and its record after the proposal is mined, so what the
    ledger shows the chain shows too, and the contract's epoch and its RootProposed logs agree."""
    epoch, root, contract = tree.epoch, tree.tree.root_hex, distributor.address
    records = _read_records(ledger, "settlement_record", epoch, chain.chain_id, contract)
    intents = _read_records(ledger, "settlement_intent", epoch, chain.chain_id, contract)
    head = chain.w3.eth.block_number
    proposals = _proposals(chain, distributor, epoch, logs_from, head)
    if records:
        record = records[-1]
        if not any(_hex(p["transactionHash"]) == record["tx_hash"] for p in proposals):
            raise ChainLedgerMismatchError(
                epoch,
                f"the ledger records root {record['root']} in tx {record['tx_hash']}, which the chain does "
                "not show (wrong node, or the chain was reset)",
                chain.chain_id,
                contract,
            )
        outcome = SettleOutcome.already_recorded
        return {"outcome": outcome, "tx_hash": record["tx_hash"], "block_number": record["block_number"]}
    if proposals:
        last = proposals[-1]
        if _hex(last["args"]["root"]) != root:
            raise ChainLedgerMismatchError(
                epoch,
                f"the chain holds root {_hex(last['args']['root'])} (tx {_hex(last['transactionHash'])}) but "
                f"the ledger's tree has root {root}",
                chain.chain_id,
                contract,
            )
        revoked = _revoked(chain, distributor, epoch, root, logs_from, head)
        if revoked is not None:
            raise ChainLedgerMismatchError(
                epoch,
                f"the guardian revoked root {root} in tx {_hex(revoked['transactionHash'])}; find out why "
                "before proposing this epoch again",
                chain.chain_id,
                contract,
            )
        return {"outcome": SettleOutcome.recovered, "tx_hash": _hex(last["transactionHash"])}
    for intent in intents:
        if _known_to_node(chain, intent["tx_hash"]):
            # Sent by a killed run, or by another run meanwhile, and not in the head read above.
            return {"outcome": SettleOutcome.recovered, "tx_hash": intent["tx_hash"]}
    latest_epoch = distributor.functions.latestEpoch().call(block_identifier=head)
    if latest_epoch >= epoch:
        raise ChainLedgerMismatchError(
            epoch,
            f"the contract already holds epoch {latest_epoch} but no RootProposed for epoch {epoch}; "
            "another ledger settles to it",
            chain.chain_id,
            contract,
        )
    return None


def _known_to_node(chain: Chain, tx_hash: str) -> bool:
    """Whether the node holds `tx_hash` pending or mined successfully; a reverted one changed nothing."""
    try:
        tx = chain.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
    except Exception:  # TransactionNotFound, or a node that answers null
        return False
    if tx is None:
        return False
    if tx.get("blockNumber") is None:
        return True
    return chain.w3.eth.get_transaction_receipt(tx_hash)["status"] == 1  # type: ignore[arg-type]


def _record(
    ledger: Ledger,
    chain: Chain,
    tree: EpochTree,
    distributor: Contract,
    tx_hash: str,
    receipt: dict,
    outcome: SettleOutcome,
) -> dict:
    contract = distributor.address
    events = distributor.events.RootProposed().process_receipt(receipt, errors=DISCARD)
    roots = {(event["args"]["epoch"], _hex(event["args"]["root"])) for event in events}
    if (tree.epoch, tree.tree.root_hex) not in roots:
        raise ChainLedgerMismatchError(
            tree.epoch,
            f"tx {tx_hash} succeeded but proposed {sorted(roots) or 'nothing'}, not root {tree.tree.root_hex}",
            chain.chain_id,
            contract,
        )
    row = {
        "epoch": tree.epoch,
        "root": tree.tree.root_hex,
        "total_units": tree.tree.total_amount_units,
        "tx_hash": tx_hash,
        "block_number": receipt["blockNumber"],
        "block_hash": _hex(receipt["blockHash"]),
        "chain_id": chain.chain_id,
        "contract": contract,
        "closing_snapshot": tree.closing_snapshot,
        "tree_snapshot": tree.tree_snapshot or 0,
        "outcome": outcome.value,
        "recorded_at": datetime.now(UTC),
    }
    with ledger.step_lock(record_step):
        recorded = _read_records(ledger, "settlement_record", tree.epoch, chain.chain_id, contract)
        if recorded:  # another run recorded it while this one waited for the confirmations
            return {
                "outcome": SettleOutcome.already_recorded,
                "tx_hash": recorded[-1]["tx_hash"],
                "block_number": recorded[-1]["block_number"],
            }
        _append_guarded(
            ledger, "settlement_record", row, settle_tables.record_schema, tree.epoch, chain.chain_id, contract
        )
    return {"outcome": outcome, "tx_hash": tx_hash, "block_number": receipt["blockNumber"]}
