"""The stored offsets the offsets fence reads, kept by a writer instead of re-read in every append.

`ingest_offset` gains a row per partition each append advances (86,400 a day per ingest process at one
append a second) and never loses one, so reading `max(next_offset)` over it in every append made an append's
fixed cost grow with the ledger's age. A writer keeps the stored offsets as of a snapshot: those it read,
plus those of its own commits when it knows nobody committed in between. In the next append's transaction
it reads only the change lists of the snapshots committed since (`ducklake_snapshot_changes`, by primary
key in the catalog database): when each of them only inserted into other tables, the kept offsets are the
stored ones; anything else (an insert into `ingest_offset`, any other kind of change, a snapshot without a
change list) reads the table again. Every change to a DuckLake table makes a snapshot with its change list,
so another writer's offsets always reach the fence. A change made in the catalog behind DuckLake's back
makes none: that is `royalty verify`'s to find (ledger/inlined_digest.py), as before.
"""

import re
from collections.abc import Iterable

import duckdb

from ledger.batch import PartitionOffsets
from ledger.connection import catalog_alias

_offsets_table = "ingest_offset"
# Change-list entries that leave `ingest_offset` as it was when they name another table's id.
_insert_change = re.compile(r"(?:inlined_insert|inserted_into_table):(\d+)")


class StoredOffsets:
    """The next offset to read per (topic, partition), as of the open transaction's snapshot."""

    def __init__(self, backend: str) -> None:
        self._backend = backend  # sqlite | postgres
        self._snapshot: int | None = None
        self._offsets: dict[tuple[str, int], int] = {}
        self._table_id: int | None = None

    def read(self, connection: duckdb.DuckDBPyConnection) -> dict[tuple[str, int], int]:
        """The stored offsets as `connection`'s open transaction sees them."""
        ((current,),) = connection.execute(f"SELECT id FROM {catalog_alias}.current_snapshot()").fetchall()
        kept = self._snapshot
        if kept is None or kept > current or (kept < current and not self._unchanged(connection, kept, current)):
            self._offsets = read_stored_offsets(connection)
            ((self._table_id,),) = connection.execute(
                f"SELECT table_id FROM __ducklake_metadata_{catalog_alias}.ducklake_table "
                "WHERE table_name = ? AND end_snapshot IS NULL",
                [_offsets_table],
            ).fetchall()
        self._snapshot = current
        return dict(self._offsets)

    def committed(self, read_at: int | None, committed: int, offsets: Iterable[PartitionOffsets]) -> None:
        """Note the offsets a transaction that read at snapshot `read_at` committed as snapshot `committed`.

        Only when nobody committed in between are they the stored offsets at `committed`; otherwise the
        kept ones stay as of `read_at` and the next read finds this commit among the changes since.
        """
        if read_at is None or self._snapshot != read_at or committed != read_at + 1:
            return
        for item in offsets:
            key = (item.topic, item.partition)
            self._offsets[key] = max(item.next_offset, self._offsets.get(key, item.next_offset))
        self._snapshot = committed

    def forget(self) -> None:
        self._snapshot = None

    @property
    def snapshot(self) -> int | None:
        return self._snapshot

    def _unchanged(self, connection: duckdb.DuckDBPyConnection, since: int, until: int) -> bool:
        """Whether every snapshot after `since` up to `until` left `ingest_offset` untouched."""
        changes = [changes for _, changes in self._change_lists(connection, since, until)]
        if len(changes) != until - since:
            return False
        for entries in changes:
            for entry in (entries or "").split(","):
                match = _insert_change.fullmatch(entry.strip())
                if match is None or int(match.group(1)) == self._table_id:
                    return False
        return True

    def _change_lists(self, connection: duckdb.DuckDBPyConnection, since: int, until: int) -> list[tuple]:
        query = (
            f"SELECT snapshot_id, changes_made FROM ducklake_snapshot_changes "
            f"WHERE snapshot_id > {int(since)} AND snapshot_id <= {int(until)}"
        )
        if self._backend == "sqlite":
            # In SQLite itself, by the primary key: DuckDB's SQLite scanner would read the whole table.
            return connection.execute(
                "SELECT * FROM sqlite_query(?, ?)", [f"__ducklake_metadata_{catalog_alias}", query]
            ).fetchall()
        # DuckDB's PostgreSQL scanner sends the constant filter to PostgreSQL, which uses the primary key.
        return connection.execute(query.replace("FROM ", f"FROM __ducklake_metadata_{catalog_alias}.", 1)).fetchall()


def read_stored_offsets(connection: duckdb.DuckDBPyConnection) -> dict[tuple[str, int], int]:
    """Every stored offset, read from `ingest_offset` (the whole table)."""
    rows = connection.execute(
        f"SELECT kafka_topic, kafka_partition, max(next_offset) FROM {catalog_alias}.main.{_offsets_table} GROUP BY ALL"
    ).fetchall()
    return {(topic, partition): next_offset for topic, partition, next_offset in rows}
