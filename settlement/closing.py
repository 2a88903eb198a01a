"""Closing an epoch: `close_epoch` (the use case `settlement.use_cases.close_epoch` names) and its summary."""

from dataclasses import dataclass, field

import duckdb
import polars as pl
import pyarrow as pa

from ledger.errors import LedgerDataFileMissingError
from ledger.ledger import Ledger
from settlement import holders, tables
from settlement.engine.authority import RegistryRules
from settlement.engine.figures import EpochFigures, figure_values
from settlement.input_checks import InputChecks, missing_listed_files, verify_close_inputs
from settlement.ledger_io import Progress, plan_from_ledger, write_plan_once


@dataclass(frozen=True)
class EpochSummary(EpochFigures):
    """What closing an epoch did (or, with `dry_run`, would do): its figures (`EpochFigures`) and more."""

    posting_count: int
    recipient_count: int
    unaddressed_recipients: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    noop: bool = False
    dry_run: bool = False
    written_snapshot: int | None = None
    # Failed input checks an operator let through (--accept-unverified-files, --accept-unreconciled).
    accepted_problems: list[str] = field(default_factory=list)
    # Another process closed this epoch while this one planned it: nothing was written by this run.
    closed_by_another: bool = False
    # Closed from the appends' rollups (`from_rollups`): (model, hour) cells read from rollups and from events;
    # None when the events were read (asked to, or an append of the range wrote no rollups).
    rollup_cells: tuple[int, int] | None = None
    # The addresses never paid as holders in this epoch (lowercase, as `settlement_epoch_blocks` records them; the
    # zero address and each token besides); None when the epoch paid no token holders.
    holder_excluded: list[str] | None = None


def close_epoch(
    ledger: Ledger,
    dry_run: bool = False,
    progress: Progress | None = None,
    checks: InputChecks | None = None,
    rules: RegistryRules | None = None,
    registry_contract: str | None = None,
    from_rollups: bool = False,
) -> EpochSummary:
    """Close the next epoch over every event committed since the last one; write it unless `dry_run`.

    With no new events, reversals or suspense releases it writes nothing and says so (`noop`).
    `progress(step, done, total)` is called as the steps go. Raises `EpochConflictError` when another
    process closed an epoch meanwhile (nothing written; run again). Before reading the epoch's inputs it
    checks them (`settlement.input_checks`): `UnverifiedInputError` when a file it reads fails its
    checksum, `UnreconciledLedgerError` when a reconciliation row is non-zero (each unless `checks`
    accepts it), `LedgerDataFileMissingError` when a listed file is gone; nothing is written then.
    `rules` judge the operator registry's records (`settlement.engine.authority`; default: the open defaults);
    the records they refuse become dead letters in the epoch's transaction. With `registry_contract` (on-chain
    mode) the registry is that contract's as of the synced block, recorded with the epoch; Kafka registry
    records are ignored; `RegistryBehindError` while that block is earlier than the epoch's latest event.
    A policy naming `holders:<token>` pays the token's holders by time-weighted balance over the epoch's block
    range, recorded with the epoch (`HoldersBehindError` while the holder sync ends before it); the addresses
    in `rules.holder_excluded` are never paid as holders. `from_rollups` reads the new events from the appends'
    rollups where that is exact (`settlement.rollups`: the same plan), from the events elsewhere.
    """
    checks = checks or InputChecks()
    if not ledger.read_only:
        ledger.ensure_tables()  # a ledger opened before the settlement tables were registered
    accepted: list[str] = []
    file_sums: list[pa.Table] = []  # the metered files reconciled for the first time, recorded with the epoch

    def check_inputs(prior, closing: int) -> None:
        accepted.extend(verify_close_inputs(ledger, prior, closing, checks, file_sums))

    def plan_once() -> tuple:
        accepted.clear()  # a read retried after meeting another writer's commit checks again
        file_sums.clear()
        return plan_from_ledger(ledger, progress, check_inputs, rules, registry_contract, from_rollups)

    try:
        plan, extra = ledger.reading(plan_once, "plan the next epoch")
    except (FileNotFoundError, duckdb.IOException) as error:
        # A file outside the checked set (or removed since): name every missing one, not polars' traceback.
        missing = missing_listed_files(ledger)
        if not missing:
            raise
        raise LedgerDataFileMissingError(missing, "closing the next epoch") from error
    written = None
    closed_by_another = False
    if not dry_run and not plan.noop:
        _record_file_sums(extra["extra_rows"], file_sums, plan.epoch)
        written = write_plan_once(ledger, plan, extra["reversals"], extra["registry_refused"], extra["extra_rows"])
        closed_by_another = written is None
    if progress:
        progress("done", 5, 5)
    unaddressed = plan.payables.filter(pl.col("payout_address").is_null())["recipient"].to_list()
    return EpochSummary(
        **figure_values(plan),
        posting_count=plan.postings.height,
        recipient_count=plan.payables.height,
        unaddressed_recipients=unaddressed,
        problems=plan.problems,
        noop=plan.noop,
        dry_run=dry_run,
        written_snapshot=written,
        accepted_problems=accepted,
        closed_by_another=closed_by_another,
        rollup_cells=extra["rollup_cells"],
        holder_excluded=_holder_excluded(extra["extra_rows"]),
    )


def _record_file_sums(extra_rows: dict[str, pa.Table], file_sums: list[pa.Table], epoch: int) -> None:
    """Record, with the epoch, the figures of the metered files its reconciliation read for the first time."""
    if file_sums and file_sums[0].num_rows:
        rows = file_sums[0]
        epochs = pa.array([epoch] * rows.num_rows, pa.int64())
        extra_rows[tables.file_sum_table] = rows.add_column(0, "epoch", epochs).cast(tables.file_sum_schema)


def _holder_excluded(extra_rows: dict) -> list[str] | None:
    blocks = extra_rows.get(holders.epoch_blocks_table)
    if blocks is None:
        return None
    return [address for address in str(blocks["excluded"][0].as_py()).split(",") if address]


def closed_by_another_message(epoch: int) -> str:
    """What a closer that lost the race says (exit 0: the epoch is closed, once)."""
    return (
        f"epoch {epoch} was closed by another process; nothing written by this run "
        "(`royalty sql` on `settlement_epoch` shows its figures)"
    )
