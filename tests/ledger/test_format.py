"""The ledger format version and `royalty migrate`: a ledger written by the previous version opens.

`tests/fixtures/ledger_format_1.tar.gz` is a ledger written by the code before formats were
recorded (commit ac69727): 3,000 sample events ingested, epoch 1 closed and settled on the
in-process chain, then 1,000 more events ingested and left unsettled. It was written in
`/tmp/v1gen/lake`, so its catalog names that folder as its data path.

`tests/fixtures/ledger_format_19.tar.gz` is a ledger written by format 19 (the code of commit 9261497, in
`/tmp/v19gen/lake`): the sample registry and 110 events appended in batches of 20, epoch 1 closed, 90 more events,
`compact`, `expire --older-than-s 0` with every bookkeeping row moved to Parquet files (format 18's flush), then 31 more
events. Its flushed files have no `ledger_flushed_file` record (format 20).

`tests/fixtures/ledger_format_20.tar.gz` is a ledger written by format 20 (the code of commit 41a2045, in
`/tmp/v20gen/lake`), the same way: 110 events in batches of 20, epoch 1 closed, 90 more, `compact` (6 merges, 36 files
retired), `expire --older-than-s 0` (15 of those files dropped from the catalog, every bookkeeping row flushed), 31 more
events. Its compactions have no `ledger_compaction_summary` row (format 21).

`tests/fixtures/ledger_format_21.tar.gz` is a ledger written by format 21 (the code of commit d2392f9, in
`/tmp/v21gen/lake`): 60 `Transfer` rows of one token (mints and transfers among 8 holders, one every other block) stored
as `sync-holders` stores them, in three ranges ending at blocks 39, 79 and 119, with a balance checkpoint at blocks 39
and 79. Its checkpoints have no balance-blocks (format 22).
"""

import shutil
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import pytest

from ledger import Ledger, define_views
from ledger.connection import LedgerLocation, catalog_alias, connect
from ledger.errors import LedgerFormatError
from ledger.format import format_table, format_version_current, record_format, stored_format_version
from ledger.tables import create_statements
from ledger.verify import verify
from tests.conftest import repo_root, royalty_command
from tests.ledger.helpers import digested_relations, inlined_table
from tests.settlement.test_holders_properties import _brute_force

fixture_v1 = repo_root / "tests" / "fixtures" / "ledger_format_1.tar.gz"
fixture_v19 = repo_root / "tests" / "fixtures" / "ledger_format_19.tar.gz"
fixture_v20 = repo_root / "tests" / "fixtures" / "ledger_format_20.tar.gz"
fixture_v21 = repo_root / "tests" / "fixtures" / "ledger_format_21.tar.gz"


def _royalty(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(royalty_command(*args), capture_output=True, text=True, timeout=300)
    result.stderr = " ".join(result.stderr.split())  # rich wraps long messages
    return result


def _migrated(fixture: Path, version: int, tmp_path: Path) -> Path:
    """The ledger of `fixture` (format `version`), refused until migrated, then migrated with `royalty migrate`."""
    with tarfile.open(fixture) as archive:
        archive.extractall(tmp_path, filter="data")
    lake = tmp_path / "lake"
    with pytest.raises(LedgerFormatError, match=f"format {version}"):
        Ledger.open(lake).close()
    migrated = _royalty("migrate", "--lake", str(lake))
    assert migrated.returncode == 0, migrated.stderr
    assert f"from format {version} to {format_version_current}" in migrated.stdout
    return lake


@pytest.fixture
def lake_v1(tmp_path: Path) -> Path:
    with tarfile.open(fixture_v1) as archive:
        archive.extractall(tmp_path, filter="data")
    return tmp_path / "lake"


def test_a_ledger_of_the_previous_format_is_refused_until_migrated(lake_v1: Path) -> None:
    """Every command refuses a format-1 ledger, naming `royalty migrate`, and writes nothing."""
    catalog_before = (lake_v1 / "catalog.sqlite").read_bytes()
    for args in (
        ("sql", "--lake", str(lake_v1), "SELECT count(*) FROM inference_events"),
        ("verify", "--lake", str(lake_v1)),
        ("close-epoch", "--lake", str(lake_v1)),
    ):
        result = _royalty(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "format 1" in result.stderr and "royalty migrate" in result.stderr, result.stderr
    assert (lake_v1 / "catalog.sqlite").read_bytes() == catalog_before


def test_migrate_moves_a_previous_ledger_forward_and_it_then_verifies_and_settles(lake_v1: Path) -> None:
    """`royalty migrate` applies the steps once; the ledger then verifies, queries and closes its next epoch."""
    first = _royalty("migrate", "--lake", str(lake_v1))
    assert first.returncode == 0, first.stderr
    assert f"from format 1 to {format_version_current}" in first.stdout
    again = _royalty("migrate", "--lake", str(lake_v1))
    assert again.returncode == 0 and "nothing to do" in again.stdout

    verified = _royalty("verify", "--lake", str(lake_v1))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    counted = _royalty("sql", "--lake", str(lake_v1), "--format", "csv", "SELECT count(*) AS n FROM inference_events")
    assert counted.returncode == 0, counted.stderr
    assert int(counted.stdout.splitlines()[-1]) == 3_000 + 1_000  # both samples' distinct valid calls
    closed = _royalty("close-epoch", "--lake", str(lake_v1))
    assert closed.returncode == 0, closed.stderr
    epochs = _royalty("sql", "--lake", str(lake_v1), "--format", "csv", "SELECT max(epoch) FROM epochs")
    assert epochs.stdout.splitlines()[-1] == "2"
    with Ledger.open_read_only(lake_v1) as ledger:
        rows = ledger.connection.execute(f"SELECT format_version FROM lake.main.{format_table}").fetchall()
        # Format 19: epoch 2's close read epoch 1's metered files once and recorded exactly its events and fees.
        recorded = ledger.connection.execute(
            "SELECT min(r.epoch), max(r.epoch), sum(r.event_count) = any_value(e.event_count), "
            "sum(r.fee_micros) = any_value(e.fee_micros) "
            "FROM lake.main.settlement_file_sum r, lake.main.settlement_epoch e WHERE e.epoch = 1"
        ).fetchall()
        define_views(ledger)
        unreconciled = ledger.connection.execute(
            "SELECT * FROM reconciliation WHERE items_off <> 0 OR difference_micros <> 0"
        ).fetchall()
    assert sorted(version for (version,) in rows) == list(range(2, format_version_current + 1))
    assert recorded == [(2, 2, True, True)]
    assert unreconciled == []


def test_old_dead_letters_get_a_code_from_their_reason_after_migrate(lake_v1: Path) -> None:
    """Format 6: the v1 ledger's dead letters keep a NULL stored reason_code (no row is rewritten), and the
    `dead_letters` view shows a derived code for each, none `unclassified`: the sample's invalid messages and
    the conflicting duplicates."""
    assert _royalty("migrate", "--lake", str(lake_v1)).returncode == 0
    with Ledger.open_read_only(lake_v1) as ledger:
        stored = ledger.connection.execute(
            "SELECT count(*), count(reason_code) FROM lake.main.dead_letter"
        ).fetchone()
        define_views(ledger)
        codes = dict(
            ledger.connection.execute(
                "SELECT coalesce(reason_code, 'NULL'), count(*) FROM dead_letters GROUP BY ALL"
            ).fetchall()
        )
    assert stored[0] > 0 and stored[1] == 0
    assert sum(codes.values()) == stored[0]
    assert set(codes) == {
        "truncated_json", "invalid_utf8", "unknown_event_type", "unknown_field", "field_invalid",
        "conflicting_duplicate",
    }, codes


def test_a_new_ledger_records_the_current_format_once(lake_dir: Path) -> None:
    for _ in range(2):
        Ledger.open(lake_dir).close()
    with Ledger.open_read_only(lake_dir) as ledger:
        rows = ledger.connection.execute(f"SELECT format_version FROM lake.main.{format_table}").fetchall()
        assert rows == [(format_version_current,)]
        assert verify(ledger).ok


def test_a_ledger_of_a_newer_format_is_refused_naming_the_upgrade(lake_dir: Path) -> None:
    with Ledger.open(lake_dir) as ledger:
        ledger.connection.execute("BEGIN")
        record_format(ledger.connection, format_version_current + 1, "from the future")
        ledger.connection.execute("COMMIT")
    for open_ledger in (Ledger.open, Ledger.open_read_only):
        with pytest.raises(LedgerFormatError, match="newer royalty-engine"):
            open_ledger(lake_dir)
    result = _royalty("migrate", "--lake", str(lake_dir))
    assert result.returncode == 2 and "newer royalty-engine" in result.stderr


def test_verify_accepts_a_schema_change_only_from_a_recorded_migration_step(lake_dir: Path) -> None:
    """A column added in the snapshot of a format step passes; any other ALTER is named."""
    with Ledger.open(lake_dir) as ledger:
        connection = ledger.connection
        connection.execute("BEGIN")
        connection.execute("ALTER TABLE lake.main.dead_letter ADD COLUMN added_by_a_step VARCHAR")
        record_format(connection, format_version_current, "a step of a test")
        connection.execute("COMMIT")
        assert verify(ledger).ok
        connection.execute("ALTER TABLE lake.main.dead_letter ADD COLUMN added_behind_the_ledger VARCHAR")
        problems = verify(ledger).problems
    assert len(problems) == 1 and "tables_altered" in problems[0], problems


def test_a_migration_reports_nothing_to_do_on_a_current_ledger(lake_dir: Path) -> None:
    Ledger.open(lake_dir).close()
    result = _royalty("migrate", "--lake", str(lake_dir))
    assert result.returncode == 0 and "nothing to do" in result.stdout


def test_a_ledger_another_process_is_creating_is_not_mistaken_for_format_1(lake_dir: Path) -> None:
    """Two processes opening a new ledger at once: the second may see the creator's format table before
    its first row (the creator makes and stamps that table first, in transactions of their own). That is a
    new ledger, not a format-1 ledger to migrate (it was refused so: three writers on a fresh PostgreSQL
    catalog, one exited 2 'is in format 1'). Beside older tables an empty format table still means format 1."""
    lake_dir.mkdir()
    connection = connect(LedgerLocation.parse(str(lake_dir)), read_only=False)
    for statement in create_statements(catalog_alias, [format_table]):
        connection.execute(statement)
    assert stored_format_version(connection) is None
    connection.close()
    with Ledger.open(lake_dir) as ledger:
        assert stored_format_version(ledger.connection) == format_version_current
        assert verify(ledger).ok
    stale = lake_dir.parent / "stale"
    stale.mkdir()
    connection = connect(LedgerLocation.parse(str(stale)), read_only=False)
    for statement in create_statements(catalog_alias, [format_table, "dead_letter"]):
        connection.execute(statement)
    assert stored_format_version(connection) == 1
    connection.close()


def test_a_migrated_format_1_ledger_expires_and_moves_its_bookkeeping_out_of_the_catalog(lake_v1: Path) -> None:
    """Format 18 (ledger/catalog_flush.py) on a ledger written before formats, digests and compaction existed: its
    bookkeeping rows (some older than their digests) move to checksummed files and it still verifies and settles."""
    from ledger.catalog_flush import inlined_row_counts
    from ledger.expiry import expire
    from settlement import close_epoch

    assert _royalty("migrate", "--lake", str(lake_v1)).returncode == 0
    with Ledger.open(lake_v1) as ledger:
        offsets = ledger.connection.execute("SELECT * FROM lake.main.ingest_offset ORDER BY ALL").fetchall()
        report = expire(ledger, older_than_s=0, delete_files_after_s=0, flush_rows_min=1)
        assert report.rows_flushed > 0 and inlined_row_counts(ledger)["ingest_offset"] == 0
        assert ledger.connection.execute("SELECT * FROM lake.main.ingest_offset ORDER BY ALL").fetchall() == offsets
        result = verify(ledger)
        assert result.ok, result.problems
        assert close_epoch(ledger, dry_run=True).event_count == 1_000  # the unsettled sample


def test_a_format_19_ledger_migrates_and_its_next_flush_records_the_files_flushed_before(tmp_path, monkeypatch):
    """Format 20 records each file a flush writes with what the flush checked (ledger_flushed_file), and verify checks
    such a file by its bytes. A format-19 ledger's flushed files have no record: after `royalty migrate` verify still
    digests their rows, until its next flush checks them with its own files and records them all."""
    from ledger.expiry import expire
    from tests.support.ledger_batches import append_in_batches, sample_messages

    lake = _migrated(fixture_v19, 19, tmp_path)
    relations = digested_relations(monkeypatch)
    with Ledger.open(lake) as ledger:
        (old_file,) = ledger.connection.execute(
            "SELECT DISTINCT filename FROM lake.main.ingest_offset WHERE filename LIKE '%.parquet'"
        ).fetchone()
        assert ledger.connection.execute("SELECT count(*) FROM lake.main.ledger_flushed_file").fetchone() == (0,)
        report = verify(ledger)
        assert report.ok, report.problems
        assert relations["ingest_offset"] == "lake.main.ingest_offset"  # every row digested, the old file's too
        append_in_batches(ledger, sample_messages(260)[231:], 231, 10)
        expire(ledger, older_than_s=0, delete_files_after_s=0, flush_rows_min=1)
        files = dict(
            ledger.connection.execute(
                "SELECT path, row_count FROM lake.main.ledger_flushed_file WHERE table_name = 'ingest_offset'"
            ).fetchall()
        )
        counts = dict(
            ledger.connection.execute("SELECT filename, count(*) FROM lake.main.ingest_offset GROUP BY ALL").fetchall()
        )
        relations.clear()
        report = verify(ledger)
    assert report.ok, report.problems
    data = f"{lake / 'data'}/"
    assert {data + path: rows for path, rows in files.items()} == counts  # both files, with their rows
    assert old_file in {data + path for path in files}
    # Neither file's rows are digested again.
    assert all(f"'{data}{path}'" in relations["ingest_offset"] for path in files), relations["ingest_offset"]


def _summaries(ledger: Ledger) -> dict[str, tuple[int, int, str]]:
    rows = ledger.connection.execute(
        "SELECT compaction_id, retired_file_count, retired_row_count, retired_paths_digest "
        "FROM lake.main.ledger_compaction_summary"
    ).fetchall()
    return {compaction_id: (files, count, digest) for compaction_id, files, count, digest in rows}


def _summed_from_retired_rows(ledger: Ledger) -> dict[str, tuple[int, int, str]]:
    from ledger.compaction import paths_digest

    rows = ledger.connection.execute(
        "SELECT compaction_id, count(*), sum(row_count), list(path) FROM lake.main.ledger_compaction_retired "
        "GROUP BY ALL"
    ).fetchall()
    return {compaction_id: (files, int(count), paths_digest(paths)) for compaction_id, files, count, paths in rows}


def test_a_format_20_ledger_migrates_with_each_compaction_summed_up_and_verify_checks_the_drops_against_the_sums(
    tmp_path: Path,
) -> None:
    """Format 21 sums up each compaction's retired files (ledger_compaction_summary) and verify counts and digests the
    files an expiry dropped from those sums. `royalty migrate` sums up a format-20 ledger's compactions from their
    retired-file rows; verify is then clean (also reading every retired file), after more appends, compactions and an
    expiry too, and names a summary that disagrees with its compaction's rows."""
    from ledger.compaction import compact
    from ledger.expiry import expire
    from tests.support.ledger_batches import append_in_batches, sample_messages

    lake = _migrated(fixture_v20, 20, tmp_path)
    with Ledger.open(lake) as ledger:
        summaries = _summaries(ledger)
        assert len(summaries) == 6 and summaries == _summed_from_retired_rows(ledger)
        report = verify(ledger)
        assert report.ok and report.snapshots_expired == 15, report.problems
        report = verify(ledger, retired_files=True)
        assert report.ok, report.problems
    tampered = tmp_path / "tampered"
    shutil.copytree(lake, tampered)
    with sqlite3.connect(tampered / "catalog.sqlite") as catalog:
        inlined = inlined_table(catalog, "ledger_compaction_summary")
        catalog.execute(f"UPDATE {inlined} SET retired_file_count = retired_file_count + 1")
    with Ledger.open_read_only(tampered) as ledger:
        problems = verify(ledger).problems
    assert sum("its summary records" in problem for problem in problems) == 6, problems

    first = len(sample_messages(231))
    with Ledger.open(lake) as ledger:
        append_in_batches(ledger, sample_messages(291)[first:], first, 10)
        assert compact(ledger).merges > 0
        expire(ledger, older_than_s=0, delete_files_after_s=0, flush_rows_min=1)
        summaries = _summaries(ledger)
        (compactions,) = ledger.connection.execute("SELECT count(*) FROM lake.main.ledger_compaction").fetchone()
        assert len(summaries) == compactions > 6 and summaries == _summed_from_retired_rows(ledger)
        report = verify(ledger)
    assert report.ok, report.problems


def _holder_transfers(ledger: Ledger) -> list[tuple[int, str, str, int]]:
    rows = ledger.connection.execute(
        "SELECT block_number, from_address, to_address, value_units FROM lake.main.holder_transfer"
    ).fetchall()
    return [(block, sender, receiver, int(value)) for block, sender, receiver, value in rows]


def test_a_format_21_ledger_migrates_and_weighs_holders_the_same_then_from_balance_blocks(tmp_path: Path) -> None:
    """Format 22 keeps each holder's balance-blocks in the balance checkpoints. A format-21 ledger's checkpoints have
    none after `royalty migrate` (NULL), and its weights read the transfers as before, equal to the block-by-block
    sums; the next checkpoint the sync stores sums them from every transfer once, and weights over ranges holding it
    are read as a difference of balance-blocks, equal to those sums too; verify is clean."""
    import pyarrow as pa

    from settlement import holders
    from settlement.use_cases.ledger_setup import register_with_ledger

    register_with_ledger()
    lake = _migrated(fixture_v21, 21, tmp_path)
    with Ledger.open(lake) as ledger:
        connection = ledger.connection
        chain_id, token = connection.execute(
            "SELECT any_value(chain_id), any_value(token) FROM lake.main.holder_transfer"
        ).fetchone()
        kept = connection.execute(
            "SELECT block_number, count(*), count(balance_blocks_high) FROM lake.main.holder_balance_checkpoint "
            "GROUP BY ALL ORDER BY 1"
        ).fetchall()
        assert [(block, with_blocks) for block, _, with_blocks in kept] == [(39, 0), (79, 0)]
        transfers = _holder_transfers(ledger)
        for first, last in [(0, 119), (40, 100), (80, 119)]:
            weights = holders.holder_weight_units(connection, chain_id, token, first, last, set())
            assert dict(weights.iter_rows()) == _brute_force(transfers, first, last)

        balances = holders.balances_at(connection, chain_id, token, 119)
        richest = max(balances, key=balances.__getitem__)
        moved = [(120 + 2 * i, richest, holder, 1 + i) for i, holder in enumerate(sorted(balances))]
        synced_at = connection.execute("SELECT max(synced_at) FROM lake.main.holder_transfer").fetchone()[0]
        pending = pa.Table.from_pylist(
            [
                {"chain_id": chain_id, "token": token, "block_number": block, "block_hash": f"0x{block:064x}",
                 "tx_hash": f"0x{block:064x}", "log_index": 0, "from_address": sender, "to_address": receiver,
                 "value_units": str(value), "synced_at": synced_at}
                for block, sender, receiver, value in moved
            ],
            schema=holders.holder_transfer_schema,
        )  # fmt: skip
        checkpoint = ledger.recorder.read(
            lambda c: holders.balance_checkpoint(c, chain_id, token, 159, pending, transfers_min=1), "checkpoint"
        )
        assert checkpoint is not None and checkpoint["balance_blocks_high"].null_count == 0
        ledger.append_records({holders.holder_transfer_table: pending, holders.holder_checkpoint_table: checkpoint})
        transfers = _holder_transfers(ledger)
        for first, last in [(0, 159), (40, 159), (100, 159), (150, 159), (80, 130)]:
            weights = holders.holder_weight_units(connection, chain_id, token, first, last, set())
            assert dict(weights.iter_rows()) == _brute_force(transfers, first, last)
        params = {"chain": chain_id, "token": token, "from_block": 0, "to_block": 159}
        assert holders._balance_blocks_plan(connection, params) == (159, None, True)  # its rows alone
        report = verify(ledger)
    assert report.ok, report.problems
