"""Compaction that keeps the proof (ledger/compaction.py): the same rows, epochs, views and exports, and a
verify that accepts only recorded retirements."""

import json
import random
import sqlite3
import subprocess
from pathlib import Path
from typing import BinaryIO
from unittest import mock

import polars as pl
import pytest

from ledger import Ledger, define_views, recorder
from ledger.compaction import compact, compactable_tables, live_files, snapshot_column
from ledger.object_store import DataStore
from ledger.verify import verify
from settlement import close_epoch
from settlement.ledger_io import _scan, data_files
from settlement.reports.export import export_epoch
from tests.conftest import royalty_command
from tests.ledger.helpers import inlined_table
from tests.support.ledger_batches import append_in_batches, sample_messages

_views_unchanged_by_compaction = (
    "inference_events", "reversals", "dead_letters", "ingest_offsets", "ingest_batches", "epochs",
)  # fmt: skip


def _settlement(ledger: Ledger) -> dict[str, list]:
    c = ledger.connection
    return {
        name: c.execute(sql).fetchall()
        for name, sql in {
            "postings": "SELECT entry_id, account, amount_micros FROM lake.main.settlement_posting ORDER BY ALL",
            "payables": "SELECT recipient, amount_micros, cumulative_micros FROM lake.main.settlement_payable "
            "ORDER BY ALL",
        }.items()
    }


def _views(ledger: Ledger) -> dict[str, list]:
    define_views(ledger)
    present = {name for (name,) in ledger.connection.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    return {
        name: ledger.connection.execute(f"SELECT * FROM {name} ORDER BY ALL").fetchall()
        for name in _views_unchanged_by_compaction
        if name in present
    }


def _garbage() -> bytes:
    return b'{"not": "an event"}'


def _messages() -> list[bytes]:
    values = sample_messages(500)
    rng = random.Random(7)
    for index in rng.sample(range(40, len(values)), 8):
        values.insert(index, _garbage())  # dead letters, compacted too
    return values


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same appends and epoch closes on two ledgers, one compacted between them; what each returned."""
    root = tmp_path_factory.mktemp("compaction")
    values = _messages()
    half = len(values) // 2
    seen: dict = {}
    for name in ("plain", "compacted"):
        with Ledger.open(root / name) as ledger:
            offset = append_in_batches(ledger, values[:half], 0, 60)
            close_epoch(ledger)
            append_in_batches(ledger, values[half:], offset, 45)
            if name == "compacted":
                before_snapshot = ledger.current_snapshot()
                seen["before"] = {
                    "rows": ledger.connection.execute("SELECT * FROM lake.main.inference_metered ORDER BY ALL")
                    .fetchall(),
                    "views": _views(ledger),
                    "plan": close_epoch(ledger, dry_run=True),
                    "files": {
                        t: len(live_files(ledger, t)) for t in ("inference_metered", "metered_rollup", "dead_letter")
                    },
                }
                seen["report"] = compact(ledger)
                seen["after"] = {
                    "rows": ledger.connection.execute("SELECT * FROM lake.main.inference_metered ORDER BY ALL")
                    .fetchall(),
                    "time_travel": ledger.connection.execute(
                        f"SELECT * FROM lake.main.inference_metered AT (VERSION => {before_snapshot}) ORDER BY ALL"
                    ).fetchall(),
                    "views": _views(ledger),
                    "files": {
                        t: len(live_files(ledger, t)) for t in ("inference_metered", "metered_rollup", "dead_letter")
                    },
                    "rollup_plan": close_epoch(ledger, dry_run=True, from_rollups=True),
                }
                seen["verify_after_compaction"] = verify(ledger)
            summary = close_epoch(ledger)
            seen[name] = {
                "summary": summary,
                "tables": _settlement(ledger),
                "export": _export(ledger, root / f"export-{name}"),
                "verify": verify(ledger),
            }
            if name == "compacted":
                seen["second_compaction"] = compact(ledger)
                seen["verify_after_second"] = verify(ledger)
                seen["lake"] = root / name
            else:
                seen["plain_lake"] = root / name
    return seen


def _export(ledger: Ledger, directory: Path) -> dict:
    export_epoch(ledger, 2, directory)
    return {
        str(path.relative_to(directory)): pl.read_parquet(path).sort(pl.all()).rows()
        for path in sorted(directory.rglob("*.parquet"))
    }


def test_compaction_merges_small_files_per_event_date_and_epoch(compared):
    before, after = compared["before"]["files"], compared["after"]["files"]
    assert compared["report"].merges >= 2
    assert after["inference_metered"] < before["inference_metered"] / 3
    assert after["dead_letter"] < before["dead_letter"]
    with Ledger.open_read_only(compared["lake"]) as ledger:
        epochs = ledger.connection.execute("SELECT closing_snapshot FROM lake.main.settlement_epoch").fetchall()
        closings = [s for (s,) in epochs]
        ranges = ledger.connection.execute(
            "SELECT table_name, first_snapshot, last_snapshot FROM lake.main.ledger_compaction"
        ).fetchall()
    assert {table for table, *_ in ranges} <= set(compactable_tables)
    # Never across a closing snapshot: no epoch closes inside a merged file's range of snapshots.
    assert not [r for r in ranges for closing in closings if r[1] <= closing < r[2]], (ranges, closings)


def test_merged_rollups_close_the_open_epoch_as_its_events_do(compared):
    """Rollup files are merged like the events' (per epoch window), and the open epoch closes from the merged
    rollups to the same figures as from the events of the ledger never compacted."""
    before, after = compared["before"]["files"], compared["after"]["files"]
    assert after["metered_rollup"] < before["metered_rollup"]
    rolled, plain = compared["after"]["rollup_plan"], compared["plain"]["summary"]
    assert rolled.rollup_cells is not None and rolled.rollup_cells[0] > 0
    same = ("event_count", "fee_micros", "payable_micros", "suspense_micros", "posting_count", "recipient_count")
    assert {k: getattr(rolled, k) for k in same} == {k: getattr(plain, k) for k in same}


def test_merged_rollups_sum_their_rows_and_verify_rechecks_the_sums(compared):
    """A merged rollup file holds one row per key with the exact sums of the rows it retired (fewer rows, the same
    fees and counts); verify re-reads the retired files and checks those sums."""
    with Ledger.open_read_only(compared["lake"]) as ledger:
        rows = ledger.connection.execute(
            "SELECT row_count, (SELECT sum(r.row_count) FROM lake.main.ledger_compaction_retired r "
            "WHERE r.compaction_id = c.compaction_id) FROM lake.main.ledger_compaction c "
            "WHERE table_name = 'metered_rollup'"
        ).fetchall()
        totals = ledger.connection.execute(
            "SELECT (SELECT sum(event_count) FROM lake.main.metered_rollup), "
            "(SELECT count(*) FROM lake.main.inference_metered), "
            "(SELECT sum(fee_micros) FROM lake.main.metered_rollup), "
            "(SELECT sum(fee_micros) FROM lake.main.inference_metered)"
        ).fetchone()
        full = verify(ledger, retired_files=True)
    assert rows and all(merged < retired for merged, retired in rows), rows
    assert totals[0] == totals[1] and totals[2] == totals[3], totals
    assert full.ok, full.problems


def test_rows_time_travel_and_views_are_unchanged_row_for_row(compared):
    before, after = compared["before"], compared["after"]
    assert after["rows"] == before["rows"]
    assert after["time_travel"] == before["rows"]
    assert after["views"] == before["views"]
    assert set(after["views"]) >= {"inference_events", "dead_letters", "ingest_batches"}


def test_epoch_settled_after_compaction_is_the_one_without_it(compared):
    plain, compacted = compared["plain"], compared["compacted"]
    assert compacted["tables"] == plain["tables"]
    assert compacted["summary"].fee_micros == plain["summary"].fee_micros == compared["before"]["plan"].fee_micros
    assert compacted["export"] == plain["export"]


def test_verify_accepts_recorded_compactions_and_rechecks_their_proof(compared):
    reports = (compared["verify_after_compaction"], compared["compacted"]["verify"], compared["verify_after_second"])
    for report in reports:
        assert report.ok, report.problems
    # The second run merged the closed epoch's merged file with nothing new: nothing to do there, and never
    # across the closing snapshot.
    assert compared["second_compaction"].merges == 0


def test_scan_reads_plain_and_merged_files_together_with_each_rows_snapshot(compared):
    """A merged file carries `_ducklake_internal_snapshot_id`; polars refused a scan mixing it with plain files."""
    count_sql = (
        "SELECT count(*), list(DISTINCT b.snapshot_id ORDER BY b.snapshot_id) FROM lake.main.inference_metered "
        "JOIN (SELECT ingest_batch_id, snapshot_id FROM lake.main.ingest_batch) b USING (ingest_batch_id)"
    )
    with Ledger.open_read_only(compared["plain_lake"]) as ledger:
        plain = data_files(ledger.connection, "inference_metered", ledger.current_snapshot())
        (plain_count, _) = ledger.connection.execute(count_sql).fetchone()
    with Ledger.open_read_only(compared["lake"]) as ledger:
        merged = data_files(ledger.connection, "inference_metered", ledger.current_snapshot())
        assert all(snapshot_column in pl.read_parquet_schema(p) for p in merged["path"])
        ordered = pl.concat([plain, merged])  # plain files first: the scan's schema is theirs
        rows = _scan(ordered, ["source", "event_id", "fee_micros"], None).collect()
        scanned = recorder.scan_files(ledger.connection, ordered, ["source", "event_id"]).collect()
        (merged_count, appended) = ledger.connection.execute(count_sql).fetchone()
    assert rows.height == scanned.height == plain_count + merged_count
    from_merged = scanned.tail(merged_count)  # plain frames come first in scan_files' result
    assert sorted(from_merged["snapshot"].unique().to_list()) == appended


def test_verify_names_a_retirement_no_compaction_recorded(tmp_path):
    """Rows deleted behind the ledger's back (a DELETE, or DuckLake's own merge run by hand) are a violation."""
    with Ledger.open(tmp_path / "deleted") as ledger:
        append_in_batches(ledger, sample_messages(300), 0, 50)
        (event_id,) = ledger.connection.execute("SELECT min(event_id) FROM lake.main.inference_metered").fetchone()
        ledger.connection.execute("DELETE FROM lake.main.inference_metered WHERE event_id = ?", [event_id])
        report = verify(ledger)
    assert any("tables_deleted_from" in problem for problem in report.problems)
    assert any("delete file" in problem for problem in report.problems), report.problems

    with Ledger.open(tmp_path / "merged") as ledger:
        append_in_batches(ledger, sample_messages(300), 0, 50)
        ledger.connection.execute("CALL ducklake_merge_adjacent_files('lake', 'inference_metered')")
        report = verify(ledger)
    assert any("has no recorded checksum" in problem for problem in report.problems), report.problems


def test_verify_names_a_merged_file_that_does_not_hold_the_retired_rows(tmp_path):
    with Ledger.open(tmp_path / "lake") as ledger:
        append_in_batches(ledger, sample_messages(300), 0, 50)
        assert compact(ledger).merges == 3  # the metered events' files, their rollups' and payer rollups'
        (merged,) = ledger.connection.execute("SELECT merged_path FROM lake.main.ledger_compaction").fetchone()
    path = tmp_path / "lake" / "data" / merged
    rows = pl.read_parquet(path)
    rows.head(rows.height - 1).write_parquet(path)  # one row lost
    with Ledger.open_read_only(tmp_path / "lake") as ledger:
        report = verify(ledger)  # as a live file, against the SHA-256 recorded once its proof held
        full = verify(ledger, retired_files=True)
    assert any(merged in problem and "bytes; the catalog recorded" in problem for problem in report.problems), (
        report.problems
    )
    assert any("does not match the SHA-256" in problem for problem in full.problems), full.problems


def test_verify_reads_retired_files_only_when_asked(tmp_path):
    """After a compaction `verify` no longer reads the files it retired (issue 19: verify was slower after
    compacting, re-reading them): the recorded proof covers them. `--retired-files` reads them and names one
    changed since (time travel to before the compaction would return its rows)."""
    with Ledger.open(tmp_path / "lake") as ledger:
        append_in_batches(ledger, sample_messages(300), 0, 50)
        live_before = len(live_files(ledger, "inference_metered"))
        assert compact(ledger).merges == 3  # the metered events' files, their rollups' and payer rollups'
        (retired,) = ledger.connection.execute(
            "SELECT path FROM lake.main.ledger_compaction_retired ORDER BY path LIMIT 1"
        ).fetchone()
    reads: list[str] = []
    original_open = DataStore.open

    def counted(store: DataStore, path: str) -> BinaryIO:
        reads.append(path)
        return original_open(store, path)

    with mock.patch.object(DataStore, "open", counted), Ledger.open_read_only(tmp_path / "lake") as ledger:
        quick = verify(ledger)
    assert quick.ok, quick.problems
    assert live_before > 1 and not any(retired in path for path in reads), reads
    path = tmp_path / "lake" / "data" / retired
    path.write_bytes(path.read_bytes()[:-8] + b"tampered")
    with Ledger.open_read_only(tmp_path / "lake") as ledger:
        assert verify(ledger).ok
        full = verify(ledger, retired_files=True)
    assert any(retired in problem and "does not match the SHA-256" in problem for problem in full.problems)
    result = subprocess.run(
        royalty_command("verify", "--lake", str(tmp_path / "lake"), "--retired-files"), capture_output=True, text=True
    )
    assert result.returncode == 1 and retired in result.stderr.replace("\n", ""), result.stdout + result.stderr


def test_compact_command_reports_json_and_refuses_a_missing_ledger(tmp_path):
    from typer.testing import CliRunner

    from royalty.cli import app

    with Ledger.open(tmp_path / "lake") as ledger:
        append_in_batches(ledger, sample_messages(200), 0, 40)
    result = CliRunner().invoke(app, ["compact", "--lake", str(tmp_path / "lake"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["merges"] == 3  # events, rollups, payer rollups
    result = CliRunner().invoke(app, ["compact", "--lake", str(tmp_path / "missing")])
    assert result.exit_code != 0
    assert not (tmp_path / "missing").exists()


def test_a_backup_after_compaction_verifies_and_travels_to_before_it(compared, tmp_path):
    """The backup holds the retired files too: verify re-checks the proofs on the copy, time travel reads them."""
    from ledger.backup import backup
    from ledger.connection import LedgerLocation

    backup(LedgerLocation.parse(compared["lake"]), tmp_path / "copy")
    with Ledger.open_read_only(tmp_path / "copy") as ledger:
        report = verify(ledger)
        (first_compaction,) = ledger.connection.execute(
            "SELECT min(snapshot_id) FROM lake.main.ledger_compaction"
        ).fetchone()
        rows = ledger.connection.execute(
            f"SELECT * FROM lake.main.inference_metered AT (VERSION => {first_compaction - 1}) ORDER BY ALL"
        ).fetchall()
    assert report.ok, report.problems
    assert rows == compared["before"]["rows"]


def test_verify_names_a_retired_files_row_count_changed_against_the_merge_and_its_summary(tmp_path):
    """A retired file's recorded row count changed in the catalog: the retired files no longer sum to the merged
    file's rows, nor to the compaction's summary (format 21); named by verify, with and without `--retired-files`."""
    with Ledger.open(tmp_path / "lake") as ledger:
        append_in_batches(ledger, sample_messages(300), 0, 50)
        assert compact(ledger).merges == 3
    with sqlite3.connect(tmp_path / "lake" / "catalog.sqlite") as catalog:
        inlined = inlined_table(catalog, "ledger_compaction_retired")
        first = f"(SELECT min(rowid) FROM {inlined})"
        catalog.execute(f"UPDATE {inlined} SET row_count = row_count + 1 WHERE rowid = {first}")
    with Ledger.open_read_only(tmp_path / "lake") as ledger:
        for report in (verify(ledger), verify(ledger, retired_files=True)):
            assert sum("recorded row counts do not sum to" in problem for problem in report.problems) == 1
            assert sum("its summary records" in problem for problem in report.problems) == 1, report.problems
