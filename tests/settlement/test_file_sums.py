"""The reconciliation reads each metered data file once (ledger format 19): the close that first reconciles a file
records its event count, fee sum and SHA-256 (`settlement_file_sum`), and every later close reads that record instead
of the file, after checking it against the catalog's row count, deletions and the file's recorded SHA-256."""

from pathlib import Path

import polars as pl
import pytest

from ledger import Ledger, define_views
from ledger.verify import verify
from settlement import close_epoch
from settlement.exceptions import UnreconciledLedgerError, UnverifiedInputError
from settlement.input_checks import InputChecks
from tests.settlement.test_resent_events import _Feed, _metered, _registry


def _close_epochs(ledger: Ledger, epochs: int) -> None:
    """Epochs 1..`epochs`, one append (one metered data file) each."""
    feed = _Feed(ledger)
    for epoch in range(1, epochs + 1):
        extra = _registry() if epoch == 1 else []
        feed.send(*extra, *(_metered(f"ev-{epoch}-{i}", epoch, 100 * epoch + i) for i in range(3)))
        assert close_epoch(ledger).epoch == epoch


def _rows(ledger: Ledger, sql: str) -> list[tuple]:
    return ledger.connection.execute(sql).fetchall()  # the analyst views: defined once, by the test


def _off(ledger: Ledger) -> dict[tuple[str, int], tuple[int, int]]:
    rows = _rows(ledger, "SELECT check_name, epoch, items_off, difference_micros FROM reconciliation")
    return {(check, epoch): (items, micros) for check, epoch, items, micros in rows if items or micros}


_sums_read_now = (
    "SELECT m.path, count(*), sum(i.fee_micros) FROM lake.main.inference_metered i "
    "JOIN metered_files m ON m.filename = i.filename GROUP BY 1"
)


def _files_by_epoch(ledger: Ledger) -> dict[int, str]:
    """The metered data file of each closed epoch (path relative to the table's folder)."""
    rows = _rows(
        ledger,
        "SELECT e.epoch, m.path FROM metered_files m JOIN epochs e "
        "ON m.arrived_snapshot > e.previous_snapshot AND m.arrived_snapshot <= e.closing_snapshot",
    )
    return dict(rows)


def test_each_metered_file_is_read_by_one_close_and_a_tampered_record_is_named(tmp_path: Path) -> None:
    """Close n + 1 records epoch n's file with the file's own figures and SHA-256; only the last closed epoch's file is
    still read. A recorded file rewritten in place behind the ledger's back is then no longer read by the
    reconciliation (its record is): `verify` names it by its SHA-256. Tampers behind the ledger's back, one epoch each:
    epoch 1's record raised by 11 micros, epoch 2's file given another SHA-256 in the ledger's checksum row (as a
    file replaced together with its checksum), one of epoch 3's events deleted: each is named by events_vs_epoch and
    stops close-epoch (the rewritten record file first fails the close's file check). A migrated older ledger:
    tests/ledger/test_format.py::test_migrate_moves_a_previous_ledger_forward_and_it_then_verifies_and_settles."""
    with Ledger.open(tmp_path / "lake") as ledger:
        _close_epochs(ledger, 4)
        define_views(ledger)
        files = _files_by_epoch(ledger)
        recorded = _rows(
            ledger, "SELECT epoch, path, event_count, fee_micros FROM lake.main.settlement_file_sum ORDER BY 1"
        )
        read_now = {path: (n, fee) for path, n, fee in _rows(ledger, _sums_read_now)}
        assert [(epoch, path) for epoch, path, _, _ in recorded] == [(n + 1, files[n]) for n in (1, 2, 3)]
        assert all((n, fee) == read_now[path] for _, path, n, fee in recorded)
        checksums = dict(_rows(ledger, "SELECT path, sha256 FROM lake.main.file_checksum"))
        recorded_sha = _rows(ledger, "SELECT path, sha256 FROM lake.main.settlement_file_sum")
        assert all(sha == checksums[f"main/inference_metered/{path}"] for path, sha in recorded_sha)
        assert _rows(ledger, "SELECT path FROM metered_file_sums_unrecorded") == [(files[4],)]
        assert _off(ledger) == {}

        # Epoch 2's file rewritten with every fee doubled, its path, catalog row and checksum row kept.
        (path,) = _rows(ledger, f"SELECT filename FROM metered_files WHERE path = '{files[2]}'")[0]
        pl.read_parquet(path).with_columns(pl.col("fee_micros") * 2).write_parquet(path)
        assert _off(ledger) == {}  # the record is read, not the file
        assert any(files[2] in problem for problem in verify(ledger).problems)

        connection = ledger.connection
        connection.execute("UPDATE lake.main.settlement_file_sum SET fee_micros = fee_micros + 11 WHERE epoch = 2")
        connection.execute(
            "UPDATE lake.main.file_checksum SET sha256 = repeat('0', 64) WHERE path = ?",
            [f"main/inference_metered/{files[2]}"],
        )
        connection.execute("DELETE FROM lake.main.inference_metered WHERE event_id = 'ev-3-1'")
        assert _off(ledger) == {
            ("events_vs_epoch", 1): (1, 11),  # the record's fee sum no longer matches epoch 1's
            ("events_vs_epoch", 2): (1, 0),  # the record's SHA-256 is not the file's any more
            ("events_vs_epoch", 3): (1, 0),  # a deletion touched a recorded file
        }
        with pytest.raises(UnverifiedInputError, match="settlement_file_sum"):
            close_epoch(ledger, dry_run=True)
        with pytest.raises(UnreconciledLedgerError, match="events_vs_epoch in epoch 1") as refused:
            close_epoch(ledger, dry_run=True, checks=InputChecks(accept_unverified_files=True))
        assert all(f"events_vs_epoch in epoch {epoch}" in str(refused.value) for epoch in (1, 2, 3))
