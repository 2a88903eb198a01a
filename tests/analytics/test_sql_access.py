"""`royalty sql` time travel by epoch and `--print-attach`, through the command line on a settled ledger."""

import json
import subprocess
from pathlib import Path

import duckdb
import pytest

from ingest.sample import SampleTraffic
from ledger import IngestBatch, Ledger, PartitionOffsets
from ledger.attach import EpochNotClosedError, epoch_snapshot
from schemas import BatchDecoder
from settlement.reports.export import export_epoch
from settlement.reports.html import gather
from tests.analytics.conftest import shape
from tests.conftest import royalty_command


def _sql(lake: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(royalty_command("sql", "--lake", str(lake), *args), capture_output=True, text=True)


def _rows(result: subprocess.CompletedProcess) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_as_of_epoch_returns_the_earlier_answer_after_later_epochs_exist(settled_lake: Path) -> None:
    """Time travel: with epoch 2 closed, `--as-of-epoch 1` shows epoch 1's epochs, payables and events only."""
    query = (
        "SELECT (SELECT max(epoch) FROM epochs) AS last_epoch, (SELECT max(epoch) FROM payables) AS payable_epoch, "
        "(SELECT sum(fee_micros) FROM inference_events) AS fees_micros, "
        "(SELECT sum(fee_micros) FROM epochs) AS settled_micros"
    )
    now = _rows(_sql(settled_lake, "--format", "json", query))[0]
    then = _rows(_sql(settled_lake, "--format", "json", "--as-of-epoch", "1", query))[0]
    assert (now["last_epoch"], now["payable_epoch"]) == (2, 2)
    assert (then["last_epoch"], then["payable_epoch"]) == (1, 1)
    assert then["fees_micros"] == then["settled_micros"] < now["fees_micros"]


def test_as_of_epoch_not_closed_fails_and_names_the_last_closed_epoch(settled_lake: Path) -> None:
    """An unclosed epoch is an operating error (exit 2) whose message names the last closed epoch."""
    result = _sql(settled_lake, "--as-of-epoch", "9", "SELECT 1")
    assert result.returncode == 2
    assert "epoch `9` is not closed" in " ".join(result.stderr.split())
    assert "last closed epoch is 2" in " ".join(result.stderr.split())


def test_sql_refuses_writes(settled_lake: Path) -> None:
    """`royalty sql` refuses anything but SELECT/EXPLAIN before it runs, even with time travel."""
    result = _sql(settled_lake, "--as-of-epoch", "1", "DELETE FROM lake.main.settlement_posting")
    assert result.returncode == 2
    assert "read-only and reads the ledger only; refused the DELETE statement" in " ".join(result.stderr.split())


@pytest.mark.parametrize("as_of", [(), ("--as-of-epoch", "1")])
def test_print_attach_statements_attach_read_only_in_a_plain_duckdb_client(settled_lake: Path, as_of) -> None:
    """The printed statements run as-is in a bare DuckDB connection: views answer, writes are refused, and the
    lock-down settings hold: no file outside the data path, no setting changes."""
    result = _sql(settled_lake, "--print-attach", *as_of)
    assert result.returncode == 0, result.stderr
    client = duckdb.connect()
    for statement in client.extract_statements(result.stdout):
        client.execute(statement)
    (last_epoch,) = client.execute("SELECT max(epoch) FROM payables").fetchone()
    assert last_epoch == (1 if as_of else 2)
    with pytest.raises(duckdb.Error, match=r"read.only"):
        client.execute("INSERT INTO lake.main.settlement_epoch SELECT * FROM lake.main.settlement_epoch")
    with pytest.raises(duckdb.PermissionException):
        client.execute("SELECT * FROM read_text('/etc/passwd')")
    for statement in ("SET enable_external_access = true", "SET lock_configuration = false", "SET threads = 64"):
        with pytest.raises(duckdb.InvalidInputException, match="locked"):
            client.execute(statement)


def test_epoch_tools_on_a_ledger_that_never_closed_an_epoch_say_so(tmp_path: Path) -> None:
    """Before the settlement tables exist, time travel, export and report raise `EpochNotClosedError`."""
    values = list(SampleTraffic(shape, seed=1).registry())
    with Ledger.open(tmp_path / "lake") as ledger:
        batch = IngestBatch.from_messages(
            values, ["t"] * len(values), [0] * len(values), list(range(len(values))), BatchDecoder()
        )
        ledger.append(batch, [PartitionOffsets("t", 0, 0, len(values))])
    with Ledger.open_read_only(tmp_path / "lake") as ledger:
        for attempt in (
            lambda: epoch_snapshot(ledger, 1),
            lambda: export_epoch(ledger, 1, tmp_path / "out"),
            lambda: gather(ledger, 1),
        ):
            with pytest.raises(EpochNotClosedError, match="no epoch has been closed yet"):
                attempt()
    assert not (tmp_path / "out").exists()


def test_a_query_past_its_time_limit_is_stopped_with_advice_and_the_next_one_runs(settled_lake: Path) -> None:
    """`--timeout-s` (setting `query_s_max`) interrupts a runaway query: exit 2 naming the limit, no hang."""
    runaway = _sql(settled_lake, "--timeout-s", "1", "SELECT count(*) FROM range(1000000000000) a, inference_events")
    assert runaway.returncode == 2
    assert "ran past 1 s and was stopped (setting `query_s_max`)" in " ".join(runaway.stderr.split())
    assert _rows(_sql(settled_lake, "--timeout-s", "1", "--format", "json", "SELECT 1 AS one")) == [{"one": 1}]
