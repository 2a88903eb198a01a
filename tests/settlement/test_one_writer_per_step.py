"""One writer per settlement step, on both catalogs: concurrent `royalty close-epoch` and `royalty settle`
processes (the real CLI) close the epoch once, write its tree once, propose and record its root once.

Each process runs the CLI through a small driver that holds it, once it has planned the epoch, until every
process has planned it too (a file barrier): all of them then try to write the same epoch at the same moment,
the race that recorded epoch 1 four times on a PostgreSQL catalog before each step took a lock. The losers
exit 0 saying the epoch was closed by another process, write nothing (no data files: `verify` finds no
orphans), and `settle` goes on with that epoch's tree and proposal.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pytest

from ledger import Ledger
from ledger.verify import verify
from tests.support.anvil import REPO_ROOT, Anvil, anvil  # noqa: F401 - anvil is a fixture
from tests.support.settle_runs import (
    SETTLER_KEY,
    append,
    deploy,
    new_lake,
    proposals,
    settle,
    settle_process,
    settlement_rows,
    shape,
)

if TYPE_CHECKING:
    from tests.support.postgres import PostgresServer

pytest_plugins = ("tests.support.postgres",)

PROCESSES = 3
EVENTS = 80
RUN_TIMEOUT_S = 240
BARRIER_TIMEOUT_S = 120

# Runs the `royalty` CLI (argv after `-c`) with planning wrapped: after planning the epoch, the process
# creates BARRIER/<pid> and waits until PROCESSES such files exist, so every process writes at once.
_DRIVER = """
import os, sys, time
from pathlib import Path
import settlement.ledger_io as ledger_io
import settlement.closing as report

barrier, parties = Path(os.environ["BARRIER"]), int(os.environ["PARTIES"])
real_plan = ledger_io.plan_from_ledger

def plan_then_wait(*args, **kwargs):
    planned = real_plan(*args, **kwargs)
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + float(os.environ["BARRIER_TIMEOUT_S"])
    while len(list(barrier.iterdir())) < parties and time.monotonic() < deadline:
        time.sleep(0.02)
    return planned

ledger_io.plan_from_ledger = plan_then_wait
report.plan_from_ledger = plan_then_wait

from royalty.cli import main

sys.argv = ["royalty", *sys.argv[1:]]
main()
"""


# The same for `royalty sync-claims`: every process holds once it has read the claim-sync cursor the first time.
_SYNC_DRIVER = """
import os, sys, time
from pathlib import Path
import settlement.onchain.claims_sync as claims_sync

barrier, parties = Path(os.environ["BARRIER"]), int(os.environ["PARTIES"])
real_cursor = claims_sync._cursor
waited = []

def cursor_then_wait(*args, **kwargs):
    found = real_cursor(*args, **kwargs)
    if not waited:
        waited.append(True)
        (barrier / str(os.getpid())).touch()
        deadline = time.monotonic() + float(os.environ["BARRIER_TIMEOUT_S"])
        while len(list(barrier.iterdir())) < parties and time.monotonic() < deadline:
            time.sleep(0.02)
    return found

claims_sync._cursor = cursor_then_wait

from royalty.cli import main

sys.argv = ["royalty", *sys.argv[1:]]
main()
"""


class Catalog:
    """One test ledger: a SQLite-catalog folder, or a PostgreSQL database with a data folder."""

    def __init__(self, location: str, data_path: str | None) -> None:
        self.location = location
        self.data_path = data_path

    def options(self) -> list[str]:
        return ["--lake", self.location, *(["--data-path", self.data_path] if self.data_path else [])]

    def open(self) -> Ledger:
        return Ledger.open(self.location, self.data_path)

    def rows(self, table: str) -> pl.DataFrame:
        with Ledger.open_read_only(self.location, self.data_path) as ledger:
            return pl.from_arrow(ledger.connection.execute(f"SELECT * FROM lake.main.{table}").fetch_arrow_table())


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Catalog:
    """A fresh ledger holding a small sample (registry + EVENTS events) on each catalog backend."""
    if request.param == "sqlite":
        found = Catalog(str(tmp_path / "lake"), None)
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        found = Catalog(server.create_database(f"steps_{uuid.uuid4().hex[:12]}"), str(tmp_path / "data"))
    from ingest.sample import SampleTraffic

    traffic = SampleTraffic(shape, seed=5)
    with found.open() as ledger:
        append(ledger, list(traffic.registry()) + list(traffic.metered(EVENTS)), 0)
    return found


def _run_at_once(args: list[str], tmp_path: Path, driver: str = _DRIVER) -> list[subprocess.CompletedProcess]:
    barrier = tmp_path / f"barrier-{uuid.uuid4().hex[:8]}"
    barrier.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "BARRIER": str(barrier),
        "PARTIES": str(PROCESSES),
        "BARRIER_TIMEOUT_S": str(BARRIER_TIMEOUT_S),
        "ROYALTY_SETTLER_KEY": SETTLER_KEY,
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", driver, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(PROCESSES)
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def _assert_one_epoch_conserved_and_no_orphans(catalog: Catalog) -> None:
    epochs = catalog.rows("settlement_epoch")
    assert epochs["epoch"].to_list() == [1], epochs
    (epoch,) = epochs.to_dicts()
    payables = catalog.rows("settlement_payable")
    assert payables["amount_micros"].sum() + epoch["suspense_micros"] == epoch["fee_micros"]
    assert epoch["payable_micros"] == payables["amount_micros"].sum()
    with Ledger.open_read_only(catalog.location, catalog.data_path) as ledger:
        report = verify(ledger)
    assert report.ok, report.problems
    assert report.orphans == [], report.orphans


def _single_line(text: str) -> str:
    return " ".join(text.split())


def test_concurrent_close_epoch_processes_close_the_epoch_once(catalog: Catalog, tmp_path: Path) -> None:
    """PROCESSES `royalty close-epoch` at once: one closes epoch 1, the others exit 0 with 'closed by another
    process; nothing written'; one epoch row, payables + suspense = fees, no orphan files."""
    results = _run_at_once(["close-epoch", *catalog.options()], tmp_path)
    assert [r.returncode for r in results] == [0] * PROCESSES, [r.stderr for r in results]
    outputs = [_single_line(r.stdout + r.stderr) for r in results]
    lost = [o for o in outputs if "epoch 1 was closed by another process; nothing written" in o]
    assert len(lost) == PROCESSES - 1, outputs
    _assert_one_epoch_conserved_and_no_orphans(catalog)


def test_concurrent_settle_processes_close_build_propose_and_record_once(
    catalog: Catalog,
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
) -> None:
    """PROCESSES `royalty settle` at once on one ledger and one distributor: exactly one epoch, one tree, one
    intent, one RootProposed and one settlement record; every process exits 0 and reports the same root.

    Known limit (issue 12's note): on a SQLite catalog a read that meets another process's commit is not retried
    yet; that process exits 75 saying the ledger stayed busy (retry later), having written nothing of its own. It
    is accepted here, on SQLite only (no --data-path), for all but one process; the invariants below hold."""
    deployed = deploy(anvil)
    args = ["settle", *catalog.options(), "--rpc-url", anvil.url, "--distributor", deployed["distributor"], "--json"]
    results = _run_at_once(args, tmp_path)
    busy = [r for r in results if r.returncode == 75 and "stayed busy" in r.stderr and catalog.data_path is None]
    finished = [r for r in results if r.returncode == 0]
    assert len(finished) + len(busy) == PROCESSES and finished, [(r.returncode, r.stderr) for r in results]
    summaries = [json.loads(r.stdout.strip().splitlines()[-1]) for r in finished]
    assert {s["epoch"] for s in summaries} == {1}
    assert len({s["root"] for s in summaries}) == 1
    # One process sends the proposal; the others find it on the chain (`recovered`) or recorded.
    assert {s["outcome"] for s in summaries} <= {"proposed", "recovered", "already_recorded"}, summaries
    assert [s["outcome"] for s in summaries].count("proposed") <= 1, summaries
    _assert_one_epoch_conserved_and_no_orphans(catalog)
    assert catalog.rows("settlement_root")["epoch"].to_list() == [1]
    assert catalog.rows("settlement_intent").height == 1
    (record,) = catalog.rows("settlement_record").to_dicts()
    (proposal,) = proposals(anvil, deployed["distributor"], 1)
    assert record["tx_hash"] == "0x" + bytes(proposal["transactionHash"]).hex()
    assert record["root"] == summaries[0]["root"]


def test_concurrent_sync_claims_processes_store_each_block_range_once(
    catalog: Catalog,
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
) -> None:
    """PROCESSES `royalty sync-claims` at once, all having read the same (empty) cursor: every process exits 0
    and the stored ranges cover the blocks once, without overlap (each range is stored holding the lock)."""
    deployed = deploy(anvil)
    args = ["sync-claims", *catalog.options(), "--rpc-url", anvil.url, "--distributor", deployed["distributor"]]
    results = _run_at_once([*args, "--from-block", str(deployed["deployment_block"])], tmp_path, _SYNC_DRIVER)
    assert [r.returncode for r in results] == [0] * PROCESSES, [r.stderr for r in results]
    ranges = sorted(catalog.rows("settlement_claim_sync").select("from_block", "to_block").rows())
    assert ranges and ranges[0][0] == deployed["deployment_block"], ranges
    assert all(later[0] == earlier[1] + 1 for earlier, later in itertools.pairwise(ranges)), ranges


@pytest.mark.parametrize("between", ["the chain's proposals and the ledger", "the ledger and the chain"])
def test_a_proposal_made_and_recorded_by_another_run_while_settle_reads_is_found_not_a_mismatch(
    between: str,
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `royalty settle` checks the chain and the ledger before it proposes, without the propose lock. Another
    process proposing and recording the epoch in the middle of those reads used to stop it with a chain/ledger
    mismatch (seen once in CI: the chain read before, the ledger after). Now the ledger is read first and the
    chain at one block after it: the run finds the other's proposal, recorded, and exits 0 without proposing."""
    import settlement.onchain.settle as settle_module

    lake = tmp_path / "lake"
    new_lake(lake, EVENTS)
    deployed = deploy(anvil)
    other: list[subprocess.CompletedProcess] = []

    def another_settle_first() -> None:
        if not other:
            other.append(settle_process(lake, anvil, deployed["distributor"], None))

    if between == "the chain's proposals and the ledger":
        real_read_logs = settle_module.read_logs

        def read_logs_then_another(*args: object, **kwargs: object) -> list[dict]:
            found = real_read_logs(*args, **kwargs)  # type: ignore[arg-type]
            another_settle_first()
            return found

        monkeypatch.setattr(settle_module, "read_logs", read_logs_then_another)
    else:
        real_read_records = settle_module._read_records

        def read_records_then_another(*args: object) -> list:
            found = real_read_records(*args)  # type: ignore[arg-type]
            if args[1] == "settlement_intent":
                another_settle_first()
            return found

        monkeypatch.setattr(settle_module, "_read_records", read_records_then_another)
    result = settle(lake, anvil, deployed["distributor"])
    (first,) = other
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.strip().splitlines()[-1])["outcome"] == "proposed"
    assert result["outcome"] in {"recovered", "already_recorded"}, result
    (proposal,) = proposals(anvil, deployed["distributor"], 1)
    (record,) = settlement_rows(lake, "settlement_record")
    assert record["tx_hash"] == result["tx_hash"] == "0x" + bytes(proposal["transactionHash"]).hex()
    assert len(settlement_rows(lake, "settlement_intent")) == 1
