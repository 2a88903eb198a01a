"""Files in the data folder that no snapshot lists: what an interrupted append leaves behind.

An append writes its Parquet files before it commits them. A process killed in between leaves
those files in the data folder; no snapshot lists them, so they are not part of the ledger and
nothing reads them, but they take space. `find_orphans` lists them; `remove_orphans` deletes
those older than an age that no append in flight can reach (an append that is still running
may have written a file it has not committed yet), so it never touches a file a writer may
still commit. The data path is searched where it is: a local folder or an `s3://` prefix.

A data folder may hold files this catalog does not own: another ledger's (a shared folder), a
foreign Parquet file, files written before file names carried the ledger's identity, and files a
copy of this ledger committed (an older catalog restored over a live folder: the newer files are
the newer catalog's). Only this catalog's own leftovers are ever removed. A ledger names its files
`<ledger id>-s<snapshot>-<batch id>-<8 hex>.parquet[.tmp]`: the ledger's id (`connection.ledger_id`,
shared by its copies) and the snapshot the writing transaction started from. A leftover of this
catalog names a snapshot this catalog has, and was written after that snapshot was committed; a
file a restored-older catalog finds from its newer self names a snapshot it does not have, or one
it committed only after the file was written. The others are reported and left alone. And when
any such file of a newer self is found, nothing at all is removed: the folder is shared with a
newer catalog of this ledger, whose first files after the restore point name a snapshot both have.
"""

import re
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path

from ledger.connection import catalog_alias, ledger_id
from ledger.expiry import expired_snapshots
from ledger.ledger import Ledger
from ledger.object_store import DataStore

# No append runs for a day: ingest gives up on a failing ledger after 15 minutes
# (ingest/constants.py), and one append takes seconds.
orphan_age_s_min_default = 24 * 3600.0
_written_suffixes = (".parquet", ".parquet.tmp")
# A file's modification time and a snapshot's commit time may come from two clocks (the writer's
# host, the storage server): a leftover written this much "before" its snapshot is still this
# catalog's. Small on purpose: a clock further off only keeps a leftover, never deletes a file.
clock_skew_s_max = 5.0


@dataclass(frozen=True)
class OrphanFile:
    path: str
    size_bytes: int
    age_s: float
    # This catalog's own leftover (its name, a snapshot it has, written after it): only such files are removed.
    ours: bool = True
    # Named with this ledger's id but not this catalog's leftover: a copy or a newer catalog of this
    # ledger wrote it into the same folder. While any is present, nothing is removed.
    sibling: bool = False


def own_file_name(identity: str) -> re.Pattern[str]:
    """The names of the data files the ledger `identity` writes (and of their temporary files);
    group 1 is the snapshot the writing transaction started from."""
    return re.compile(rf"{re.escape(identity)}-s([0-9]+)-[0-9a-f]{{32}}-[0-9a-f]{{8}}\.parquet(\.tmp)?")


def _is_own_leftover(name: re.Match[str] | None, modified_at_s: float, committed_at_s: "_CommitTimes") -> bool:
    if name is None:
        return False
    started_from = committed_at_s.get(int(name.group(1)))
    return started_from is not None and modified_at_s >= started_from - clock_skew_s_max


class _CommitTimes:
    """When each snapshot of this catalog was committed; a snapshot an expiry of this catalog removed gets the commit
    time of the snapshot kept before it, a lower bound of its own, so a leftover naming it is still this catalog's (a
    newer catalog's names a snapshot no expiry of this one recorded)."""

    def __init__(self, committed_at_s: dict[int, float], expired: list[tuple[int, int]]) -> None:
        self._committed_at_s = committed_at_s
        self._kept = sorted(committed_at_s)
        self._expired = expired
        self._expired_firsts = [first for first, _ in expired]

    def get(self, snapshot: int) -> float | None:
        found = self._committed_at_s.get(snapshot)
        if found is not None:
            return found
        index = bisect_right(self._expired_firsts, snapshot) - 1
        if index < 0 or self._expired[index][1] < snapshot:
            return None
        before = bisect_left(self._kept, snapshot)
        return self._committed_at_s[self._kept[before - 1]] if before else None


def find_orphans(ledger: Ledger, listed_paths: set[str]) -> list[OrphanFile]:
    """Files the ledger wrote that no snapshot lists, in its local folder or under its `s3://` prefix.

    `listed_paths` are the absolute paths of the files the catalog lists now.
    """
    # Names by `rsplit`, not `Path(...).name`: file_checksum holds ~3 paths per append (pathlib's parse was a visible
    # part of verify on a ledger of many appends).
    known_names = {path.rsplit("/", 1)[-1] for path in listed_paths}
    # The files the catalog does not list now; only when there are any are the names it ever knew read (~3 per append
    # in file_checksum: a part of verify that grew with the appends, benchmarks/RESULTS.md "verify flat in appends").
    unlisted = [
        stored
        for stored in ledger.store.walk()
        if (name := stored.path.rsplit("/", 1)[-1]).endswith(_written_suffixes) and name not in known_names
    ]
    if not unlisted:
        return []
    metadata = f"__ducklake_metadata_{catalog_alias}"
    # Any file the catalog names now, retired or not, and those an expiry dropped that wait in the folder until
    # DuckLake's cleanup deletes them (on an SQLite catalog up to a day later); only when others are left, any file
    # the ledger ever recorded a checksum of (a row per file ever added).
    for query in (
        f"SELECT path FROM {metadata}.ducklake_data_file",
        f"SELECT path FROM {metadata}.ducklake_delete_file",
        f"SELECT path FROM {metadata}.ducklake_files_scheduled_for_deletion",
    ):
        known_names.update(_names(ledger, query))
    if all(stored.path.rsplit("/", 1)[-1] in known_names for stored in unlisted):
        return []
    known_names.update(_names(ledger, f"SELECT path FROM {catalog_alias}.main.file_checksum"))
    own_name = own_file_name(ledger_id(ledger.connection))
    snapshots = f"SELECT snapshot_id, epoch(snapshot_time) FROM {catalog_alias}.snapshots()"
    committed_at_s = _CommitTimes(
        dict(ledger.connection.execute(snapshots).fetchall()), expired_snapshots(ledger.connection)
    )
    now = time.time()
    orphans = []
    for stored in unlisted:
        name = stored.path.rsplit("/", 1)[-1]
        if name in known_names:
            continue
        named = own_name.fullmatch(name)
        ours = _is_own_leftover(named, stored.modified_at_s, committed_at_s)
        age_s = max(0.0, now - stored.modified_at_s)
        orphans.append(
            OrphanFile(stored.path, stored.size_bytes, age_s, ours, sibling=named is not None and not ours)
        )
    return sorted(orphans, key=lambda orphan: orphan.path)


def _names(ledger: Ledger, query: str) -> set[str]:
    """The file names of the paths `query` selects."""
    return {path.rsplit("/", 1)[-1] for (path,) in ledger.connection.execute(query).fetchall()}


def remove_orphans(orphans: list[OrphanFile], age_s_min: float, store: DataStore | None = None) -> list[OrphanFile]:
    """Delete this catalog's leftovers at least `age_s_min` old; returns those deleted.

    Nothing is deleted while another catalog of this ledger shares the folder (`removal_blocked`).
    """
    if removal_blocked(orphans):
        return []
    removed = []
    for orphan in orphans:
        if not orphan.ours or orphan.age_s < age_s_min:
            continue
        if store is None:
            try:
                Path(orphan.path).unlink()
            except FileNotFoundError:
                continue
        else:
            store.remove(orphan.path)
        removed.append(orphan)
    return removed


def removal_blocked(orphans: list[OrphanFile]) -> bool:
    """Whether the data folder holds files a copy or a newer catalog of this ledger committed."""
    return any(orphan.sibling for orphan in orphans)
