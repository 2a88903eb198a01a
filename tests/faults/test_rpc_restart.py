"""Fault injection, settlement half: the JSON-RPC node (anvil) stops and restarts in the middle of `royalty settle`.

The node runs with `--state FILE` on a fixed port, so it keeps its chain (blocks, receipts, logs) across a
restart, but, like a real node, loses the transactions still waiting in its pool. Outcomes required:

- restarted while settle waits for confirmations: settle rides it out and finishes by itself;
- down between two steps (before the funding transfer, before sending the proposal): settle stops with
  `ChainUnavailableError` saying a rerun resumes; the rerun settles with one root;
- restarted while the proposal is still in its pool: settle stops with `TransactionDroppedError`; the rerun
  sends it again with the same nonce and exactly one root is proposed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import settlement.onchain.settle as settle_module
from royalty.cli import app
from settlement.onchain.chain import connect, distributor_contract, token_contract
from tests.support.anvil import Anvil, anvil_binary
from tests.support.settle_runs import (
    SETTLER_KEY,
    assert_one_root_recorded,
    deploy,
    new_lake,
    prefund,
    proposals,
    royalty,
    settle_popen,
    settlement_rows,
    wait_s_max,
    wait_until,
)

EVENTS = 120
runner = CliRunner()


class RestartableNode:
    """An anvil that keeps its chain in `state.json` across restarts and comes back on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.starts = 0
        self.node = self._start(0)
        self.port = int(self.node.url.rsplit(":", 1)[1])

    def _start(self, port: int) -> Anvil:
        self.starts += 1
        log = self.folder / f"anvil-{self.starts}.log"
        return Anvil(anvil_binary(), log, ("--state", str(self.folder / "state.json")), port=port)

    def stop(self) -> None:
        """SIGTERM: anvil writes its state file and exits; pending transactions are lost."""
        self.node.stop()

    def start(self) -> None:
        self.node = self._start(self.port)


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[RestartableNode]:
    """A fresh anvil with a state file, stopped at the end of the test."""
    folder = tmp_path / "node"
    folder.mkdir()
    node = RestartableNode(folder)
    try:
        yield node
    finally:
        node.stop()


def _settle_after_restart(lake: Path, node: Anvil, deployed: dict) -> dict:
    """`royalty settle` on a restarted node: it loaded its state without the old blocks' states, like a
    non-archive node, so the distributor's deployment block is passed (as an operator sets `from_block`)."""
    return royalty(
        "settle",
        "--lake",
        str(lake),
        "--rpc-url",
        node.url,
        "--distributor",
        deployed["distributor"],
        "--from-block",
        str(deployed["deployment_block"]),
    )


def test_node_restarted_while_settle_waits_for_confirmations_is_ridden_out(
    restartable: RestartableNode, tmp_path: Path
) -> None:
    """Kill anvil (state kept) while `royalty settle --confirmations 3` waits on its mined proposal, restart it
    on the same port and mine two blocks: the same settle run records the proposal (exit 0, one root)."""
    lake = tmp_path / "lake"
    new_lake(lake, EVENTS)
    node = restartable.node
    deployed = deploy(node)
    prefund(node, deployed["distributor"])
    process = settle_popen(lake, node, deployed["distributor"], "--confirmations", "3")
    try:
        wait_until(lambda: proposals(node, deployed["distributor"], 1), process, "the proposal is mined")
        restartable.stop()
        time.sleep(2)  # settle polls a dead node meanwhile
        restartable.start()
        restartable.node.rpc("anvil_mine", [2])
        stdout, stderr = process.communicate(timeout=wait_s_max)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "node unreachable, retrying" in stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["outcome"] == "proposed"
    record = assert_one_root_recorded(lake, restartable.node, deployed["distributor"])
    assert record["tx_hash"] == result["tx_hash"]


@pytest.mark.parametrize(("step", "patched"), [("fund", "transact"), ("propose", "broadcast")])
def test_node_down_between_steps_stops_with_a_resumable_message_and_the_rerun_settles_once(
    restartable: RestartableNode,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    patched: str,
) -> None:
    """Stop anvil just before settle's funding transfer / its proposeRoot broadcast: settle exits 75 (EX_TEMPFAIL) with
    ChainUnavailableError saying a rerun resumes, records nothing as settled; after a restart the rerun
    funds exactly once and proposes exactly one root."""
    lake = tmp_path / "lake"
    new_lake(lake, EVENTS)
    deployed = deploy(restartable.node)
    real = getattr(settle_module, patched)

    def stop_node_then(*args: object, **kwargs: object) -> object:
        restartable.stop()
        return real(*args, **kwargs)

    monkeypatch.setattr(settle_module, patched, stop_node_then)
    args = ["settle", "--lake", str(lake), "--rpc-url", restartable.node.url, "--distributor", deployed["distributor"]]
    failed = runner.invoke(app, args, env={"ROYALTY_SETTLER_KEY": SETTLER_KEY})
    monkeypatch.undo()
    message = " ".join(failed.stderr.split())
    assert failed.exit_code == 75, failed.output  # EX_TEMPFAIL: the node being down is transient
    assert "is unavailable (ConnectionError" in message and "a rerun resumes" in message, message
    assert settlement_rows(lake, "settlement_record") == []
    assert len(settlement_rows(lake, "settlement_intent")) == (1 if step == "propose" else 0)

    restartable.start()
    assert proposals(restartable.node, deployed["distributor"], 1) == []
    rerun = _settle_after_restart(lake, restartable.node, deployed)
    assert rerun["outcome"] == "proposed"
    record = assert_one_root_recorded(lake, restartable.node, deployed["distributor"])
    chain = connect(restartable.node.url, None)
    contract = distributor_contract(chain, deployed["distributor"])
    assert token_contract(chain, contract).functions.balanceOf(contract.address).call() == record["total_units"]


def test_node_restarted_with_the_proposal_still_pending_stops_as_dropped_and_the_rerun_proposes_once(
    restartable: RestartableNode, tmp_path: Path
) -> None:
    """With automine off, restart anvil while settle's proposeRoot waits in its pool (lost on restart): settle
    rides out the outage, then exits 75 with TransactionDroppedError and records nothing; the rerun sends the
    proposal again with the same nonce and the chain holds exactly one root."""
    lake = tmp_path / "lake"
    new_lake(lake, EVENTS)
    node = restartable.node
    deployed = deploy(node)
    prefund(node, deployed["distributor"])
    settler = node.w3.eth.account.from_key(SETTLER_KEY).address
    node.rpc("evm_setAutomine", [False])
    process = settle_popen(lake, node, deployed["distributor"])
    try:
        wait_until(
            lambda: (
                node.w3.eth.get_transaction_count(settler, "pending")
                > node.w3.eth.get_transaction_count(settler, "latest")
            ),
            process,
            "the proposal waits in the pool",
        )
        restartable.stop()
        restartable.start()  # automine is on again, and the pool is empty
        _, stderr = process.communicate(timeout=wait_s_max)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 75, stderr  # EX_TEMPFAIL: a rerun sends it again
    message = " ".join(stderr.split())
    # The hint repeats the --lake the command was given (`royalty settle --lake L`).
    assert "was dropped" in message and f"run `royalty settle --lake {lake}` again" in message, message
    (intent,) = settlement_rows(lake, "settlement_intent")
    assert settlement_rows(lake, "settlement_record") == []
    assert proposals(restartable.node, deployed["distributor"], 1) == []

    rerun = _settle_after_restart(lake, restartable.node, deployed)
    assert rerun["outcome"] == "proposed"  # the same signed tx again, or a replacement with the same nonce
    record = assert_one_root_recorded(lake, restartable.node, deployed["distributor"])
    intents = sorted(settlement_rows(lake, "settlement_intent"), key=lambda i: i["prepared_at"])
    assert [i["nonce"] for i in intents] == [intent["nonce"]] * 2
    assert record["tx_hash"] == intents[-1]["tx_hash"] == rerun["tx_hash"]
