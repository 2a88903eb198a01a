"""`royalty deploy`, `settle` and `claim` against a real anvil: roles, treasury funding under a cap, claims
against the active root with the claimer's own key (issue 16's attacks, through the CLI).

The settler is anvil's dev account 4 (SETTLER_KEY), the claimer account 5; the treasury is account 6 and
the guardian account 7, both unlocked on the node.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError

from ledger import define_views, run_query
from ledger.ledger import Ledger
from royalty.cli import app
from settlement.onchain.chain import connect, distributor_contract, token_contract
from settlement.onchain.contract_artifacts import load_artifact
from settlement.onchain.merkle import MerkleTree
from settlement.onchain.settle import read_stored_tree
from tests.support.anvil import Anvil, anvil  # noqa: F401 - anvil is a fixture
from tests.support.settle_runs import (
    CLAIMER_KEY,
    MINT_UNITS,
    SETTLER_KEY,
    append,
    deploy,
    expected_units,
    new_lake,
    proposals,
    royalty,
    runner,
    settle,
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


def test_a_distributor_migrated_mid_history_pays_no_unit_twice_and_loses_none(anvil: Anvil, tmp_path: Path) -> None:  # noqa: F811
    """Issue 16's migration: epoch 1 settles to OLD and half the payees claim there; `deploy --migrate-from OLD`;
    epoch 2 settles to NEW with each leaf its cumulative payable net of what OLD's last root owes. Then everyone
    claims the rest on both (`royalty claim --account` for two of them, the stored proofs for the others): each
    payee holds exactly its cumulative payable, both contracts are left holding nothing, and claiming again on
    either pays nothing."""
    lake = tmp_path / "lake"
    traffic, offset = new_lake(lake, 60)
    old_deployed = deploy(anvil)
    old = old_deployed["distributor"]
    settle(lake, anvil, old)
    owed_1 = {Web3.to_checksum_address(a): u for a, u in expected_units(lake).items()}
    early = sorted(owed_1)[: len(owed_1) // 2]
    chain = connect(anvil.url, None)
    contracts = {old: distributor_contract(chain, old)}
    tree_1 = _stored_tree(lake, 1)
    for account in early:
        _claim_stored(anvil, contracts[old], tree_1, account)

    new_deployed = royalty(
        "deploy", "--rpc-url", anvil.url, "--timelock-seconds", "0", "--mint-units", str(MINT_UNITS),
        "--migrate-from", old,
    )  # fmt: skip
    new = new_deployed["distributor"]
    assert (new_deployed["predecessor"], new_deployed["token"]) == (old, old_deployed["token"])
    contracts[new] = distributor_contract(chain, new)
    idle = settle(lake, anvil, new)  # epoch 1 went to OLD: NEW starts after it
    assert idle["outcome"] == "nothing_to_settle" and "not after epoch 1" in idle["notes"][-1]
    with Ledger.open(str(lake)) as ledger:
        offset = append(ledger, list(traffic.metered(40, first_index=60)), offset)
    second = settle(lake, anvil, new)
    cumulative = {Web3.to_checksum_address(a): u for a, u in expected_units(lake).items()}
    growth = {a: u - owed_1.get(a, 0) for a, u in cumulative.items() if u > owed_1.get(a, 0)}
    assert (second["outcome"], second["epoch"]) == ("proposed", 2)
    assert (int(second["total_units"]), second["leaf_count"]) == (sum(growth.values()), len(growth))
    assert proposals(anvil, old, 2) == []
    (migration,) = settlement_rows(lake, "settlement_migration")
    assert (migration["epoch"], migration["predecessor"], migration["predecessor_epoch"]) == (2, old, 1)

    by_cli = sorted(set(owed_1) - set(early))[:1] + sorted(set(growth) & set(early))[:1]
    env = {"ROYALTY_CLAIMER_KEY": CLAIMER_KEY}
    for account in by_cli:
        for distributor, owed in ((old, owed_1), (new, growth)):
            if account in owed and not (distributor == old and account in early):
                paid = royalty("claim", "--account", account, "--lake", str(lake), "--rpc-url", anvil.url,
                               "--distributor", distributor, env=env)  # fmt: skip
                assert int(paid["paid_units"]) == owed[account]
    tree_2 = _stored_tree(lake, 2)
    for account in sorted(set(owed_1) - set(early) - set(by_cli)):
        _claim_stored(anvil, contracts[old], tree_1, account)
    for account in sorted(set(growth) - set(by_cli)):
        _claim_stored(anvil, contracts[new], tree_2, account)

    token = token_contract(chain, contracts[new])
    assert {a: token.functions.balanceOf(a).call() for a in cumulative} == cumulative
    assert [token.functions.balanceOf(c).call() for c in (old, new)] == [0, 0]
    assert contracts[old].functions.totalClaimed().call() == sum(owed_1.values())
    assert contracts[new].functions.totalClaimed().call() == sum(growth.values())
    for distributor, tree, account in ((old, tree_1, early[0]), (new, tree_2, sorted(growth)[0])):
        with pytest.raises(ContractCustomError):
            _claim_stored(anvil, contracts[distributor], tree, account)

    with Ledger.open(str(lake)) as ledger:  # a mistake: a later epoch settled to OLD after the migration
        append(ledger, list(traffic.metered(20, first_index=100)), offset)
    settler_env = {"ROYALTY_SETTLER_KEY": SETTLER_KEY}
    to_old = _invoke("settle", "--lake", str(lake), "--rpc-url", anvil.url, "--distributor", old, env=settler_env)
    assert to_old.exit_code == 2, to_old.output  # before the fix: proposed, whole leaves, paid twice
    assert f"this ledger migrated from {old} to {new} after epoch 1" in to_old.output
    assert f"Settle to {new} instead" in to_old.output and "Nothing was written or sent" in to_old.output
    assert proposals(anvil, old, 3) == [] and len(settlement_rows(lake, "settlement_root")) == 2
    closed = _invoke("close-epoch", "--lake", str(lake), env={})  # reconciles epoch 2 as net of epoch 1's root
    assert closed.exit_code == 0, closed.output

    # OLD's own settler key (outside royalty) proposes to it anyway: the migrated distributor stops settling.
    settler = chain.w3.eth.account.from_key(SETTLER_KEY).address
    stray = contracts[old].functions.proposeRoot(3, b"\x07" * 32, sum(owed_1.values()), b"\x00" * 32)
    anvil.w3.eth.wait_for_transaction_receipt(stray.transact({"from": settler}))
    refused = _invoke("settle", "--lake", str(lake), "--rpc-url", anvil.url, "--distributor", new, env=settler_env)
    assert refused.exit_code == 2 and "must get no more roots" in refused.output
    assert proposals(anvil, new, 3) == []


@pytest.fixture(scope="module")
def migrated(anvil: Anvil, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: F811
    """OLD settled epoch 1 from ledger `lake` (nothing claimed), then NEW deployed with `--migrate-from OLD`."""
    lake = tmp_path_factory.mktemp("migrated") / "lake"
    traffic, offset = new_lake(lake, 40)
    old = deploy(anvil)["distributor"]
    settle(lake, anvil, old)
    new = royalty(
        "deploy", "--rpc-url", anvil.url, "--timelock-seconds", "0", "--mint-units", str(MINT_UNITS),
        "--migrate-from", old,
    )["distributor"]  # fmt: skip
    return {"lake": lake, "traffic": traffic, "offset": offset, "old": old, "new": new}


def _settle_refused(node: Anvil, lake: Path, distributor: str) -> str:
    """`royalty settle` to `distributor`, which must exit 2 having sent nothing to it; its output."""
    refused = _invoke(
        "settle", "--lake", str(lake), "--rpc-url", node.url, "--distributor", distributor,
        env={"ROYALTY_SETTLER_KEY": SETTLER_KEY},
    )  # fmt: skip
    assert refused.exit_code == 2, refused.output
    assert "Nothing was written or sent" in refused.output
    contract = distributor_contract(connect(node.url, None), distributor)
    assert contract.functions.latestEpoch().call() == contract.functions.predecessorEpoch().call()
    return refused.output


def test_a_migrated_distributor_refuses_a_ledger_without_the_old_tree(
    anvil: Anvil,  # noqa: F811
    migrated: dict,
    tmp_path: Path,
) -> None:
    """A ledger that never settled OLD's epoch 1 cannot know what OLD still owes each address: settling it to NEW
    exits 2 naming the epoch and OLD's root, before closing anything."""
    lake = tmp_path / "lake"
    new_lake(lake, 30, seed=5)
    output = _settle_refused(anvil, lake, migrated["new"])
    assert "the ledger holds no tree for epoch 1 with the root" in output and migrated["old"] in output
    assert settlement_rows(lake, "settlement_epoch") == []


def test_a_migrated_distributor_refuses_a_ledger_whose_old_root_differs(
    anvil: Anvil,  # noqa: F811
    migrated: dict,
    tmp_path: Path,
) -> None:
    """Another ledger settled its own epoch 1 (to another distributor): its tree is not the one OLD holds, so the
    net leaves would be wrong; settling it to NEW exits 2 naming OLD's root."""
    lake = tmp_path / "lake"
    new_lake(lake, 40, seed=7)
    settle(lake, anvil, deploy(anvil)["distributor"])
    old_root = distributor_contract(connect(anvil.url, None), migrated["old"]).functions.activeRoot().call()[1]
    assert _stored_tree(lake, 1).root_hex != Web3.to_hex(old_root)
    output = _settle_refused(anvil, lake, migrated["new"])
    assert f"with the root {Web3.to_hex(old_root)} that {migrated['old']}" in output
    assert len(settlement_rows(lake, "settlement_epoch")) == 1


def test_a_migrated_distributor_refuses_a_tree_of_whole_leaves(anvil: Anvil, migrated: dict, tmp_path: Path) -> None:  # noqa: F811
    """Epoch 2's tree was written for OLD (a Safe batch its signers never executed), so its leaves are whole
    cumulative amounts: proposing it to NEW would pay epoch 1 twice. Settling to NEW exits 2 saying so."""
    lake, old = migrated["lake"], migrated["old"]
    with Ledger.open(str(lake)) as ledger:
        append(ledger, list(migrated["traffic"].metered(20, first_index=40)), migrated["offset"])
    safe = anvil.w3.eth.accounts[8]
    contract = distributor_contract(connect(anvil.url, None), old)
    admin = anvil.w3.eth.account.from_key(SETTLER_KEY).address
    grant = contract.functions.grantRole(contract.functions.SETTLER_ROLE().call(), safe).transact({"from": admin})
    anvil.w3.eth.wait_for_transaction_receipt(grant)
    batch = royalty(
        "settle", "--lake", str(lake), "--rpc-url", anvil.url, "--distributor", old, "--via", "safe", "--safe", safe,
        "--safe-batch-dir", str(tmp_path / "batches"),
    )  # fmt: skip
    assert (batch["outcome"], batch["epoch"]) == ("safe_batch", 2)
    output = _settle_refused(anvil, lake, migrated["new"])
    assert "epoch 2's tree in the ledger holds whole cumulative leaves" in output
    assert proposals(anvil, old, 2) == [] and settlement_rows(lake, "settlement_migration") == []


def test_a_second_migration_nets_what_every_earlier_distributor_still_owes(anvil: Anvil, tmp_path: Path) -> None:  # noqa: F811
    """A -> B -> C: epoch 1 settles to A, epoch 2 to B (`--migrate-from A`), epoch 3 to C (`--migrate-from B`). A's
    last root still owes its leaves forever, and so does B's, net of A: C's leaves must be net of both. Before the
    fix they were net of B's leaves only, so every address could claim A's amount twice (A, then again in C)."""
    lake = tmp_path / "lake"
    traffic, offset = new_lake(lake, 12, seed=11)
    chain_of = [deploy(anvil)["distributor"]]
    settle(lake, anvil, chain_of[0])
    for epoch, first_index in ((2, 12), (3, 20)):
        chain_of.append(
            royalty(
                "deploy", "--rpc-url", anvil.url, "--timelock-seconds", "0", "--mint-units", str(MINT_UNITS),
                "--migrate-from", chain_of[-1],
            )["distributor"]
        )  # fmt: skip
        with Ledger.open(str(lake)) as ledger:
            offset = append(ledger, list(traffic.metered(8, first_index=first_index)), offset)
        settled = settle(lake, anvil, chain_of[-1])
        assert (settled["outcome"], settled["epoch"]) == ("proposed", epoch)
    cumulative = {Web3.to_checksum_address(a): u for a, u in expected_units(lake).items()}
    claimable: dict[str, int] = {}  # over the three distributors' last roots, each claimable forever
    for epoch in (1, 2, 3):
        for account, units in _stored_tree(lake, epoch).items():
            claimable[account] = claimable.get(account, 0) + units
    assert claimable == cumulative  # was each address's epoch-1 leaf more (at 70 events: 411,134 for 277,657)
    with Ledger.open_read_only(str(lake)) as ledger:  # the reconciliation nets both earlier roots too
        define_views(ledger)
        checks = run_query(
            ledger, "SELECT epoch, difference_micros FROM chain_checks WHERE check_name = 'root_vs_payables' ORDER BY 1"
        )
    assert checks.to_pylist() == [{"epoch": e, "difference_micros": 0} for e in (1, 2, 3)]


def _stored_tree(lake: Path, epoch: int) -> MerkleTree:
    with Ledger.open_read_only(str(lake)) as ledger:
        stored = read_stored_tree(ledger.connection, epoch)
    assert stored is not None
    return stored.tree


def _claim_stored(node: Anvil, contract: Contract, tree: MerkleTree, account: str) -> None:
    """`account`'s claim with its proof in the ledger's `tree`, relayed by an unlocked account."""
    call = contract.functions.claim(account, tree.amount_units(account), tree.proof(account))
    call.call({"from": node.w3.eth.accounts[3]})  # a revert raises here, with its custom error
    receipt = node.w3.eth.wait_for_transaction_receipt(call.transact({"from": node.w3.eth.accounts[3]}))
    assert receipt["status"] == 1


@pytest.fixture(autouse=True)
def _no_claimer_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROYALTY_CLAIMER_KEY", raising=False)
