"""Fault injection, settlement half: `royalty settle` SIGKILLed before, during and after each of its ledger
transactions, its funding transfer and its `proposeRoot` send, then run again, against a real anvil.

Every point must end the same way after the rerun: exactly one `RootProposed` for the epoch carrying the
ledger's root, exactly one `settlement_record` naming that transaction, the distributor funded exactly
once (its balance is the root's total), and every payee's claim paying exactly its payable. The ledger
stays verifiable (`royalty verify`) even when the kill lands inside an open DuckLake transaction.

Two ways of killing, both from a small driver around the real CLI (production code has no hook): `settle`'s
`broadcast` wrapped to SIGKILL just before or after sending (`tests/support/settle_runs.py`), and, for
the ledger transactions, a small driver that runs the real CLI in a subprocess after wrapping
`Ledger.append_records` so the process SIGKILLs itself before the transaction, inside it (rows and
Parquet files written, COMMIT not yet run), or right after it commits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledger import Ledger
from ledger.verify import verify
from settlement.onchain import account_proof
from settlement.onchain.chain import connect, distributor_contract, token_contract
from tests.support.anvil import REPO_ROOT, Anvil, anvil  # noqa: F401 - anvil is a fixture
from tests.support.settle_runs import (
    SETTLER_KEY,
    deploy,
    expected_units,
    new_lake,
    proposals,
    settle_process,
    settlement_rows,
)

CLAIMER = "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc"  # anvil dev account 5, unlocked on the node
EVENTS = 120
RUN_TIMEOUT_S = 180

# Runs `royalty settle` (argv after `--`) with `Ledger.append_records` wrapped to SIGKILL the process at
# FAULT_AT = "<table>:<before|during|after>", or after the funding transfer with "fund:after".
_DRIVER = """
import contextlib, os, signal, sys
from ledger.ledger import Ledger
import settlement.onchain.settle as settle_module

table, when = os.environ["FAULT_AT"].split(":")

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if table == "fund":
    real_transact = settle_module.transact

    def transact(*args, **kwargs):
        receipt = real_transact(*args, **kwargs)
        die()
        return receipt

    settle_module.transact = transact
else:
    real_append = Ledger.append_records

    def append_records(self, rows_by_table, precondition=None):
        if table not in rows_by_table:
            return real_append(self, rows_by_table, precondition)
        if when == "before":
            die()
        if when == "during":
            real_transaction = self._transaction

            @contextlib.contextmanager
            def dying():
                with real_transaction():
                    yield
                    die()  # every row and file of the transaction written, COMMIT not run

            self._transaction = dying
        snapshot = real_append(self, rows_by_table, precondition)
        if when == "after":
            die()
        return snapshot

    Ledger.append_records = append_records

from royalty.cli import main

sys.argv = ["royalty", *sys.argv[1:]]
main()
"""


def _settle_killed_at(lake: Path, node: Anvil, distributor: str, fault_at: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ROYALTY_SETTLER_KEY": SETTLER_KEY, "PYTHONPATH": str(REPO_ROOT), "FAULT_AT": fault_at}
    args = ["settle", "--lake", str(lake), "--rpc-url", node.url, "--distributor", distributor, "--json"]
    return subprocess.run(
        [sys.executable, "-c", _DRIVER, *args], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )


def _root_rows(lake: Path) -> list[dict]:
    return settlement_rows(lake, "settlement_root")


def _assert_settled_exactly_once(lake: Path, node: Anvil, distributor: str, result: dict) -> None:
    """One proposal and one record for epoch 1 with the ledger's root; funded once; every claim pays its payable."""
    (root_row,) = _root_rows(lake)
    assert result["root"] == root_row["root"] and result["epoch"] == 1
    on_chain = proposals(node, distributor, 1)
    assert len(on_chain) == 1, on_chain
    assert "0x" + bytes(on_chain[0]["args"]["root"]).hex() == root_row["root"]
    tx_hash = "0x" + bytes(on_chain[0]["transactionHash"]).hex()
    records = settlement_rows(lake, "settlement_record")
    assert [(r["epoch"], r["root"], r["tx_hash"], r["block_number"]) for r in records] == [
        (1, root_row["root"], tx_hash, on_chain[0]["blockNumber"])
    ]
    chain = connect(node.url, None)
    contract = distributor_contract(chain, distributor)
    token = token_contract(chain, contract)
    assert token.functions.balanceOf(contract.address).call() == root_row["total_units"]  # funded exactly once

    expected = expected_units(lake)
    proofs = settlement_rows(lake, "settlement_proof")
    assert {p["account"].lower(): p["cumulative_units"] for p in proofs} == expected
    with Ledger.open_read_only(str(lake)) as ledger:  # read off the stored tree nodes, as `royalty proof` does
        proof_of = {leaf["account"]: account_proof(ledger, leaf["account"])["proof"] for leaf in proofs}
    for leaf in proofs:
        call = contract.functions.claim(leaf["account"], leaf["cumulative_units"], proof_of[leaf["account"]])
        receipt = node.w3.eth.wait_for_transaction_receipt(call.transact({"from": CLAIMER}))
        assert receipt["status"] == 1
        assert token.functions.balanceOf(leaf["account"]).call() == leaf["cumulative_units"]
    assert token.functions.balanceOf(contract.address).call() == 0
    assert contract.functions.totalClaimed().call() == sum(expected.values()) == root_row["total_units"]


# (fault point, root rows, intents, proposals on chain after the kill, outcome of the rerun)
# CI kills at one point of each kind (inside a transaction, after funding, before the record); the
# other points, each about 16 s of anvil and settle processes, run nightly (ROYALTY_NIGHTLY=1).
_nightly = pytest.mark.nightly
_ledger_points = [
    pytest.param("settlement_root:before", 0, 0, 0, "proposed", marks=_nightly),
    pytest.param("settlement_root:during", 0, 0, 0, "proposed"),
    pytest.param("settlement_root:after", 1, 0, 0, "proposed", marks=_nightly),
    pytest.param("fund:after", 1, 0, 0, "proposed"),
    pytest.param("settlement_intent:before", 1, 0, 0, "proposed", marks=_nightly),
    pytest.param("settlement_intent:during", 1, 0, 0, "proposed", marks=_nightly),
    # settlement_intent:after is the `before-send` hook point below.
    pytest.param("settlement_record:before", 1, 1, 1, "recovered"),
    pytest.param("settlement_record:during", 1, 1, 1, "recovered", marks=_nightly),
    pytest.param("settlement_record:after", 1, 1, 1, "already_recorded", marks=_nightly),
]


@pytest.mark.parametrize(("fault_at", "roots", "intents", "proposed", "outcome"), _ledger_points)
def test_settle_killed_around_each_ledger_transaction_resumes_with_exactly_one_root(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
    fault_at: str,
    roots: int,
    intents: int,
    proposed: int,
    outcome: str,
) -> None:
    """SIGKILL `royalty settle` before / inside / after the ledger transaction writing the tree, the intent or
    the record (or after funding): the ledger holds only committed transactions and stays verifiable, and
    the rerun finishes with one root proposed, recorded once, funded once, and claims paying the payables."""
    lake = tmp_path / "lake"
    new_lake(lake, EVENTS)
    deployed = deploy(anvil)
    killed = _settle_killed_at(lake, anvil, deployed["distributor"], fault_at)
    assert killed.returncode == -9, killed.stderr
    assert len(_root_rows(lake)) == roots
    assert len(settlement_rows(lake, "settlement_intent")) == intents
    assert len(settlement_rows(lake, "settlement_record")) == (1 if fault_at == "settlement_record:after" else 0)
    assert len(proposals(anvil, deployed["distributor"], 1)) == proposed
    with Ledger.open_read_only(str(lake)) as ledger:
        report = verify(ledger)
    assert report.ok, report.problems

    rerun = settle_process(lake, anvil, deployed["distributor"], None)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert result["outcome"] == outcome
    _assert_settled_exactly_once(lake, anvil, deployed["distributor"], result)
    with Ledger.open_read_only(str(lake)) as ledger:
        assert verify(ledger).ok


@pytest.mark.parametrize("crash_at", ["after-send", "before-send"])
def test_settle_killed_around_sending_is_resumed_with_exactly_one_proposal(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
    crash_at: str,
) -> None:
    """SIGKILL `royalty settle` (its `broadcast` wrapped by a driver) just after / just before it sends proposeRoot;
    the rerun records the same root and the chain shows exactly one RootProposed for the epoch."""
    lake = tmp_path / "lake"
    new_lake(lake, EVENTS)
    deployed = deploy(anvil)
    killed = settle_process(lake, anvil, deployed["distributor"], crash_at)
    assert killed.returncode == -9, killed.stderr
    intents = settlement_rows(lake, "settlement_intent")
    assert len(intents) == 1 and settlement_rows(lake, "settlement_record") == []
    assert len(proposals(anvil, deployed["distributor"], 1)) == (1 if crash_at == "after-send" else 0)

    rerun = settle_process(lake, anvil, deployed["distributor"], None)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert result["outcome"] == ("recovered" if crash_at == "after-send" else "proposed")
    assert result["root"] == intents[0]["root"]
    if crash_at == "after-send":
        assert result["tx_hash"] == intents[0]["tx_hash"]
    _assert_settled_exactly_once(lake, anvil, deployed["distributor"], result)


def test_settle_killed_while_its_proposal_is_pending_waits_for_that_transaction(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
) -> None:
    """With anvil's automine off, kill `royalty settle` after sending: the rerun finds the recorded hash
    in the node's pool, waits for it to be mined (interval mining) and records it, proposing nothing."""
    lake = tmp_path / "lake"
    new_lake(lake, EVENTS)
    deployed = deploy(anvil)
    chain = connect(anvil.url, None)
    contract = distributor_contract(chain, deployed["distributor"])
    token = token_contract(chain, contract)
    settler = chain.w3.eth.account.from_key(SETTLER_KEY).address
    # Fund up front: with automine off the killed run must not wait on its own funding transfer.
    funding = token.functions.transfer(contract.address, 10**12).transact({"from": settler})
    anvil.w3.eth.wait_for_transaction_receipt(funding)
    anvil.rpc("evm_setAutomine", [False])
    try:
        killed = settle_process(lake, anvil, deployed["distributor"], "after-send")
        assert killed.returncode == -9, killed.stderr
        (intent,) = settlement_rows(lake, "settlement_intent")
        assert anvil.w3.eth.get_transaction(intent["tx_hash"])["blockNumber"] is None  # pending
        anvil.rpc("evm_setIntervalMining", [1])
        rerun = settle_process(lake, anvil, deployed["distributor"], None)
    finally:
        anvil.rpc("evm_setIntervalMining", [0])
        anvil.rpc("evm_setAutomine", [True])
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert (result["outcome"], result["tx_hash"]) == ("recovered", intent["tx_hash"])
    assert len(proposals(anvil, deployed["distributor"], 1)) == 1
    records = settlement_rows(lake, "settlement_record")
    assert [(r["root"], r["tx_hash"]) for r in records] == [(intent["root"], intent["tx_hash"])]
