"""Time travel by epoch, and the statements that attach the ledger read-only from any DuckDB client."""

import duckdb

from ledger.connection import LedgerLocation, attach_options, catalog_alias
from ledger.errors import LedgerError
from ledger.extensions import extension_directory
from ledger.ledger import Ledger
from ledger.object_store import secret_statements, secret_statements_redacted
from ledger.query import analyst_view_statements
from ledger.redact import dsn_password, without_password
from schemas.errors import require


class EpochNotClosedError(LedgerError):
    """`--as-of-epoch N` names an epoch the ledger has not closed."""

    def __init__(self, epoch: int, last_epoch: int | None) -> None:
        self.epoch = epoch
        self.last_epoch = last_epoch
        closed = f"the last closed epoch is {last_epoch}" if last_epoch else "no epoch has been closed yet"
        super().__init__(
            f"epoch `{epoch}` is not closed on this ledger ({closed}); "
            'close it with `royalty close-epoch`, or pick an earlier one (`royalty sql "SELECT * FROM epochs"`)'
        )


def closing_snapshot(ledger: Ledger, epoch: int) -> int:
    """Epoch `epoch`'s closing snapshot; `EpochNotClosedError` when the ledger has not closed it."""
    table = f"{catalog_alias}.main.settlement_epoch"
    try:
        row = ledger.connection.execute(f"SELECT closing_snapshot FROM {table} WHERE epoch = ?", [epoch]).fetchone()
        last = ledger.connection.execute(f"SELECT max(epoch) FROM {table}").fetchone()[0]
    except duckdb.CatalogException:  # no epoch was ever closed: the settlement tables do not exist yet
        raise EpochNotClosedError(epoch, None) from None
    if row is None:
        raise EpochNotClosedError(epoch, last)
    return int(row[0])


def epoch_snapshot(ledger: Ledger, epoch: int) -> int:
    """The snapshot that wrote epoch `epoch`: its events, postings and payables, and nothing of later epochs.

    The epoch's own rows are committed one snapshot after its `closing_snapshot`, so time travel to the
    closing snapshot itself would show the epoch's events but not the epoch; the writing snapshot shows both.
    """
    closing = closing_snapshot(ledger, epoch)
    (written,) = ledger.connection.execute(
        f"SELECT min(snapshot_id) FROM ducklake_table_changes('{catalog_alias}', 'main', 'settlement_epoch', ?, ?) "
        "WHERE epoch = ? AND change_type = 'insert'",
        [closing, ledger.current_snapshot(), epoch],
    ).fetchone()
    require(written is not None, f"epoch {epoch} is in settlement_epoch but no snapshot inserted it")
    return int(written)


def defined_view_statements(ledger: Ledger) -> list[str]:
    """The analyst views' CREATE statements that succeed on this ledger (a view over a missing table is left out)."""
    defined = []
    for statement in analyst_view_statements():
        try:
            ledger.connection.execute(statement.rstrip(";"))
        except duckdb.CatalogException:
            continue
        defined.append(statement.rstrip(";") + ";")
    return defined


def attach_statements(ledger: Ledger, snapshot_version: int | None = None) -> list[str]:
    """DuckDB statements that attach `ledger` read-only (and define the analyst views) in any DuckDB 1.4 client.

    Extensions load from the `duckdb-ext-*` wheels' folder, never from the network.
    """
    location: LedgerLocation = ledger.location
    options = attach_options(location, read_only=True, snapshot_version=snapshot_version)
    return [
        f"SET extension_directory = {_literal(extension_directory())};",
        "SET autoinstall_known_extensions = false;",
        "LOAD ducklake;",
        "LOAD sqlite;" if location.backend == "sqlite" else "LOAD postgres;",
        *_password_note(location),
        *_s3_note(location),
        f"ATTACH {_literal('ducklake:' + without_password(location.catalog))} AS {catalog_alias} "
        f"({', '.join(options)});",
        f"USE {catalog_alias};",
        *defined_view_statements(ledger),
    ]


def _password_note(location: LedgerLocation) -> list[str]:
    """A comment saying where the catalog password comes from, when the printed ATTACH leaves it out."""
    if dsn_password(location.catalog) is None:
        return []
    return [
        "-- The catalog password is not printed: libpq reads it from a passfile (~/.pgpass or PGPASSFILE), "
        "a service (service=NAME in PGSERVICEFILE) or PGPASSWORD in the client's environment."
    ]


def _s3_note(location: LedgerLocation) -> list[str]:
    """For an `s3://` data path: httpfs, and the client's S3 secret to create (its secret key is never printed)."""
    statements = secret_statements(location.data_path)
    if not statements:
        return []
    secret = secret_statements_redacted(location.data_path)
    return [
        "LOAD httpfs;",
        "-- The data files are on S3: create the secret with your key (the secret key is not printed), e.g.",
        f"-- {secret};",
    ]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
