"""`royalty deploy`, `settle` and `claim` against a real anvil: roles, treasury funding under a cap, claims
against the active root with the claimer's own key (issue 16's attacks, through the CLI).

The settler is anvil's dev account 4 (SETTLER_KEY), the claimer account 5; the treasury is account 6 and
the guardian account 7, both unlocked on the node.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from royalty.cli import app
from settlement.onchain.chain import connect, distributor_contract, token_contract
from settlement.onchain.contract_artifacts import load_artifact
from tests.support.anvil import Anvil, anvil  # noqa: F401 - anvil is a fixture
from tests.support.settle_runs import (
    CLAIMER_KEY,
    MINT_UNITS,
    SETTLER_KEY,
    append,
    new_lake,
    proposals,
    royalty,
    runner,
    settlement_rows,
)

TIMELOCK_SECONDS = 3_600


class _Run:
    def __init__(self, exit_code: int, output: str, stdout: str) -> None:
        self.exit_code, self.output, self.stdout = exit_code, output, stdout


def _invoke(*args: str, env: dict[str, str]) -> _Run:
    """Run a `royalty` command in-process; `output` with its line wrapping undone (rich wraps messages)."""
    result = runner.invoke(app, list(args), env=env)
    return _Run(result.exit_code, " ".join(result.output.split()), result.stdout)


def _deploy_with_treasury(node: Anvil, timelock_seconds: int = 0) -> tuple[dict, str]:
    """A distributor whose treasury (account 6) holds MINT_UNITS and approved it; the settler holds none."""
    treasury, guardian = node.w3.eth.accounts[6], node.w3.eth.accounts[7]
    deployed = royalty(
        "deploy", "--rpc-url", node.url, "--timelock-seconds", str(timelock_seconds), "--treasury", treasury,
        "--guardian", guardian, "--mint-units", str(MINT_UNITS),
    )  # fmt: skip
    chain = connect(node.url, None)
    token = token_contract(chain, distributor_contract(chain, deployed["distributor"]))
    node.w3.eth.wait_for_transaction_receipt(
        token.functions.approve(deployed["distributor"], MINT_UNITS).transact({"from": treasury})
    )
    return deployed, treasury


def test_deploy_refuses_shared_roles_and_a_short_timelock_off_a_local_chain(anvil: Anvil) -> None:  # noqa: F811
    """The attack: `deploy` made the deployer admin, settler and guardian. On a chain other than 31337 it
    now exits 2 naming --admin/--settler/--guardian and --allow-shared-roles; with distinct roles a timelock
    below an hour is refused naming the minimum; --allow-shared-roles deploys on a test chain."""
    env = {"ROYALTY_SETTLER_KEY": SETTLER_KEY}
    anvil.rpc("anvil_setChainId", [11_155_111])
    try:
        shared = _invoke("deploy", "--rpc-url", anvil.url, "--timelock-seconds", "3600", env=env)
        assert shared.exit_code == 2
        assert "must be distinct accounts" in shared.output
        for flag in ("--admin", "--settler", "--guardian", "--allow-shared-roles"):
            assert flag in shared.output
        admin, guardian = anvil.w3.eth.accounts[8], anvil.w3.eth.accounts[7]
        roles = ["--admin", admin, "--guardian", guardian]
        short = _invoke("deploy", "--rpc-url", anvil.url, "--timelock-seconds", "0", *roles, env=env)
        assert short.exit_code == 2 and "below the minimum 3600" in short.output
        allowed = _invoke(
            "deploy", "--rpc-url", anvil.url, "--timelock-seconds", "3600", "--allow-shared-roles", "--json", env=env
        )
        assert allowed.exit_code == 0, allowed.output
        distinct = _invoke("deploy", "--rpc-url", anvil.url, *roles, "--json", env=env)
        assert distinct.exit_code == 0, distinct.output
        deployed = json.loads(distinct.stdout.strip().splitlines()[-1])
        assert (deployed["admin"], deployed["guardians"]) == (admin, [guardian])
    finally:
        anvil.rpc("anvil_setChainId", [31337])


def test_settle_pulls_funding_from_the_treasury_only_up_to_the_cap(anvil: Anvil, tmp_path: Path) -> None:  # noqa: F811
    """The attack: settle funded a fabricated shortfall from the settler's wallet with no cap. Now a shortfall
    above --funding-cap-units stops (exit 2) with the figures, sending nothing; within the cap it is pulled
    from the treasury, and the settler's account never holds a token."""
    deployed, treasury = _deploy_with_treasury(anvil)
    lake = tmp_path / "lake"
    new_lake(lake, 60)
    env = {"ROYALTY_SETTLER_KEY": SETTLER_KEY}
    args = ["settle", "--lake", str(lake), "--rpc-url", anvil.url, "--distributor", deployed["distributor"]]
    refused = _invoke(*args, "--funding-cap-units", "10", env=env)
    assert refused.exit_code == 2, refused.output
    assert "above this run's cap of 10" in refused.output
    assert "− claimed 0 − the distributor's balance 0" in refused.output
    assert proposals(anvil, deployed["distributor"], 1) == []
    assert settlement_rows(lake, "settlement_record") == []

    settled = royalty(*args, "--funding-cap-units", str(MINT_UNITS))
    assert settled["outcome"] == "proposed" and settled["funded_units"] == int(settled["total_units"])
    chain = connect(anvil.url, None)
    token = token_contract(chain, distributor_contract(chain, deployed["distributor"]))
    settler = chain.w3.eth.account.from_key(SETTLER_KEY).address
    assert token.functions.balanceOf(settler).call() == 0
    assert token.functions.balanceOf(treasury).call() == MINT_UNITS - int(settled["total_units"])
    assert token.functions.balanceOf(deployed["distributor"]).call() == int(settled["total_units"])


def test_claim_proves_against_the_active_root_while_the_latest_waits(anvil: Anvil, tmp_path: Path) -> None:  # noqa: F811
    """The bug: with a settle cadence equal to the timelock, `royalty claim` always proved against the waiting
    root and reverted with RootNotActive. It now claims against the active root (paying its amount), says
    which roots when given a proof of the waiting one, and pays the rest once that root is active."""
    deployed, _ = _deploy_with_treasury(anvil, TIMELOCK_SECONDS)
    lake = tmp_path / "lake"
    traffic, offset = new_lake(lake, 200)
    distributor = deployed["distributor"]
    settle_args = ["settle", "--lake", str(lake), "--rpc-url", anvil.url, "--distributor", distributor]
    royalty(*settle_args)
    anvil.advance_time(TIMELOCK_SECONDS)
    from ledger import Ledger

    with Ledger.open(str(lake)) as ledger:
        append(ledger, list(traffic.metered(200, first_index=200)), offset)
    assert royalty(*settle_args)["epoch"] == 2  # waiting in its timelock
    first = {r["account"]: r["cumulative_units"] for r in settlement_rows(lake, "settlement_proof") if r["epoch"] == 1}
    second = {r["account"]: r["cumulative_units"] for r in settlement_rows(lake, "settlement_proof") if r["epoch"] == 2}
    account = next(a for a in first if second[a] > first[a])
    claimer = {"ROYALTY_CLAIMER_KEY": CLAIMER_KEY}
    claim_args = ["claim", "--rpc-url", anvil.url, "--distributor", distributor]
    latest = royalty("proof", "--lake", str(lake), "--account", account)
    assert latest["epoch"] == 2
    proof_file = tmp_path / "latest.json"
    proof_file.write_text(json.dumps(latest))
    stale = _invoke(*claim_args, "--proof-file", str(proof_file), env=claimer)
    assert stale.exit_code == 2 and "checks claims against its active root" in stale.output

    paid = royalty(*claim_args, "--lake", str(lake), "--account", account, env=claimer)
    assert int(paid["paid_units"]) == first[account]
    anvil.advance_time(TIMELOCK_SECONDS)
    paid = royalty(*claim_args, "--lake", str(lake), "--account", account, env=claimer)
    assert int(paid["paid_units"]) == second[account] - first[account]


def test_claim_never_signs_with_the_settler_key(anvil: Anvil, tmp_path: Path) -> None:  # noqa: F811
    """The bug: without ROYALTY_CLAIMER_KEY `claim` signed silently with the settler's key. It now exits 2
    naming ROYALTY_CLAIMER_KEY and sends nothing."""
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(json.dumps({"account": anvil.w3.eth.accounts[9], "cumulative_amount": "1", "proof": []}))
    result = _invoke(
        "claim", "--proof-file", str(proof_file), "--rpc-url", anvil.url, "--distributor", anvil.w3.eth.accounts[9],
        env={"ROYALTY_SETTLER_KEY": SETTLER_KEY, "ROYALTY_CLAIMER_KEY": ""},
    )  # fmt: skip
    assert result.exit_code == 2 and "set ROYALTY_CLAIMER_KEY" in result.output
    assert "never" in result.output and "settler" in result.output


def test_deploy_refuses_a_fee_on_transfer_token(anvil: Anvil) -> None:  # noqa: F811
    """The attack: a 1% fee token made `claimed` exceed what arrived. `deploy --token` probes a transfer from
    the deployer to the new distributor and exits 2 naming what was sent and what arrived."""
    w3 = anvil.w3
    build = load_artifact("FeeToken")
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.contract(abi=build.abi, bytecode=build.bytecode).constructor().transact({"from": w3.eth.accounts[0]})
    )
    fee_token = w3.eth.contract(address=receipt["contractAddress"], abi=build.abi)
    settler = w3.eth.account.from_key(SETTLER_KEY).address
    w3.eth.wait_for_transaction_receipt(fee_token.functions.mint(settler, 5_000_000).transact({"from": settler}))
    result = _invoke(
        "deploy", "--rpc-url", anvil.url, "--timelock-seconds", "0", "--token", fee_token.address,
        env={"ROYALTY_SETTLER_KEY": SETTLER_KEY},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "a transfer of 1000000 unit(s) delivered 990000" in result.output and "fee-on-transfer" in result.output


def test_settle_via_safe_writes_a_batch_and_a_later_settle_records_the_executed_proposal(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
) -> None:
    """No hot key: with the settler role and the treasury held by a Safe (an unlocked anvil account stands in
    for it), `settle --via safe` without any key writes the Transaction Builder batch (approve, fund,
    proposeRoot) and sends nothing; executed by the Safe, a
    later `settle` finds the proposal on the chain and records it (recovered), then reports it recorded."""
    safe = anvil.w3.eth.accounts[8]
    deployed = royalty(
        "deploy", "--rpc-url", anvil.url, "--timelock-seconds", "0", "--settler", safe, "--treasury", safe,
        "--mint-units", str(MINT_UNITS),
    )  # fmt: skip
    lake = tmp_path / "lake"
    new_lake(lake, 60)
    args = ["settle", "--lake", str(lake), "--rpc-url", anvil.url, "--distributor", deployed["distributor"], "--json"]
    batch_args = [*args, "--via", "safe", "--safe", safe, "--safe-batch-dir", str(tmp_path / "batches")]
    first = _invoke(*batch_args, env={})
    assert first.exit_code == 0, first.output
    written = json.loads(first.stdout.strip().splitlines()[-1])
    assert written["outcome"] == "safe_batch" and written["funded_units"] == int(written["total_units"])
    batch = json.loads(Path(written["safe_batch_path"]).read_text())
    assert batch["chainId"] == "31337" and batch["meta"]["createdFromSafeAddress"] == safe
    assert [tx["to"] for tx in batch["transactions"]] == [deployed["token"], *[deployed["distributor"]] * 2]
    assert proposals(anvil, deployed["distributor"], 1) == []
    assert settlement_rows(lake, "settlement_record") == []

    for tx in batch["transactions"]:  # the Safe's signers execute the batch
        sent = anvil.w3.eth.send_transaction({"from": safe, "to": tx["to"], "data": tx["data"], "value": 0})
        assert anvil.w3.eth.wait_for_transaction_receipt(sent)["status"] == 1
    recorded = _invoke(*args, env={})
    assert recorded.exit_code == 0, recorded.output
    result = json.loads(recorded.stdout.strip().splitlines()[-1])
    assert (result["outcome"], result["root"]) == ("recovered", written["root"])
    (record,) = settlement_rows(lake, "settlement_record")
    assert record["tx_hash"] == "0x" + bytes(proposals(anvil, deployed["distributor"], 1)[0]["transactionHash"]).hex()
    final = json.loads(_invoke(*args, env={}).stdout.strip().splitlines()[-1])
    assert final["outcome"] == "already_recorded"


def test_settle_refuses_a_migrated_distributor_until_net_leaves_are_built(anvil: Anvil, tmp_path: Path) -> None:  # noqa: F811
    """`deploy --migrate-from OLD` records the predecessor on the new contract; settle does not build the leaves
    net of what the old one owes yet, so it refuses that distributor (exit 2) rather than pay twice."""
    old = royalty("deploy", "--rpc-url", anvil.url, "--timelock-seconds", "0")
    new = royalty("deploy", "--rpc-url", anvil.url, "--timelock-seconds", "0", "--migrate-from", old["distributor"])
    assert new["predecessor"] == old["distributor"]
    lake = tmp_path / "lake"
    new_lake(lake, 60)
    args = ["settle", "--lake", str(lake), "--rpc-url", anvil.url, "--distributor", new["distributor"]]
    refused = _invoke(*args, env={"ROYALTY_SETTLER_KEY": SETTLER_KEY})
    assert refused.exit_code == 2 and "is not built yet" in refused.output
    assert proposals(anvil, new["distributor"], 1) == []


@pytest.fixture(autouse=True)
def _no_claimer_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROYALTY_CLAIMER_KEY", raising=False)
