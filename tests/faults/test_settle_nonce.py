"""A replacement proposal reuses the recorded intent's nonce, so the old transaction and its replacement can
never both be mined (docs/settlement.md), against a real anvil.

`royalty settle` is SIGKILLed after recording its intent (the `before-send` hook), signed over a settler
account whose previous transaction the chain then loses (anvil's `evm_revert`, as a reorganisation would):
the intent's nonce is now ahead of the account's next nonce. The next node that sees the old transaction
could still mine it once the gap is filled, so a replacement with the next nonce (what settle did before)
could be mined too. Settle refuses (exit 2, nothing sent, the gap named); once the gap is filled, the
rerun proposes with the intent's nonce and the chain holds exactly one root.
"""

from __future__ import annotations

import json
from pathlib import Path

from settlement.onchain.chain import connect, distributor_contract, token_contract
from tests.support.anvil import Anvil, anvil  # noqa: F401 - anvil is a fixture
from tests.support.settle_runs import (
    SETTLER_KEY,
    deploy,
    new_lake,
    proposals,
    settle_process,
    settlement_rows,
)

EVENTS = 80


def test_a_replacement_proposal_reuses_the_recorded_nonce_and_never_skips_past_it(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Intent recorded with nonce n, never sent; the chain loses the settler's transaction n-1. The rerun sends
    nothing and says the nonce gap; after a transaction fills n-1, the rerun proposes with nonce n (the old
    code signed the next nonce, n-1) and exactly one RootProposed and one record exist."""
    lake = tmp_path / "lake"
    new_lake(lake, EVENTS)
    deployed = deploy(anvil)
    distributor = deployed["distributor"]
    chain = connect(anvil.url, None)
    token = token_contract(chain, distributor_contract(chain, distributor))
    settler = chain.w3.eth.account.from_key(SETTLER_KEY).address

    def settler_transfer() -> None:  # any transaction of the settler account (funds the distributor here)
        tx = token.functions.transfer(distributor, 10**12).transact({"from": settler})
        anvil.w3.eth.wait_for_transaction_receipt(tx)

    settler_transfer()  # funded: settle sends no funding transfer of its own
    snapshot = anvil.rpc("evm_snapshot", [])
    settler_transfer()  # nonce n-1, soon lost
    killed = settle_process(lake, anvil, distributor, "before-send")
    assert killed.returncode == -9, killed.stderr
    (intent,) = settlement_rows(lake, "settlement_intent")
    assert anvil.rpc("evm_revert", [snapshot]) is True
    next_nonce = anvil.w3.eth.get_transaction_count(settler, "latest")
    assert intent["nonce"] == next_nonce + 1

    refused = settle_process(lake, anvil, distributor, None)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = " ".join(refused.stderr.split())
    assert f"has nonce {intent['nonce']}, but the next nonce of settler `{settler}` is {next_nonce}" in message
    assert "Nothing was sent" in message
    assert len(settlement_rows(lake, "settlement_intent")) == 1
    assert anvil.w3.eth.get_transaction_count(settler, "pending") == next_nonce  # nothing sent

    settler_transfer()  # fills nonce n-1
    rerun = settle_process(lake, anvil, distributor, None)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert result["outcome"] == "proposed"
    intents = sorted(settlement_rows(lake, "settlement_intent"), key=lambda row: row["prepared_at"])
    assert [row["nonce"] for row in intents] == [intent["nonce"]] * 2
    assert anvil.w3.eth.get_transaction(result["tx_hash"])["nonce"] == intent["nonce"]
    (proposal,) = proposals(anvil, distributor, 1)
    assert "0x" + bytes(proposal["transactionHash"]).hex() == result["tx_hash"]
    (record,) = settlement_rows(lake, "settlement_record")
    assert record["tx_hash"] == result["tx_hash"]
