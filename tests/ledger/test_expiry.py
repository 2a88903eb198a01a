"""Snapshot expiry (ledger/expiry.py): the retention policy keeps what settlement and time travel need, and verify
checks the recorded digest of the expired history in its place."""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ledger import Ledger, constants, inlined_digest
from ledger.catalog_flush import FlushRefusedError, flushed_tables, inlined_row_counts
from ledger.compaction import compact
from ledger.expiry import RetainedSnapshotError, expire
from ledger.orphans import find_orphans
from ledger.verify import verify
from settlement import close_epoch
from settlement.engine.exceptions import ExpiredWhilePlanningError
from tests.ledger.helpers import digested_relations, inlined_table
from tests.support.anvil import REPO_ROOT
from tests.support.ledger_batches import append_in_batches, sample_messages

pytest_plugins = ("tests.support.postgres",)

_values = sample_messages(200)
_payables = "SELECT epoch, recipient, amount_micros, cumulative_micros FROM lake.main.settlement_payable ORDER BY ALL"


def _epoch_rows(ledger: Ledger, closing: int) -> list:
    return ledger.connection.execute(
        f"SELECT * FROM lake.main.inference_metered AT (VERSION => {closing}) ORDER BY ALL"
    ).fetchall()


def _bookkeeping(ledger: Ledger) -> dict[str, list]:
    """Every row of the bookkeeping tables an expiry moves out of the catalog, with the snapshot that inserted it."""
    return {
        table: ledger.connection.execute(f"SELECT snapshot_id, * FROM lake.main.{table} ORDER BY ALL").fetchall()
        for table in flushed_tables
    }


def _plan(ledger: Ledger) -> object:
    """The next epoch's dry-run summary, but its closing snapshot (the latest: an expiry records itself in one)."""
    return replace(close_epoch(ledger, dry_run=True), closing_snapshot=0)


def _build(location: str, data_path: str | None, copy_before_expiry: Path | None = None) -> dict:
    """Appends, an epoch closed, more appends, a compaction: what settlement and time travel return before an expiry,
    then the expiry, then the same again."""
    seen: dict = {}
    with Ledger.open(location, data_path) as ledger:
        offset = append_in_batches(ledger, _values[:110], 0, 20)
        close_epoch(ledger)
        seen["offset"] = append_in_batches(ledger, _values[110:], offset, 20)
        compact(ledger)
        (closing,) = ledger.connection.execute("SELECT closing_snapshot FROM lake.main.settlement_epoch").fetchone()
        seen["closing"] = closing
        seen["before"] = {
            "epoch_rows": _epoch_rows(ledger, closing),
            "payables": ledger.connection.execute(_payables).fetchall(),
            "plan": _plan(ledger),
        }
        seen["bookkeeping"] = _bookkeeping(ledger)
        seen["inlined_before"] = sum(inlined_row_counts(ledger).values())
        if copy_before_expiry is not None:
            shutil.copytree(location, copy_before_expiry)
        # Every bookkeeping table with a row moves out of the catalog (the default waits for 1,000 rows a table).
        seen["report"] = expire(ledger, older_than_s=0, delete_files_after_s=0, flush_rows_min=1)
        seen["inlined_after"] = inlined_row_counts(ledger)
        seen["bookkeeping_after"] = _bookkeeping(ledger)
        seen["after"] = {
            "epoch_rows": _epoch_rows(ledger, closing),
            "payables": ledger.connection.execute(_payables).fetchall(),
            "plan": _plan(ledger),
        }
        seen["verify"] = verify(ledger)
        seen["verify_retired"] = verify(ledger, retired_files=True)
    return seen


@pytest.fixture(scope="module")
def expired(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("expiry")
    seen = _build(str(root / "lake"), None, root / "before-expiry")
    seen["lake"] = root / "lake"
    seen["lake_before_expiry"] = root / "before-expiry"
    return seen


def test_expiry_keeps_closing_snapshots_and_settlement_returns_the_same(expired):
    report = expired["report"]
    assert report.snapshots_expired > 5 and report.files_dropped > 0
    assert report.files_deleted == report.files_dropped  # deleted at once here (delete_files_after_s=0)
    assert str(expired["closing"]) not in report.expired_ranges.replace("-", ",").split(",")
    assert expired["after"] == expired["before"]  # time travel to the closing snapshot, payables, the next plan
    assert expired["after"]["plan"].event_count > 0


def test_verify_is_clean_after_expiry_and_counts_the_expired_snapshots(expired):
    for name in ("verify", "verify_retired"):
        report = expired[name]
        assert report.ok, (name, report.problems)
        assert report.snapshots_expired == expired["report"].snapshots_expired
        assert not report.orphans


def test_expiry_moves_the_bookkeeping_rows_out_of_the_catalog_and_every_row_reads_the_same(expired):
    """The offsets, batches, checksums, digests and compaction records leave the catalog for checksummed Parquet
    files; each row still reads the same, with the snapshot that inserted it (verify's digest check of every row,
    clean above, reads them so). Left inlined: the flushed files' own checksum rows, their records (format 20) and
    those rows' digest rows."""
    report, before, after = expired["report"], expired["bookkeeping"], expired["bookkeeping_after"]
    # Flushed too: the expiry record's digest row, inlined by the expiry itself.
    assert expired["inlined_before"] > 100 and report.rows_flushed == expired["inlined_before"] + 1
    tables_flushed = sum(1 for table in flushed_tables if before[table])
    assert expired["inlined_after"]["file_checksum"] == tables_flushed  # one file each
    # The digest rows of the flush's own rows: its files' checksums and their ledger_flushed_file records (format 20).
    assert expired["inlined_after"]["inlined_digest"] == 2
    assert sum(expired["inlined_after"].values()) == tables_flushed + 2
    for table in flushed_tables:
        assert [row for row in after[table] if row in before[table]] == before[table], table
        # The only rows added: the expiry's digest row, and the flushed files' checksums with their digest row.
        added = {row[0] for row in after[table] if row not in before[table]}
        assert added <= ({report.snapshot, report.snapshot + 1} if table == "inlined_digest" else set()) | (
            {report.snapshot + 1} if table == "file_checksum" else set()
        ), (table, added)


def test_appends_and_an_epoch_after_the_flush_verify_and_a_flushed_file_changed_is_named(expired, tmp_path):
    lake = tmp_path / "lake"
    shutil.copytree(expired["lake"], lake)
    with Ledger.open(lake) as ledger:
        append_in_batches(ledger, sample_messages(230)[-30:], expired["offset"], 10)
        assert close_epoch(ledger).event_count == 30 + expired["after"]["plan"].event_count
        report = verify(ledger)
        assert report.ok, report.problems
        ((flushed,),) = ledger.connection.execute(
            "SELECT DISTINCT filename FROM lake.main.ingest_offset WHERE filename LIKE '%.parquet'"
        ).fetchall()
    # An operator's edit of moved offsets rows: the file no longer matches what the flush recorded.
    table = pa.Table.from_pylist(
        [{**row, "next_offset": row["next_offset"] + 1_000_000} for row in pq.read_table(flushed).to_pylist()],
        schema=pq.read_schema(flushed),
    )
    pq.write_table(table, flushed)
    with Ledger.open_read_only(lake) as ledger:
        problems = verify(ledger).problems
    assert any(f"data file `{flushed}`" in p for p in problems), problems  # its size or SHA-256, as recorded
    # DuckLake no longer reads the file (its footer is not the one the catalog recorded): said, not a crash.
    assert any("bookkeeping rows cannot be read" in p for p in problems), problems


def test_verify_digests_every_bookkeeping_row_in_duckdb_and_digests_again_only_a_changed_snapshot(
    expired, tmp_path, monkeypatch
):
    """verify compares every bookkeeping row, moved out of the catalog or still inlined, with the digest its
    transaction recorded in DuckDB, a column scan per table: no Python step per row (that made verify grow with the
    number of appends: benchmarks/RESULTS.md, "verify at many appends"). Only the rows of a snapshot that differs are
    digested again in Python, to name them: here a checksum row the flush left inlined, changed in the catalog."""
    lake = tmp_path / "lake"
    shutil.copytree(expired["lake"], lake)
    real = inlined_digest.row_digest
    redigested: list[str] = []
    monkeypatch.setattr(inlined_digest, "row_digest", lambda text: redigested.append(text) or real(text))
    with Ledger.open_read_only(lake) as ledger:
        report = verify(ledger)
        ((moved,),) = ledger.connection.execute(
            "SELECT count(*) FROM lake.main.ingest_offset WHERE filename LIKE '%.parquet'"
        ).fetchall()
    assert report.ok, report.problems
    assert moved > 5 and redigested == []
    flush_rows = expired["inlined_after"]["file_checksum"]  # the flush's own files' checksums, one snapshot's
    with _catalog(lake) as catalog:
        table = inlined_table(catalog, "file_checksum")
        catalog.execute(
            f"UPDATE {table} SET ingest_batch_id = 'catalog-flush-forged' "
            f"WHERE row_id = (SELECT min(row_id) FROM {table} WHERE end_snapshot IS NULL)"
        )
    with Ledger.open_read_only(lake) as ledger:
        problems = verify(ledger).problems
    changed = [p for p in problems if "`file_checksum` was changed in the catalog behind DuckLake's back" in p]
    assert len(changed) == 1 and "catalog-flush-forged" in changed[0], problems
    assert len(redigested) == flush_rows  # the changed snapshot's rows, not the moved ones


def _flushed_files(ledger: Ledger) -> dict[str, tuple]:
    """The ledger_flushed_file records (format 20), by table."""
    rows = ledger.connection.execute(
        "SELECT table_name, path, size_bytes, sha256, row_count, snapshot_id_min, snapshot_id_max "
        "FROM lake.main.ledger_flushed_file"
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def test_the_flush_checks_the_rows_it_moves_once_and_verify_then_checks_their_files_by_their_bytes(
    expired, tmp_path, monkeypatch
):
    """Each file the flush wrote of a digested table is recorded with its SHA-256, its row count and snapshot range;
    verify digests none of those rows again (not even in DuckDB: its digest query reads every table but outside the
    moved files), so it does not grow with the appends the files hold (benchmarks/RESULTS.md, "verify flat in
    appends"). Not recorded: the digest table's own file (its rows are the digests, undigested)."""
    lake = tmp_path / "lake"
    shutil.copytree(expired["lake"], lake)
    relations = digested_relations(monkeypatch)
    with Ledger.open_read_only(lake) as ledger:
        records = _flushed_files(ledger)
        checksums = dict(
            ((path), (size, sha256))
            for path, size, sha256 in ledger.connection.execute(
                "SELECT path, size_bytes, sha256 FROM lake.main.file_checksum"
            ).fetchall()
        )
        counts = {
            table: ledger.connection.execute(
                f"SELECT count(*), min(snapshot_id), max(snapshot_id) FROM lake.main.{table} "
                "WHERE filename LIKE '%.parquet'"
            ).fetchone()
            for table in records
        }
        report = verify(ledger)
    assert report.ok, report.problems
    moved = {table for table in flushed_tables if expired["bookkeeping"][table]} - {"inlined_digest"}
    assert set(records) == moved
    for table, (path, size, sha256, rows, low, high) in records.items():
        assert checksums[path] == (size, sha256), table
        assert (rows, low, high) == counts[table], table
        assert f"filename NOT IN ('{lake / 'data'}/{path}')" in relations[table], relations[table]


def _forge_inlined_row(catalog: sqlite3.Connection, table: str, snapshot: int, values: dict) -> None:
    """Insert a row into `table`'s inlined rows in the catalog, as if `snapshot` had inserted it."""
    inlined = inlined_table(catalog, table)
    columns = [name for (_, name, *_) in catalog.execute(f"PRAGMA table_info({inlined})").fetchall()]
    row = {"row_id": 10**9, "begin_snapshot": snapshot, "end_snapshot": None, **values}
    catalog.execute(
        f"INSERT INTO {inlined} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
        [row[name] for name in columns],
    )


def test_the_moved_out_history_changed_behind_the_ledgers_back_is_named_by_verify(expired, tmp_path):
    """What no file's SHA-256 shows, each in a copy of its own: a row added among the moved ones (an inlined row
    claiming a snapshot whose rows a flushed file holds), a flushed file dropped from the catalog (its rows gone), and a
    flush record changed. A verify that trusted the flushed files' ranges without checking them would miss all three."""
    with Ledger.open_read_only(expired["lake"]) as ledger:
        records = _flushed_files(ledger)
    high = records["ingest_offset"][-1]
    forged = {"kafka_topic": "t", "kafka_partition": 0, "first_offset": 5, "next_offset": 1_000_000,
              "ingest_batch_id": "forged-batch"}  # fmt: skip

    added = tmp_path / "added"
    shutil.copytree(expired["lake"], added)
    with _catalog(added) as catalog:
        _forge_inlined_row(catalog, "ingest_offset", high, forged)
    with Ledger.open_read_only(added) as ledger:
        problems = verify(ledger).problems
    assert len(problems) == 1, problems
    assert "`ingest_offset` was changed in the catalog behind DuckLake's back" in problems[0]
    assert f"(snapshot {high}) matches no digest that snapshot recorded" in problems[0]
    assert '"next_offset":1000000' in problems[0] and "forged-batch" in problems[0]

    dropped = tmp_path / "dropped"
    shutil.copytree(expired["lake"], dropped)
    path, _, _, rows, _, _ = records["ledger_compaction_retired"]
    with _catalog(dropped) as catalog:
        catalog.execute("DELETE FROM ducklake_data_file WHERE path = ?", [path.rsplit("/", 1)[-1]])
    with Ledger.open_read_only(dropped) as ledger:
        report = verify(ledger)
    assert any(
        f"bookkeeping file `{dropped / 'data'}/{path}`" in p
        and f"{rows} row(s) of `ledger_compaction_retired`" in p
        and "is not listed by the catalog" in p
        for p in report.problems
    ), report.problems
    assert any("`ledger_compaction_retired` was changed" in p and "inserted are gone" in p for p in report.problems)

    changed = tmp_path / "changed"
    shutil.copytree(expired["lake"], changed)
    with _catalog(changed) as catalog:
        catalog.execute(
            f"UPDATE {inlined_table(catalog, 'ledger_flushed_file')} SET snapshot_id_max = snapshot_id_max + 1 "
            "WHERE table_name = 'ingest_offset'"
        )
    with Ledger.open_read_only(changed) as ledger:
        problems = verify(ledger).problems
    assert len(problems) == 1, problems
    assert "`ledger_flushed_file` was changed in the catalog behind DuckLake's back" in problems[0]
    assert f'"snapshot_id_max":{high + 1}' in problems[0]


def test_a_flush_refuses_rows_changed_before_it_and_moves_nothing(expired, tmp_path):
    """A row changed in the catalog before the flush: the flush checks every row it moves against its digest, refuses
    (naming the row) and moves nothing, so the change stays inlined, where every verify names it. A flush that
    recorded the files unchecked would have made verify trust the changed row for ever after."""
    lake = tmp_path / "lake"
    shutil.copytree(expired["lake_before_expiry"], lake)
    with _catalog(lake) as catalog:
        inlined = inlined_table(catalog, "ingest_offset")
        first = f"(SELECT min(row_id) FROM {inlined})"
        catalog.execute(f"UPDATE {inlined} SET next_offset = next_offset + 1000000 WHERE row_id = {first}")
    with Ledger.open(lake) as ledger:
        before = {table: rows for table, rows in inlined_row_counts(ledger).items() if rows}
        with pytest.raises(FlushRefusedError, match="`ingest_offset` to move out of the catalog do not match") as error:
            expire(ledger, older_than_s=0, delete_files_after_s=0, flush_rows_min=1)
        assert "matches no digest that snapshot recorded" in str(error.value)
        after = {table: rows for table, rows in inlined_row_counts(ledger).items() if rows}
        assert after == {**before, "inlined_digest": before["inlined_digest"] + 1}  # + the expiry record's (committed)
        assert ledger.connection.execute("SELECT count(*) FROM lake.main.ledger_flushed_file").fetchone() == (0,)
        problems = verify(ledger).problems
    assert any("`ingest_offset` was changed in the catalog behind DuckLake's back" in p for p in problems), problems
    assert not [p for p in (lake / "data" / "main" / "ingest_offset").glob("ducklake-*.parquet")]


def test_a_flush_of_any_other_table_is_named_by_verify(expired, tmp_path):
    """DuckLake's own flush of a table the ledger never flushes (here the expiry records): a violation, and the file
    it wrote has no recorded checksum."""
    lake = tmp_path / "lake"
    shutil.copytree(expired["lake"], lake)
    with Ledger.open(lake) as ledger:
        ledger.connection.execute(
            "CALL ducklake_flush_inlined_data('lake', table_name => 'ledger_snapshot_expiry')"
        ).fetchall()
        problems = verify(ledger).problems
    assert any("flushed_inlined" in p and "only creates and inserts" in p for p in problems), problems
    assert any("ledger_snapshot_expiry" in p and "no recorded checksum" in p for p in problems), problems


def test_a_leftover_naming_an_expired_snapshot_is_still_this_catalogs_own(expired, tmp_path):
    """A file a killed append left, named with a snapshot an expiry removed since: `verify --remove-orphans` may
    remove it, and it does not block removal as another catalog's file would."""
    lake = tmp_path / "lake"
    shutil.copytree(expired["lake"], lake)
    first_expired = int(expired["report"].expired_ranges.split("-")[0].split(",")[0])
    with Ledger.open_read_only(lake) as ledger:
        name = f"{ledger._ledger_id()}-s{first_expired}-{uuid.uuid4().hex}-{uuid.uuid4().hex[:8]}.parquet"
        (lake / "data" / "main" / "inference_metered" / name).write_bytes(b"PAR1")
        (orphan,) = find_orphans(ledger, set())
    assert orphan.path.endswith(name) and orphan.ours and not orphan.sibling


def test_a_retained_snapshot_cannot_be_expired(expired, tmp_path):
    lake = tmp_path / "lake"
    shutil.copytree(expired["lake"], lake)
    with Ledger.open(lake) as ledger:
        latest = ledger.current_snapshot()
        with pytest.raises(RetainedSnapshotError, match="not expirable"):
            expire(ledger, older_than_s=0, snapshots=[expired["closing"]])
        assert ledger.current_snapshot() == latest  # nothing recorded
        assert _epoch_rows(ledger, expired["closing"]) == expired["before"]["epoch_rows"]
        assert expire(ledger, older_than_s=0, dry_run=True).snapshots_expired > 0  # the epoch close appended


def test_an_expiry_longer_than_one_transaction_runs_newest_first_and_equals_one_expiry(expired, tmp_path, monkeypatch):
    """Expired in runs of at most `expire_snapshots_per_transaction_max` snapshots, newest first, each recorded: the
    same snapshots and retired files go as in one transaction, the retired files over several of them (oldest first,
    the last would drop them all at once: the stall of issue 19's 10,000-append run), and verify is clean."""
    lake = tmp_path / "lake"
    shutil.copytree(expired["lake_before_expiry"], lake)
    monkeypatch.setattr(constants, "expire_snapshots_per_transaction_max", 4)
    with Ledger.open(lake) as ledger:
        report = expire(ledger, older_than_s=0, delete_files_after_s=0, flush_rows_min=1)
        records = ledger.connection.execute(
            "SELECT snapshot_count, expired_ranges, files_dropped FROM lake.main.ledger_snapshot_expiry "
            "ORDER BY snapshot_id"
        ).fetchall()
        after = {"epoch_rows": _epoch_rows(ledger, expired["closing"]), "payables": ledger.connection.execute(
            _payables).fetchall()}  # fmt: skip
        checked = verify(ledger, retired_files=True)
    one = expired["report"]
    assert (report.snapshots_expired, report.expired_ranges) == (one.snapshots_expired, one.expired_ranges)
    assert report.files_dropped == report.files_deleted == one.files_dropped
    assert len(records) == -(-one.snapshots_expired // 4) and max(count for count, _, _ in records) == 4
    firsts = [int(ranges.split(",")[0].split("-")[0]) for _, ranges, _ in records]
    assert firsts == sorted(firsts, reverse=True)  # the newest run first
    assert sum(dropped for *_, dropped in records) == one.files_dropped
    assert sum(1 for *_, dropped in records if dropped) > 1  # the retired files went over several transactions
    assert _data_files(lake) == _data_files(expired["lake"])  # the same files deleted as by one expiry
    assert after == {key: expired["before"][key] for key in after}
    assert checked.ok, checked.problems
    assert checked.snapshots_expired == one.snapshots_expired


def test_retired_files_wait_out_the_grace_period_before_they_are_deleted(expired, tmp_path):
    """An expiry schedules the retired files it dropped; they are deleted only once scheduled `delete_files_after_s`
    ago. DuckLake's cleanup on an SQLite catalog compares by day, so the old bound (now - 1 h) deleted them at
    once (any time after 01:00 UTC: before it, the bound fell on the day before)."""
    lake = tmp_path / "lake"
    shutil.copytree(expired["lake_before_expiry"], lake)
    with Ledger.open(lake) as ledger:
        waiting = expire(ledger, older_than_s=0, delete_files_after_s=3600)
        assert waiting.files_dropped > 0 and waiting.files_deleted == 0
        assert _data_files(lake) > _data_files(expired["lake"])  # the dropped files are still on disk
        due = expire(ledger, older_than_s=0, delete_files_after_s=0)
    assert due.files_deleted == waiting.files_dropped
    assert _data_files(lake) == _data_files(expired["lake"])


def test_files_waiting_for_deletion_are_no_orphans_and_spare_verify_the_catalogs_whole_history(
    expired, tmp_path, monkeypatch
):
    """The retired files an expiry dropped stay in the folder until deleted (on an SQLite catalog up to a day later).
    They are no orphans, found among the files DuckLake scheduled for deletion: the names the catalog ever knew (a row
    per file ever added) are not read for them (they were at every verify before); a stray file still is named."""
    import ledger.orphans

    queries: list[str] = []
    real_names = ledger.orphans._names

    def names(ledger_: Ledger, query: str) -> set[str]:
        queries.append(query)
        return real_names(ledger_, query)

    monkeypatch.setattr(ledger.orphans, "_names", names)
    lake = tmp_path / "lake"
    shutil.copytree(expired["lake_before_expiry"], lake)
    with Ledger.open(lake) as opened:
        assert expire(opened, older_than_s=0, delete_files_after_s=3600).files_deleted == 0
    assert _data_files(lake) > _data_files(expired["lake"])  # the dropped files are still on disk
    with Ledger.open_read_only(lake) as opened:
        report = verify(opened)
    assert report.ok and report.orphans == [], report.problems
    assert any("ducklake_files_scheduled_for_deletion" in query for query in queries), queries
    assert not any("file_checksum" in query for query in queries), queries
    stray = lake / "data" / "main" / "inference_metered" / "stray.parquet"
    stray.write_bytes(b"not the ledger's")
    queries.clear()
    with Ledger.open_read_only(lake) as opened:
        report = verify(opened)
    assert [orphan.path for orphan in report.orphans] == [str(stray)]
    assert any("file_checksum" in query for query in queries), queries


def test_an_sqlite_catalogs_cleanup_deletes_in_runs_of_its_own_exactly_the_due_files(expired, tmp_path, monkeypatch):
    """On an SQLite catalog the retired files are deleted in runs of `cleanup_files_per_transaction_max`, each on a
    connection of its own to the catalog (DuckLake's one-transaction cleanup stalled on 30,005 files: RESULTS, issue
    19, session 12): with runs of 2, every due file and its scheduled row go, the ones scheduled after the bound stay;
    a file already gone (a killed run's) is no error; the ledger verifies."""
    monkeypatch.setattr(constants, "cleanup_files_per_transaction_max", 2)
    lake = tmp_path / "lake"
    shutil.copytree(expired["lake_before_expiry"], lake)
    with Ledger.open(lake) as ledger:
        waiting = expire(ledger, older_than_s=0, delete_files_after_s=3600)
        assert waiting.files_dropped > 2 and waiting.files_deleted == 0
        with _catalog(lake) as catalog:
            scheduled = [row[0] for row in catalog.execute("SELECT path FROM ducklake_files_scheduled_for_deletion")]
        assert len(scheduled) == waiting.files_dropped
        (lake / "data" / scheduled[0]).unlink()  # as a killed run leaves it: the file gone, its row still there
        due = expire(ledger, older_than_s=0, delete_files_after_s=0)
        assert verify(ledger).ok
    assert due.files_deleted == waiting.files_dropped
    assert not any((lake / "data" / path).exists() for path in scheduled)
    with _catalog(lake) as catalog:
        assert catalog.execute("SELECT count(*) FROM ducklake_files_scheduled_for_deletion").fetchone() == (0,)
    assert _data_files(lake) == _data_files(expired["lake"])


def test_an_epoch_planned_at_a_snapshot_expired_meanwhile_is_not_written(expired, tmp_path, monkeypatch):
    """close-epoch plans without the step lock: an expiry between its plan and its write must not leave an epoch
    closing on a snapshot time travel no longer reaches."""
    import settlement.closing

    lake = tmp_path / "lake"
    shutil.copytree(expired["lake_before_expiry"], lake)
    real_write = settlement.closing.write_plan_once

    def expiring_first(ledger: Ledger, *args: object, **kwargs: object) -> int | None:
        append_in_batches(ledger, sample_messages(210)[-10:], expired["offset"], 10)  # the planned one is not latest
        expire(ledger, older_than_s=0, delete_files_after_s=0)
        return real_write(ledger, *args, **kwargs)

    monkeypatch.setattr(settlement.closing, "write_plan_once", expiring_first)
    with Ledger.open(lake) as ledger:
        with pytest.raises(ExpiredWhilePlanningError, match="run it again"):
            close_epoch(ledger)
        assert ledger.connection.execute("SELECT count(*) FROM lake.main.settlement_epoch").fetchone() == (1,)


def _data_files(lake: Path) -> set[str]:
    """The data folder's Parquet files but those of a bookkeeping flush (named by DuckLake at random)."""
    return {p.relative_to(lake).as_posix() for p in (lake / "data").rglob("*.parquet") if "ducklake-" not in p.name}


def _catalog(lake: Path) -> sqlite3.Connection:
    return sqlite3.connect(lake / "catalog.sqlite")


def test_a_tampered_expiry_record_removed_history_and_a_removed_file_row_are_each_named_by_verify(expired, tmp_path):
    """Changed in the catalog after an expiry: the record's history digest (its chain digest and its inlined row's
    digest no longer match), a retained snapshot removed (history no expiry recorded), and a retired file's row
    removed (it looks like an expiry's drop: the records' count and digest of dropped files name it)."""
    lake = tmp_path / "lake"
    shutil.copytree(expired["lake"], lake)
    with Ledger.open_read_only(lake) as ledger:
        retained = [s for (s,) in ledger.connection.execute("SELECT snapshot_id FROM lake.snapshots()").fetchall()]
    victim = retained[len(retained) // 2]  # neither the first nor the latest
    with _catalog(lake) as catalog:
        record_table = inlined_table(catalog, "ledger_snapshot_expiry")
        catalog.execute(f"UPDATE {record_table} SET history_sha256 = ?", ["0" * 64])
        catalog.execute("DELETE FROM ducklake_snapshot WHERE snapshot_id = ?", [victim])
        catalog.execute("DELETE FROM ducklake_snapshot_changes WHERE snapshot_id = ?", [victim])
        ((file_id,),) = catalog.execute(
            "SELECT data_file_id FROM ducklake_data_file WHERE end_snapshot IS NOT NULL LIMIT 1"
        ).fetchall()
        catalog.execute("DELETE FROM ducklake_data_file WHERE data_file_id = ?", [file_id])
    with Ledger.open_read_only(lake) as ledger:
        problems = verify(ledger).problems
    assert any("snapshot expiry recorded at snapshot" in p and "was changed in the catalog" in p for p in problems)
    assert any("ledger_snapshot_expiry" in p and "behind DuckLake's back" in p for p in problems)
    assert any(f"ids {victim})" in p and "no expiry recorded them" in p for p in problems), problems
    assert any("are gone from the catalog, but the snapshot expiries recorded dropping" in p for p in problems)


def test_sigkill_during_expiry_leaves_the_ledger_verifiable_before_or_after(expired, tmp_path):
    """Killed while its transaction commits (the catalog's journal appears) or, if it finished first, after: verify
    is clean either way, the epoch's rows are there, and a second run finishes the job."""
    lake = tmp_path / "lake"
    shutil.copytree(expired["lake_before_expiry"], lake)
    journal = lake / "catalog.sqlite-journal"
    process = subprocess.Popen(
        [sys.executable, "-m", "royalty.cli", "expire", "--lake", str(lake), "--older-than-s", "0"],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not journal.exists():
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with Ledger.open_read_only(lake) as ledger:
        report = verify(ledger)
        rows = _epoch_rows(ledger, expired["closing"])
    assert report.ok, report.problems
    assert rows == expired["before"]["epoch_rows"]
    with Ledger.open(lake) as ledger:
        expire(ledger, older_than_s=0, delete_files_after_s=0)
        # Left: at most the snapshot that was the latest when the expiry ran (DuckLake keeps the latest).
        assert expire(ledger, older_than_s=0, dry_run=True).snapshots_expired <= 1
        report = verify(ledger, retired_files=True)
    assert report.ok, report.problems


def test_sigkill_during_the_bookkeeping_flush_leaves_every_row_and_a_second_flush_finishes(expired, tmp_path):
    """Killed once the flush wrote its first file (before or while it commits): every bookkeeping row reads as before
    and verify is clean (an uncommitted file is an orphan, not a problem); a second flush moves the rows out."""
    from ledger.catalog_flush import flush_bookkeeping

    lake = tmp_path / "lake"
    shutil.copytree(expired["lake_before_expiry"], lake)
    with Ledger.open_read_only(lake) as ledger:
        before = _bookkeeping(ledger)
    folder = lake / "data" / "main" / "ingest_offset"
    code = (
        "from ledger import Ledger\nfrom ledger.catalog_flush import flush_bookkeeping\n"
        f"with Ledger.open({str(lake)!r}) as ledger:\n    flush_bookkeeping(ledger, rows_min=1)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not any(folder.glob("*.parquet")):
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()

    def unchanged(ledger: Ledger) -> None:
        after = _bookkeeping(ledger)
        for table in flushed_tables:  # a committed flush added its files' checksums and their digest row only
            assert [row for row in after[table] if row in before[table]] == before[table], table

    with Ledger.open(lake) as ledger:
        report = verify(ledger)
        assert report.ok, report.problems
        unchanged(ledger)
        flush_bookkeeping(ledger, rows_min=1)
        assert sum(inlined_row_counts(ledger).values()) <= len(flushed_tables) + 1
        unchanged(ledger)
        report = verify(ledger)
    assert report.ok, report.problems


@pytest.mark.nightly  # ~40 s: another process's appends, three expiries, a backup
def test_expiry_beside_another_process_appending_keeps_every_event_and_a_backup_verifies(expired, tmp_path):
    from ledger.backup import backup
    from ledger.connection import LedgerLocation

    lake = tmp_path / "lake"
    shutil.copytree(expired["lake_before_expiry"], lake)
    code = (
        "import sys; from ledger import Ledger; from tests.support.ledger_batches import append_in_batches, "
        f"sample_messages\nwith Ledger.open({str(lake)!r}) as ledger:\n"
        f"    append_in_batches(ledger, sample_messages(400)[-200:], {expired['offset']}, 10)\n"
    )
    appender = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    )
    with Ledger.open(lake) as ledger:
        for _ in range(3):
            time.sleep(1.0)
            # Each moves the bookkeeping rows out of the catalog too, while the other process appends.
            expire(ledger, older_than_s=0, delete_files_after_s=0, flush_rows_min=1)
        assert appender.wait(timeout=300) == 0
        report = verify(ledger, retired_files=True)
        (events,) = ledger.connection.execute("SELECT count(*) FROM lake.main.inference_metered").fetchone()
    assert report.ok, report.problems
    assert events == 400
    backup(LedgerLocation.parse(str(lake), None), tmp_path / "backup")
    with Ledger.open_read_only(tmp_path / "backup") as copy:
        assert verify(copy, retired_files=True).ok


@pytest.mark.nightly  # ~40 s at CI's load: the same build and checks as the SQLite fixture
def test_expiry_on_a_postgresql_catalog(postgres_server, tmp_path):
    location = postgres_server.create_database(f"expire_{uuid.uuid4().hex[:12]}")
    seen = _build(location, str(tmp_path / "data"))
    assert seen["report"].snapshots_expired > 5 and seen["report"].files_dropped > 0
    assert seen["after"] == seen["before"]
    for name in ("verify", "verify_retired"):
        assert seen[name].ok, (name, seen[name].problems)


def test_the_next_flush_checks_and_records_the_files_flushed_before_format_20(tmp_path, monkeypatch):
    """Files a flush wrote before format 20 have no record, so verify digested their rows at every run. The next flush
    checks them as it checks its own and records them: verify then reads them by their bytes. A file whose bytes changed
    since is not recorded, and verify still names it."""
    from ledger import catalog_flush
    from ledger.catalog_flush import flush_bookkeeping

    lake = tmp_path / "lake"
    with Ledger.open(lake) as ledger:
        offset = append_in_batches(ledger, _values[:120], 0, 20)
        with monkeypatch.context() as before_format_20:  # a flush that finds no `ledger_flushed_file` table
            real = catalog_flush.ledger_tables
            before_format_20.setattr(catalog_flush, "ledger_tables", lambda c: real(c) - {"ledger_flushed_file"})
            flush_bookkeeping(ledger, rows_min=1)
        earlier = dict(
            ledger.connection.execute(
                "SELECT table_name, path FROM lake.main.file_checksum WHERE ingest_batch_id LIKE 'catalog-flush-%' "
                "AND table_name <> 'inlined_digest'"
            ).fetchall()
        )
        assert {"ingest_offset", "ingest_batch", "file_checksum"} <= set(earlier)
        assert _flushed_files(ledger) == {}
        append_in_batches(ledger, _values[120:], offset, 20)
        changed = lake / "data" / earlier["ingest_batch"]
        original = changed.read_bytes()
        changed.write_bytes(original[:-8] + b"\0" * 8)  # the file's footer: it no longer holds its recorded bytes
        flush_bookkeeping(ledger, rows_min=1)
        recorded = {
            path for (path,) in ledger.connection.execute("SELECT path FROM lake.main.ledger_flushed_file").fetchall()
        }
        assert recorded >= {path for table, path in earlier.items() if table != "ingest_batch"}
        assert earlier["ingest_batch"] not in recorded
        report = verify(ledger)
        assert any(earlier["ingest_batch"] in problem for problem in report.problems), report.problems
        changed.write_bytes(original)
        relations = digested_relations(monkeypatch)
        report = verify(ledger)
    assert report.ok, report.problems
    for table, path in earlier.items():
        if table != "ingest_batch":
            assert f"'{lake / 'data'}/{path}'" in relations[table], (table, relations[table])
