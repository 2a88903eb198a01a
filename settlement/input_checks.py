"""Money moves only on verified data: the checks `close-epoch` and `settle` run before they write or send.

Two checks, each with an override for an operator who has investigated (`InputChecks`):

- every data file the step reads has the size the catalog recorded and the SHA-256 the ledger recorded
  when it added the file (`file_checksum`); only the files the step reads are hashed: the epoch's new
  events and reversals (and, when there are reversals, the earlier events they may name), the registry
  tables, and the settlement's own tables;
- every row of the `reconciliation` view is zero.

A listed data file that is missing is refused whatever the overrides say: there is nothing to read.
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import duckdb
import polars as pl
import pyarrow as pa

from ledger import recorder
from ledger.errors import LedgerDataFileMissingError
from ledger.ledger import Ledger
from ledger.query import define_views
from ledger.verify import check_files
from settlement.engine.epochs import PriorState
from settlement.exceptions import UnreconciledLedgerError, UnverifiedInputError
from settlement.views import settlement_view_statements

log = logging.getLogger("royalty.settlement")

# Read whole by `read_prior` (and `settle`): small, one file per epoch at most.
_settlement_state_tables = (
    "settlement_payable",
    "settlement_suspense_item",
    "settlement_suspense_release",
    "settlement_reversal",
    "settlement_file_sum",
)
_registry_tables = ("contributor_registered", "model_registered", "split_policy_set")


@dataclass(frozen=True)
class InputChecks:
    """Which refusals an operator has overridden (flags `--accept-unverified-files`, `--accept-unreconciled`)."""

    accept_unverified_files: bool = False
    accept_unreconciled: bool = False


def listed_files(
    connection: duckdb.DuckDBPyConnection,
    table: str,
    snapshot: int | None = None,
    added_after_snapshot: int | None = None,
) -> list[tuple[str, int]]:
    """(absolute path, size in bytes) of `table`'s data files as of `snapshot` (default: now), optionally
    only those added after `added_after_snapshot`."""
    if added_after_snapshot is None:
        return recorder.listed_files(connection, table, snapshot)
    return recorder.files_added_after(connection, table, added_after_snapshot, snapshot)


def close_input_files(connection: duckdb.DuckDBPyConnection, prior: PriorState, closing: int) -> list[tuple[str, int]]:
    """Every data file closing the epoch after `prior` at snapshot `closing` reads (`ledger_io.read_inputs`)."""
    files = listed_files(connection, "inference_reversed", closing, prior.closing_snapshot)
    # With reversals, their originals are looked up among every event up to the closing snapshot.
    metered_since = None if files else prior.closing_snapshot
    files += listed_files(connection, "inference_metered", closing, metered_since)
    for table in _registry_tables:
        files += listed_files(connection, table, closing)
    for table in _settlement_state_tables:
        files += listed_files(connection, table)
    return files


def settle_input_files(connection: duckdb.DuckDBPyConnection, epoch: int) -> list[tuple[str, int]]:
    """The data files `settle` reads for `epoch`'s tree: every payable, and the proofs holding the epoch's rows."""
    files = listed_files(connection, "settlement_payable")
    proofs = listed_files(connection, "settlement_proof")
    missing = [path for path, _ in proofs if not recorder.data_file_exists(path)]
    if missing:  # the query below would read them: name them instead
        raise LedgerDataFileMissingError(missing, f"settling epoch {epoch}")
    proof_files = {
        path
        for (path,) in connection.execute(
            f"SELECT DISTINCT filename FROM {recorder.table('settlement_proof')} WHERE epoch = ?", [epoch]
        ).fetchall()
    }
    return files + [(path, size) for path, size in proofs if path in proof_files]


def verify_files(ledger: Ledger, files: Iterable[tuple[str, int]], checks: InputChecks, what: str) -> list[str]:
    """Refuse unless every file is intact; return the problems an override let through (logged as warnings)."""
    files = list(files)
    missing = [path for path, _ in files if not recorder.data_file_exists(path)]
    if missing:
        raise LedgerDataFileMissingError(missing, what)
    problems = check_files(ledger, files).problems
    if problems and not checks.accept_unverified_files:
        raise UnverifiedInputError(what, problems)
    for problem in problems:
        log.warning(f"{what}: accepted with --accept-unverified-files: {problem}")
    return problems


def unreconciled_rows(ledger: Ledger, file_sums: list[pa.Table] | None = None) -> list[tuple[str, int, int, int]]:
    """The non-zero rows of the `reconciliation` view (none on a ledger that never closed an epoch).

    The metered data files of closed epochs that no close recorded yet are read once (view
    `metered_file_sums_unrecorded`) and the reconciliation is checked over those figures; with `file_sums` (a close),
    they are appended to it for the close to record with its epoch (`settlement_file_sum`)."""

    def read(connection: duckdb.DuckDBPyConnection) -> list[tuple[str, int, int, int]]:
        define_views(ledger, only=("reconciliation",))  # on this connection: a retry may run on a fresh one
        try:
            return _reconciled_with_file_sums(connection, [] if file_sums is None else file_sums)
        except duckdb.CatalogException:  # no settlement tables yet: nothing was settled to reconcile
            return []

    # `Ledger.reading`: its lock and retries; a missing data file's error stays as it is, for close-epoch to name.
    return ledger.reading(lambda: read(ledger.connection), "read the reconciliation")


_unreconciled_sql = (
    "SELECT check_name, epoch, items_off, difference_micros FROM reconciliation "
    "WHERE items_off <> 0 OR difference_micros <> 0 ORDER BY epoch, check_name"
)


def _reconciled_with_file_sums(
    connection: duckdb.DuckDBPyConnection, file_sums: list[pa.Table]
) -> list[tuple[str, int, int, int]]:
    """The unreconciled rows, reading the unrecorded files once: their figures are held in a temporary table that the
    view `metered_file_sums_unrecorded` reads for this query (then defined again as it was)."""
    try:
        connection.execute(f"CREATE OR REPLACE TEMP TABLE {_unrecorded_now} AS {_unrecorded_sums_sql(connection)}")
        connection.execute(
            f"CREATE OR REPLACE TEMP VIEW metered_file_sums_unrecorded AS SELECT * FROM {_unrecorded_now}"
        )
        rows = connection.execute(_unreconciled_sql).fetchall()
        file_sums.clear()  # a retried read replaces what an earlier attempt found
        file_sums.append(
            connection.execute(
                f"SELECT path, event_count, fee_micros, sha256 FROM {_unrecorded_now}"
            ).fetch_arrow_table()
        )
        return rows
    finally:
        for statement in settlement_view_statements():  # the view reads the files again, for any later query
            if "metered_file_sums_unrecorded AS" in statement:
                connection.execute(statement.rstrip(";"))
        connection.execute(f"DROP TABLE IF EXISTS {_unrecorded_now}")
        connection.unregister(_summed_now)


def _unrecorded_sums_sql(connection: duckdb.DuckDBPyConnection) -> str:
    """A query of the rows of `metered_file_sums_unrecorded`. The files are summed here, one small scan each (their
    event count and fee sum: 0.9 s of CPU for 100M events, where DuckDB's scan of the table grouped by file name
    took 3.6 s), unless a deletion touched one: then the view's own scan, which leaves deleted rows out."""
    listed = connection.execute(
        "SELECT path, filename, arrived_snapshot, sha256, deleted_from FROM metered_files_unrecorded"
    ).pl()
    if listed["deleted_from"].any():
        return "SELECT * FROM metered_file_sums_unrecorded"
    sums = recorder.row_counts_and_sums(listed["filename"].to_list(), "fee_micros")
    sums = sums.rename({"rows": "event_count", "sum": "fee_micros"})
    summed = pl.concat([listed.select("path", "arrived_snapshot"), sums, listed.select("sha256")], how="horizontal")
    connection.register(_summed_now, summed.to_arrow())
    return f"SELECT * FROM {_summed_now}"


_summed_now = "reconciled_file_sums_read"
_unrecorded_now = "reconciled_file_sums_now"


def verify_reconciled(
    ledger: Ledger, checks: InputChecks, what: str, file_sums: list[pa.Table] | None = None
) -> list[str]:
    """Refuse unless every reconciliation row is zero; return what an override let through (logged). `file_sums`:
    see `unreconciled_rows`."""
    rows = unreconciled_rows(ledger, file_sums)
    if rows and not checks.accept_unreconciled:
        raise UnreconciledLedgerError(what, rows)
    accepted = [
        f"{check} in epoch {epoch}: {items} item(s) off by {micros} micros" for check, epoch, items, micros in rows
    ]
    for row in accepted:
        log.warning(f"{what}: accepted with --accept-unreconciled: reconciliation {row}")
    return accepted


def verify_close_inputs(
    ledger: Ledger, prior: PriorState, closing: int, checks: InputChecks, file_sums: list[pa.Table] | None = None
) -> list[str]:
    """Before an epoch is closed: its input files, then the reconciliation of what earlier epochs recorded.
    `file_sums` receives the figures of the metered files reconciled for the first time (`unreconciled_rows`)."""
    what = f"closing epoch {prior.epoch + 1}"
    files = ledger.reading(lambda: close_input_files(ledger.connection, prior, closing), f"list the files of {what}")
    return verify_files(ledger, files, checks, what) + verify_reconciled(ledger, checks, what, file_sums)


def verify_settle_inputs(ledger: Ledger, epoch: int, checks: InputChecks) -> list[str]:
    """Before `settle` builds, writes or proposes `epoch`'s tree: the files it reads, then reconciliation."""
    what = f"settling epoch {epoch}"
    files = ledger.reading(lambda: settle_input_files(ledger.connection, epoch), f"list the files of {what}")
    return verify_files(ledger, files, checks, what) + verify_reconciled(ledger, checks, what)


def missing_listed_files(ledger: Ledger) -> list[str]:
    """Every data file the catalog lists now that is not in the data folder (only `stat`s, reads nothing)."""

    def listed_now(connection: duckdb.DuckDBPyConnection) -> list[str]:
        tables = sorted(recorder.existing_tables(connection))
        return [path for table in tables for path, _ in listed_files(connection, table)]

    listed = ledger.recorder.read(listed_now, "list the ledger's data files")
    return [path for path in listed if not recorder.data_file_exists(path)]
