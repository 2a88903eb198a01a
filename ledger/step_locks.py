"""One writer per named step (closing an epoch, writing its tree, proposing, recording, syncing claims).

A step checks a precondition ("epoch 7 is not closed yet") and then appends. On a PostgreSQL catalog two
processes that both check before either commits both pass, and DuckLake commits both (concurrent inserts do
not conflict): epoch 1 was recorded four times by four concurrent `close-epoch`. So a writer holds the
step's lock while it re-checks and appends; a second writer waits for it, then re-reads and finds the step
done. The lock is a PostgreSQL advisory lock on a PostgreSQL catalog (the mechanism of
`ledger.partition_locks`, on a connection of its own), and an exclusive `flock` on a file beside the
catalog on a SQLite catalog (one machine by construction). Either way it dies with the process holding it.
"""

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from ledger.errors import LedgerBusyError, LedgerStorageError
from ledger.partition_locks import PartitionLocks, lock_wait_s_max, step_lock_key

# How often a writer waiting for a SQLite catalog's step lock file tries again.
_file_lock_poll_s = 0.05


class StepLocks:
    """The step locks of one ledger (`Ledger.step_lock` holds them)."""

    def __init__(self, backend: str, catalog: str, location: str) -> None:
        self._location = location
        self._advisory = PartitionLocks(catalog.removeprefix("postgres:"), location) if backend == "postgres" else None
        self._folder = None if backend == "postgres" else Path(catalog.removeprefix("sqlite:")).parent

    @contextmanager
    def holding(self, name: str) -> Iterator[None]:
        """Hold step `name`'s lock for the block, waiting up to `lock_wait_s_max` for another holder."""
        if self._advisory is not None:
            with self._advisory.holding_keys([step_lock_key(name)], f"step `{name}`"):
                yield
            return
        with self._file_lock(name):
            yield

    def close(self) -> None:
        if self._advisory is not None:
            self._advisory.close()

    @contextmanager
    def _file_lock(self, name: str) -> Iterator[None]:
        path = self._folder / f".step-{name}.lock"  # type: ignore[operator]
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise LedgerStorageError(str(path), error.errno, error.strerror or str(error)) from error
        try:
            deadline = time.monotonic() + lock_wait_s_max
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LedgerBusyError(
                            self._location, 1, f"step `{name}` stayed locked by another writer for {lock_wait_s_max} s"
                        ) from None
                    time.sleep(_file_lock_poll_s)
            yield
        finally:
            with suppress(OSError):
                os.close(descriptor)  # closing the descriptor releases the lock
