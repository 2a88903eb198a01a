"""`royalty export`: an epoch's payables, postings and per-contributor statements, read back as other tools would."""

import csv
import json
import subprocess
from pathlib import Path

import pyarrow.dataset as ds

from ledger import Ledger
from tests.conftest import royalty_command


def _ledger_rows(lake: Path, sql: str) -> list[tuple]:
    with Ledger.open_read_only(lake) as ledger:
        return ledger.connection.execute(sql).fetchall()


def test_export_writes_statements_that_hive_readers_and_spreadsheets_total_to_the_ledger(
    settled_lake: Path, tmp_path: Path
) -> None:
    """Export epoch 2 via the CLI; Parquet read as a Hive dataset and CSV read plainly match the ledger's sums."""
    out = tmp_path / "exports"
    result = subprocess.run(
        royalty_command("export", "--lake", str(settled_lake), "--epoch", "2", "--to", str(out)),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    [(payable_micros, recipients)] = _ledger_rows(
        settled_lake, "SELECT sum(amount_micros), count(*) FROM lake.main.settlement_payable WHERE epoch = 2"
    )
    [(postings,)] = _ledger_rows(settled_lake, "SELECT count(*) FROM lake.main.settlement_posting WHERE epoch = 2")
    credits = dict(
        _ledger_rows(
            settled_lake, "SELECT recipient, credited_micros FROM lake.main.settlement_payable WHERE epoch = 2"
        )
    )

    # Spark and Trino read each folder as one table, with the Hive partitions as columns.
    payables = ds.dataset(out / "payables", format="parquet", partitioning="hive").to_table()
    assert set(payables["epoch"].to_pylist()) == {2}
    assert (payables.num_rows, sum(payables["amount_micros"].to_pylist())) == (recipients, payable_micros)
    assert ds.dataset(out / "postings", format="parquet", partitioning="hive").count_rows() == postings
    lines = ds.dataset(out / "statements", format="parquet", partitioning="hive").to_table()
    by_recipient: dict[str, int] = {}
    for row in lines.to_pylist():
        assert row["epoch"] == 2
        by_recipient[row["recipient"]] = by_recipient.get(row["recipient"], 0) + row["credited_micros"]
    assert by_recipient == credits

    # A spreadsheet opens one CSV alone: it names its recipient and totals like the Parquet.
    with open(out / "payables_csv" / "epoch=2" / "payables.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(int(row["amount_micros"]) for row in rows) == payable_micros
    assert {row["asset"] for row in rows} == {"USDC"}
    for path in (out / "statements_csv" / "epoch=2").glob("recipient=*/*.csv"):
        with open(path, newline="") as handle:
            statement = list(csv.DictReader(handle))
        recipient = path.parent.name.removeprefix("recipient=")
        assert {row["recipient"] for row in statement} == {recipient}
        assert sum(int(row["credited_micros"]) for row in statement) == credits[recipient]

    manifest = json.loads((out / "manifests" / "epoch=2.json").read_text())
    assert (manifest["payable_micros"], manifest["recipients"], manifest["postings"]) == (
        payable_micros,
        recipients,
        postings,
    )
    # Issue 18: the statements link to the epoch's bundle (not settled here: no digest yet).
    assert manifest["ledger_digest"] is None and manifest["rules_version"] is None
    assert manifest["audit_command"].startswith("royalty publish --epoch 2 --to bundle-epoch-2 && royalty audit")
    assert "royalty audit --bundle bundle-epoch-2" in result.stdout


def test_export_of_an_unclosed_epoch_fails_and_writes_nothing(settled_lake: Path, tmp_path: Path) -> None:
    """An epoch the ledger has not closed is refused with exit 2 and no folder is created."""
    result = subprocess.run(
        royalty_command("export", "--lake", str(settled_lake), "--epoch", "3", "--to", str(tmp_path / "x")),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "epoch `3` is not closed" in " ".join(result.stderr.split())
    assert not (tmp_path / "x").exists()
