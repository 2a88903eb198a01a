"""Files in the data folder that no snapshot lists: what an interrupted append leaves behind.

An append writes its Parquet files before it commits them. A process killed in between leaves
those files in the data folder; no snapshot lists them, so they are not part of the ledger and
nothing reads them, but they take space. `find_orphans` lists them; `remove_orphans` deletes
those older than an age that no append in flight can reach (an append that is still running
may have written a file it has not committed yet), so it never touches a file a writer may
still commit. Only a local data folder is searched.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ledger.connection import catalog_alias
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
            orphans.append(OrphanFile(str(path), stat.st_size, max(0.0, now - stat.st_mtime)))
    return sorted(orphans, key=lambda orphan: orphan.path)


def remove_orphans(orphans: list[OrphanFile], age_s_min: float) -> list[OrphanFile]:
    """Delete the orphans at least `age_s_min` old; returns those deleted."""
    removed = []
    for orphan in orphans:
        if orphan.age_s < age_s_min:
            continue
        try:
            Path(orphan.path).unlink()
        except FileNotFoundError:
            continue
        removed.append(orphan)
    return removed
