"""Which DuckDB errors of a PostgreSQL catalog are an outage (retried), not a refusal of the work.

The real outage is `tests/faults/test_catalog_outage.py`: PostgreSQL stopped under two ingest workers.
There a COMMIT whose connection died failed with libpq giving no text at all, which ingest took for a
permanent error and stopped on; these pin the wording DuckDB used.
"""

import duckdb
import pytest

from ledger.errors import LedgerCatalogUnavailableError
from ledger.ledger import _ledger_error

location = "postgres:dbname=royalty host=127.0.0.1"


@pytest.mark.parametrize(
    "message",
    [
        'TransactionContext Error: Failed to commit: Failed to execute query "ROLLBACK": ',
        'Failed to execute query "COMMIT": \nserver closed the connection unexpectedly',
        "IO Error: Unable to connect to Postgres at host=127.0.0.1: connection refused",
        "TransactionContext Error: Failed to get data file list from DuckLake: Current transaction is aborted "
        "(please ROLLBACK)",
    ],
)
def test_a_catalog_connection_that_died_is_a_transient_outage(message: str) -> None:
    typed = _ledger_error(duckdb.TransactionException(message), "append", location)
    assert isinstance(typed, LedgerCatalogUnavailableError) and typed.transient


@pytest.mark.parametrize(
    "message",
    [
        'TransactionContext Error: Failed to commit: Failed to execute query "INSERT": ERROR: value too long',
        "Binder Error: Referenced column \"nope\" not found in FROM clause!",
    ],
)
def test_a_refused_statement_is_not_retried(message: str) -> None:
    typed = _ledger_error(duckdb.TransactionException(message), "append", location)
    assert not isinstance(typed, LedgerCatalogUnavailableError) and not typed.transient
