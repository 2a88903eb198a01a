"""Writers on a PostgreSQL catalog take turns per partition, so the offsets fence cannot be raced.

An append checks that the ledger's stored offset of each partition it covers is not past the
batch's first offset, then commits. Two writers that both check before either commits would
both pass, and DuckLake commits the second too (concurrent inserts do not conflict): the range
would be stored twice. On a PostgreSQL catalog every append therefore holds a PostgreSQL
advisory lock per (topic, partition), taken on a connection of its own before its DuckLake
transaction begins and released after it ends: the second writer waits, then its transaction
sees the first one's offsets and the fence refuses the stale batch. (On a SQLite catalog the
database lock already turns the race into a retry that the fence refuses.)

The same mechanism serves any named step that must have one writer (`step_lock_key`, used by
`ledger.step_locks` for the settlement steps), on a connection of its own.
"""

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress

from ledger.errors import LedgerBusyError, LedgerCatalogUnavailableError
from ledger.redact import redact

# Namespaces this project's advisory locks apart from any other user of the database.
_lock_namespace = 0x524F59  # "ROY"
# A writer waits this long for a partition another writer holds (an append takes seconds; a
# writer stuck longer is stopped or broken), then reports the ledger busy and the caller retries.
lock_wait_s_max = 120


def partition_lock_key(topic: str, partition: int) -> int:
    """A stable signed 64-bit key for one partition's lock."""
    return _key(f"{_lock_namespace}:{topic}:{partition}")


def step_lock_key(name: str) -> int:
    """A stable signed 64-bit key for the lock of one named step (e.g. a settlement step)."""
    return _key(f"{_lock_namespace}:step:{name}")


def _key(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PartitionLocks:
    """Advisory locks on the catalog database, held on one dedicated connection."""

    def __init__(self, dsn: str, location: str) -> None:
        self._dsn = dsn
        self._location = location
        self._connection = None

    @contextmanager
    def holding(self, partitions: Iterable[tuple[str, int]]) -> Iterator[None]:
        """Hold the locks of `partitions` (in key order, so writers never deadlock) for the block."""
        keys = {partition_lock_key(topic, partition) for topic, partition in partitions}
        with self.holding_keys(keys, "a partition"):
            yield

    @contextmanager
    def holding_keys(self, lock_keys: Iterable[int], what: str) -> Iterator[None]:
        """Hold the advisory locks `lock_keys` (taken in key order) for the block; `what` names them in errors."""
        import psycopg

        keys = sorted(set(lock_keys))
        try:
            connection = self._connect()
            with connection.cursor() as cursor:
                for key in keys:
                    cursor.execute("SELECT pg_advisory_lock(%s)", (key,))
        except psycopg.errors.LockNotAvailable as error:
            self._unlock_all()
            raise LedgerBusyError(
                self._location, 1, f"{what} stayed locked by another writer for {lock_wait_s_max} s"
            ) from error
        except psycopg.Error as error:
            self._drop_connection()
            reason = redact(error).strip()
            raise LedgerCatalogUnavailableError(self._location, f"locking {what}", reason) from error
        try:
            yield
        finally:
            self._unlock_all()

    def close(self) -> None:
        self._drop_connection()

    def _unlock_all(self) -> None:
        import psycopg

        try:
            with self._connect().cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock_all()")
        except psycopg.Error:
            # A lost session has released its locks with it; start afresh next time.
            self._drop_connection()

    def _connect(self):
        import psycopg

        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=10, options=f"-c lock_timeout={lock_wait_s_max * 1000}"
            )
        return self._connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            # Closing a broken connection must not mask the error being raised.
            with suppress(Exception):
                self._connection.close()
            self._connection = None
