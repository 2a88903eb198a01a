"""Files in the data folder that no snapshot lists: what an interrupted append leaves behind.

An append writes its Parquet files before it commits them. A process killed in between leaves
those files in the data folder; no snapshot lists them, so they are not part of the ledger and
nothing reads them, but they take space. `find_orphans` lists them; `remove_orphans` deletes
those older than an age that no append in flight can reach (an append that is still running
may have written a file it has not committed yet), so it never touches a file a writer may
still commit. Only a local data folder is searched.

A data folder may hold files this catalog does not own: another ledger's (a shared folder), a
foreign Parquet file, files written before file names carried the ledger's identity. Only files
named as this ledger names its own (`<ledger id>-<batch id>-<8 hex>.parquet[.tmp]`, the id being
`connection.ledger_id`) are ever removed; the others are reported and left alone.
"""

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ledger.connection import catalog_alias, ledger_id
from ledger.ledger import Ledger

# No append runs for a day: ingest gives up on a failing ledger after 15 minutes
# (ingest/constants.py), and one append takes seconds.
orphan_age_s_min_default = 24 * 3600.0
_written_suffixes = (".parquet", ".parquet.tmp")


@dataclass(frozen=True)
class OrphanFile:
    path: str
    size_bytes: int
    age_s: float
    # Named as this ledger names the files it writes: only such files are ever removed.
    ours: bool = True


def own_file_name(identity: str) -> re.Pattern[str]:
    """The names of the data files the ledger `identity` writes (and of their temporary files)."""
    return re.compile(rf"{re.escape(identity)}-[0-9a-f]{{32}}-[0-9a-f]{{8}}\.parquet(\.tmp)?")


def find_orphans(ledger: Ledger, listed_paths: set[str]) -> list[OrphanFile] | None:
    """Files the ledger wrote that no snapshot lists, or None when the data folder is not local.

    `listed_paths` are the absolute paths of the files the catalog lists now.
    """
    data_path = ledger.location.data_path
    if "://" in data_path:
        return None
    root = Path(data_path)
    known_names = {Path(path).name for path in listed_paths}
    metadata = f"__ducklake_metadata_{catalog_alias}"
    # Any file the catalog ever named, retired or not, and any the ledger recorded a checksum of.
    for query in (
        f"SELECT path FROM {metadata}.ducklake_data_file",
        f"SELECT path FROM {metadata}.ducklake_delete_file",
        f"SELECT path FROM {catalog_alias}.main.file_checksum",
    ):
        known_names.update(Path(path).name for (path,) in ledger.connection.execute(query).fetchall())
    own_name = own_file_name(ledger_id(ledger.connection))
    now = time.time()
    orphans = []
    for directory, _, names in os.walk(root):
        for name in names:
            if not name.endswith(_written_suffixes) or name in known_names:
                continue
            path = Path(directory) / name
            try:
                stat = path.stat()
            except FileNotFoundError:  # an append's temporary file, renamed meanwhile
                continue
            ours = own_name.fullmatch(name) is not None
            orphans.append(OrphanFile(str(path), stat.st_size, max(0.0, now - stat.st_mtime), ours))
    return sorted(orphans, key=lambda orphan: orphan.path)


def remove_orphans(orphans: list[OrphanFile], age_s_min: float) -> list[OrphanFile]:
    """Delete the orphans this ledger wrote that are at least `age_s_min` old; returns those deleted."""
    removed = []
    for orphan in orphans:
        if not orphan.ours or orphan.age_s < age_s_min:
            continue
        try:
            Path(orphan.path).unlink()
        except FileNotFoundError:
            continue
        removed.append(orphan)
    return removed
