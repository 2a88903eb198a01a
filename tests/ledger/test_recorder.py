"""The recorder API owns the ledger's lock and retries (`ledger.recorder`, ledger/recorder.py): a read that meets
another writer's lock is tried again, under the ledger's lock, and any other DuckDB error is a typed `LedgerError`;
the ledger's one retry loop (`ledger.ledger.retried`) behaves as each of its users needs."""

import threading
from pathlib import Path

import duckdb
import pytest

from ledger import Ledger, LedgerBusyError, LedgerError, constants
from ledger.ledger import Retry, retried, retrying_contention
from tests.support.ledger_batches import append_in_batches, sample_messages

_locked = "IO Error: Could not set lock on file: database is locked"


class _LockedFor:
    """A ledger connection whose first `times` statements meet another writer's SQLite lock."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, times: int) -> None:
        self._connection, self.times, self.statements = connection, times, 0

    def execute(self, *args: object) -> duckdb.DuckDBPyConnection:
        self.statements += 1
        if self.statements <= self.times:
            raise duckdb.IOException(_locked)
        return self._connection.execute(*args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._connection, name)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recorder") / "lake"
    with Ledger.open(path) as ledger:
        append_in_batches(ledger, sample_messages(30), 0, 30)
    return path


def test_a_recorder_read_meeting_another_writers_lock_is_tried_again(lake: Path) -> None:
    with Ledger.open_read_only(lake) as ledger:
        expected = ledger.recorder.current_snapshot()
        flaky = _LockedFor(ledger.connection, times=2)
        ledger._connection = flaky  # type: ignore[assignment]
        assert ledger.recorder.current_snapshot() == expected
        assert flaky.statements == 3


def test_a_recorder_read_holds_the_ledgers_lock(lake: Path) -> None:
    """Another thread cannot take the ledger's lock (an append, a stored-offsets read) while a recorder read runs."""
    taken_elsewhere: list[bool] = []

    def work(connection: duckdb.DuckDBPyConnection) -> int:
        other = threading.Thread(target=lambda: taken_elsewhere.append(ledger._lock.acquire(blocking=False)))
        other.start()
        other.join()
        return connection.execute("SELECT 1").fetchall()[0][0]

    with Ledger.open_read_only(lake) as ledger:
        assert ledger.recorder.read(work, "read under the lock") == 1
    assert taken_elsewhere == [False]


def test_a_recorder_error_is_a_typed_ledger_error_naming_what_failed(lake: Path) -> None:
    with Ledger.open_read_only(lake) as ledger, pytest.raises(LedgerError, match="read the ledger failed") as raised:
        ledger.recorder.frame("SELECT * FROM no_such_table")
    assert isinstance(raised.value.__cause__, duckdb.CatalogException)


def test_a_recorder_read_locked_past_the_bound_is_ledger_busy(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "commit_attempts_max", 3)
    monkeypatch.setattr(constants, "commit_backoff_s_min", 0.0001)
    with Ledger.open_read_only(lake) as ledger:
        flaky = _LockedFor(ledger.connection, times=10)
        ledger._connection = flaky  # type: ignore[assignment]
        with pytest.raises(LedgerBusyError):
            ledger.recorder.existing_tables()
        assert flaky.statements == 3


def test_the_retry_loop_raises_a_declined_error_at_once_and_maps_the_last_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """`retried`: `Retry.no` raises at the first attempt; past `commit_attempts_max` attempts the last error is raised
    as it is, or as `exhausted` maps it; `retrying_contention` retries only another writer's lock."""
    monkeypatch.setattr(constants, "commit_attempts_max", 4)
    monkeypatch.setattr(constants, "commit_backoff_s_min", 0.0001)
    attempts: list[int] = []

    def failing(error: Exception):
        def work() -> None:
            attempts.append(1)
            raise error

        return work

    with pytest.raises(ValueError):
        retried(failing(ValueError("no")), lambda _: Retry.no)
    assert len(attempts) == 1
    attempts.clear()
    with pytest.raises(KeyError):
        retried(failing(ValueError("again")), lambda _: Retry.now, exhausted=lambda error: KeyError(str(error)))
    assert len(attempts) == 4
    attempts.clear()
    with pytest.raises(duckdb.IOException):
        retrying_contention(failing(duckdb.IOException(_locked)))
    assert len(attempts) == 4
    attempts.clear()
    with pytest.raises(duckdb.CatalogException):
        retrying_contention(failing(duckdb.CatalogException("no such table")))
    assert len(attempts) == 1
