"""Fault injection, settlement half: chain reorganisations on anvil (`anvil_reorg`) around `royalty settle`.

- A reorg removes the proposal before its confirmations: settle records nothing (it never writes a root as
  settled that the chain no longer has) and stops with `TransactionDroppedError`; the rerun proposes again,
  with the same nonce, exactly once.
- A reorg moves the proposal into another block: settle records the block the proposal ended up in.
- A reorg deeper than `--confirmations`, after the record: the rerun stops with `ChainLedgerMismatchError`
  and sends nothing (the limit of choosing too few confirmations; see docs/settlement.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from typer.testing import CliRunner

from royalty.cli import app
from tests.support.anvil import Anvil, anvil  # noqa: F401 - anvil is a fixture
from tests.support.settle_runs import (
    SETTLER_KEY,
    assert_one_root_recorded,
    deploy,
    new_lake,
    prefund,
    proposals,
    settle,
    settle_popen,
    settlement_rows,
    wait_s_max,
    wait_until,
)

EVENTS = 120
runner = CliRunner()


def _tx_hash(proposal: dict) -> str:
    return "0x" + bytes(proposal["transactionHash"]).hex()


def test_a_reorg_removing_the_proposal_before_its_confirmations_is_not_recorded_and_the_rerun_proposes_once(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`royalty settle --confirmations 3` sees its proposal mined; `anvil_reorg` replaces that block with an
    empty one: settle exits 75 (EX_TEMPFAIL) naming the dropped tx, the ledger has no settlement_record, the chain no
    RootProposed; the rerun proposes once (same nonce) and records the proposal the chain now holds."""
    lake = tmp_path / "lake"
    new_lake(lake, EVENTS)
    deployed = deploy(anvil)
    distributor = deployed["distributor"]
    prefund(anvil, distributor)
    process = settle_popen(lake, anvil, distributor, "--confirmations", "3")
    try:
        wait_until(lambda: proposals(anvil, distributor, 1), process, "the proposal is mined")
        (removed,) = proposals(anvil, distributor, 1)
        assert anvil.w3.eth.block_number == removed["blockNumber"]
        anvil.rpc("anvil_reorg", [1, []])
        assert proposals(anvil, distributor, 1) == []
        _, stderr = process.communicate(timeout=wait_s_max)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 75, stderr  # EX_TEMPFAIL: a rerun sends it again
    message = " ".join(stderr.split())
    assert f"tx `{_tx_hash(removed)}` was dropped" in message and "chain reorganisation" in message, message
    assert settlement_rows(lake, "settlement_record") == []
    (intent,) = settlement_rows(lake, "settlement_intent")

    rerun = settle(lake, anvil, distributor)
    assert rerun["outcome"] == "proposed"
    record = assert_one_root_recorded(lake, anvil, distributor)
    assert record["tx_hash"] == rerun["tx_hash"]  # the same signed tx again, or one with the same nonce
    intents = sorted(settlement_rows(lake, "settlement_intent"), key=lambda i: i["prepared_at"])
    assert [i["nonce"] for i in intents] == [intent["nonce"]] * 2


def test_a_reorg_moving_the_proposal_into_another_block_records_the_block_it_ends_in(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
) -> None:
    """While settle waits for 3 confirmations, `anvil_reorg` re-mines the proposal's block with the same
    transaction (another block hash): settle waits out the depth on the new block and records that one."""
    lake = tmp_path / "lake"
    new_lake(lake, EVENTS)
    deployed = deploy(anvil)
    distributor = deployed["distributor"]
    prefund(anvil, distributor)
    process = settle_popen(lake, anvil, distributor, "--confirmations", "3")
    try:
        wait_until(lambda: proposals(anvil, distributor, 1), process, "the proposal is mined")
        (first,) = proposals(anvil, distributor, 1)
        raw = anvil.rpc("eth_getRawTransactionByHash", [_tx_hash(first)])
        anvil.rpc("anvil_reorg", [1, [[raw, 0]]])
        (moved,) = proposals(anvil, distributor, 1)
        assert _tx_hash(moved) == _tx_hash(first) and moved["blockHash"] != first["blockHash"]
        time.sleep(1)  # settle polls the new block meanwhile
        anvil.rpc("anvil_mine", [2])
        stdout, stderr = process.communicate(timeout=wait_s_max)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["outcome"] == "proposed"
    record = assert_one_root_recorded(lake, anvil, distributor)
    assert record["block_hash"] == "0x" + bytes(moved["blockHash"]).hex() != "0x" + bytes(first["blockHash"]).hex()


def test_a_reorg_deeper_than_the_confirmations_after_the_record_stops_the_rerun_sending_nothing(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Settle with 1 confirmation records its proposal; a 2-block reorg then removes it: the rerun fails with
    ChainLedgerMismatchError naming the recorded tx and the chain gains no proposal (an operator decides)."""
    lake = tmp_path / "lake"
    new_lake(lake, EVENTS)
    deployed = deploy(anvil)
    distributor = deployed["distributor"]
    first = settle(lake, anvil, distributor)
    assert first["outcome"] == "proposed"
    anvil.rpc("anvil_reorg", [2, []])  # the funding transfer and the proposal
    assert proposals(anvil, distributor, 1) == []
    args = ["settle", "--lake", str(lake), "--rpc-url", anvil.url, "--distributor", distributor]
    result = runner.invoke(app, args, env={"ROYALTY_SETTLER_KEY": SETTLER_KEY})
    message = " ".join(result.stderr.split())
    assert result.exit_code == 2 and first["tx_hash"] in message and "nothing was sent or written" in message
    assert proposals(anvil, distributor, 1) == []
    assert len(settlement_rows(lake, "settlement_record")) == 1
