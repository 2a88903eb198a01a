"""Batch commands exit 75 (EX_TEMPFAIL) on a transient failure, so cron or Airflow retries, and 2 on a permanent one;
the ingest service retries only transient ledger errors and stops at once on the others."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ingest.sample import SampleShape, SampleTraffic
from ledger import IngestBatch, Ledger, PartitionOffsets
from royalty.cli import app
from schemas import BatchDecoder
from tests.conftest import repo_root

runner = CliRunner()
# A PostgreSQL catalog nothing listens for: the outage every batch command meets when the catalog is down.
catalog_down = "postgres:host=127.0.0.1 port=1 dbname=royalty user=royalty connect_timeout=2"
node_down = "http://127.0.0.1:1"
distributor = "0x" + "11" * 20


def _small_lake(lake: Path) -> None:
    traffic = SampleTraffic(SampleShape(models=2, contributors=4, compute_providers=1, payers=5), seed=2)
    values = list(traffic.registry()) + list(traffic.metered(40))
    offsets = list(range(len(values)))
    batch = IngestBatch.from_messages(values, ["t"] * len(values), [0] * len(values), offsets, BatchDecoder())
    with Ledger.open(lake) as ledger:
        ledger.append(batch, [PartitionOffsets("t", 0, 0, len(values))])


@pytest.mark.parametrize(
    "args",
    [
        ["close-epoch", "--lake", catalog_down, "--data-path", "{tmp}/data"],
        ["verify", "--lake", catalog_down, "--data-path", "{tmp}/data"],
        ["sql", "SELECT 1", "--lake", catalog_down, "--data-path", "{tmp}/data"],
        ["export", "--epoch", "1", "--to", "{tmp}/out", "--lake", catalog_down, "--data-path", "{tmp}/data"],
        ["report", "--epoch", "1", "--out", "{tmp}/r.html", "--lake", catalog_down, "--data-path", "{tmp}/data"],
        ["settle", "--lake", "{tmp}/lake", "--rpc-url", node_down, "--distributor", distributor],
        ["sync-claims", "--lake", "{tmp}/lake", "--rpc-url", node_down, "--distributor", distributor],
    ],
    ids=lambda args: args[0],
)
def test_a_batch_command_meeting_an_outage_exits_75_so_the_scheduler_retries(tmp_path: Path, args: list[str]) -> None:
    """The catalog or the node is down: a transient failure, exit 75 (EX_TEMPFAIL), not 2."""
    if "{tmp}/lake" in args:
        _small_lake(tmp_path / "lake")
    result = runner.invoke(
        app, [a.replace("{tmp}", str(tmp_path)) for a in args], env={"ROYALTY_SETTLER_KEY": "0x" + "42" * 32}
    )
    assert result.exit_code == 75, result.output
    assert "unreachable" in result.output or "unavailable" in result.output


def test_a_permanent_failure_exits_2(tmp_path: Path) -> None:
    """An epoch that does not exist is not cured by retrying: exit 2."""
    _small_lake(tmp_path / "lake")
    args = ["export", "--epoch", "9", "--to", str(tmp_path / "out"), "--lake", str(tmp_path / "lake")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output


def test_ingest_stops_at_once_on_a_ledger_error_retrying_cannot_cure(tmp_path: Path) -> None:
    """A ledger table altered behind the engine's back makes every append fail the same way (DuckDB refuses the
    file or binds no column): not retried for 15 minutes, ingest exits 2 within seconds, commits nothing."""
    lake = tmp_path / "lake"
    _small_lake(lake)
    with Ledger.open(lake) as ledger:
        ledger.connection.execute("ALTER TABLE lake.main.inference_metered RENAME COLUMN fee_micros TO fee_units")
        before = ledger.current_snapshot()
    source = tmp_path / "more.jsonl"
    traffic = SampleTraffic(SampleShape(models=2, contributors=4, compute_providers=1, payers=5), seed=3)
    source.write_bytes(b"\n".join(traffic.metered(30, first_index=1_000)) + b"\n")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "royalty.cli", "ingest", "--from-file", str(source), "--lake", str(lake)],
        capture_output=True, text=True, cwd=repo_root, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert time.monotonic() - started < 60
    message = " ".join(result.stderr.split())
    assert "retrying cannot cure (not retried)" in message and "inference_metered" in message
    with Ledger.open_read_only(lake) as ledger:
        assert ledger.current_snapshot() == before
