"""`royalty settle`, `proof`, `claim` and `deploy` end to end against a real anvil and a real DuckLake ledger.

Keys are anvil's well-known dev accounts 4 (settler) and 5 (claimer), so the contract tests' accounts
0..3 are never raced for nonces. The commands run in-process through typer's runner, except where a
real process's whole output must be inspected (the key test). The crash tests (SIGKILL around each ledger
transaction and the send) are in tests/faults/test_settle_crash.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account

from ledger import Ledger, define_views, run_query
from royalty.cli import app
from settlement.onchain.chain import connect, distributor_contract, load_signer, token_contract, transact
from settlement.onchain.exceptions import ChainConfigError, ConfirmationTimeoutError
from settlement.onchain.merkle import MerkleTree
from tests.support.anvil import Anvil, anvil  # noqa: F401 - anvil is a fixture
from tests.support.settle_runs import (
    MINT_UNITS,
    SETTLER_KEY,
    append,
    claim_with_proof_output,
    deploy,
    expected_units,
    new_lake,
    proposals,
    royalty,
    runner,
    settle,
    settle_process,
    settlement_rows,
)


def test_every_payee_claims_its_payable_and_a_second_epoch_pays_exactly_the_difference(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
) -> None:
    """End to end on anvil: events → settle → every payee claims with `royalty proof` output → balances
    equal payables; a second epoch's claims pay the growth and the contract keeps the unclaimed rest."""
    lake = tmp_path / "lake"
    traffic, offset = new_lake(lake, 400)
    deployed = deploy(anvil)
    dry = royalty(
        "settle", "--lake", str(lake), "--rpc-url", anvil.url, "--distributor", deployed["distributor"], "--dry-run"
    )
    assert (dry["outcome"], dry["epoch"], dry["funded_units"]) == ("dry_run", 1, int(dry["total_units"]))
    assert len(proposals(anvil, deployed["distributor"], 1)) == 0
    first = settle(lake, anvil, deployed["distributor"])
    assert first["root"] == dry["root"]
    assert first["outcome"] == "proposed" and first["epoch"] == 1 and first["closed_epoch"] == 1
    expected_1 = expected_units(lake)
    assert sum(expected_1.values()) == int(first["total_units"]) and len(expected_1) == first["leaf_count"]
    dump = json.loads(Path(first["tree_path"]).read_text())
    assert MerkleTree.load(dump).root_hex == first["root"]

    chain = connect(anvil.url, None)
    contract = distributor_contract(chain, deployed["distributor"])
    token = token_contract(chain, contract)
    for address, units in expected_1.items():
        assert claim_with_proof_output(lake, anvil, address, tmp_path) == units
        assert token.functions.balanceOf(contract.w3.to_checksum_address(address)).call() == units
    assert token.functions.balanceOf(contract.address).call() == 0

    with Ledger.open(str(lake)) as ledger:
        append(ledger, list(traffic.metered(300, first_index=400)), offset)
    second = settle(lake, anvil, deployed["distributor"])
    assert second["outcome"] == "proposed" and second["epoch"] == 2
    expected_2 = expected_units(lake)
    assert all(expected_2[a] >= expected_1.get(a, 0) for a in expected_2)
    grown = sorted(a for a in expected_2 if expected_2[a] > expected_1.get(a, 0))
    assert len(grown) >= 2
    unclaimed = grown[0]
    for address in grown[1:]:
        assert claim_with_proof_output(lake, anvil, address, tmp_path) == expected_2[address] - expected_1.get(
            address, 0
        )
    remaining = expected_2[unclaimed] - expected_1.get(unclaimed, 0)
    assert token.functions.balanceOf(contract.address).call() == remaining
    assert contract.functions.totalClaimed().call() == sum(expected_2.values()) - remaining

    again = settle(lake, anvil, deployed["distributor"])
    assert again["outcome"] == "already_recorded" and again["tx_hash"] == second["tx_hash"]
    assert [len(proposals(anvil, deployed["distributor"], e)) for e in (1, 2)] == [1, 1]
    with Ledger.open_read_only(str(lake)) as ledger:
        define_views(ledger)
        rows = run_query(ledger, "SELECT epoch, root, outcome FROM settlements ORDER BY epoch").to_pylist()
    assert rows == [
        {"epoch": 1, "root": first["root"], "outcome": "proposed"},
        {"epoch": 2, "root": second["root"], "outcome": "proposed"},
    ]


def test_a_chain_holding_another_root_for_the_epoch_stops_settle_and_changes_nothing(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Settle ledger A to a contract, then ledger B (other events) to the same one: B's run fails with the
    mismatch error naming both roots, and B's ledger gains no tree, intent or record."""
    deployed = deploy(anvil)
    new_lake(tmp_path / "a", 150, seed=3)
    assert settle(tmp_path / "a", anvil, deployed["distributor"])["outcome"] == "proposed"
    lake_b = tmp_path / "b"
    new_lake(lake_b, 150, seed=4)
    args = ["settle", "--lake", str(lake_b), "--rpc-url", anvil.url, "--distributor", deployed["distributor"]]
    result = runner.invoke(app, args, env={"ROYALTY_SETTLER_KEY": SETTLER_KEY})
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "epoch `1`" in message and "the chain holds root" in message and "nothing was sent or written" in message
    for table in ("settlement_root", "settlement_intent", "settlement_record"):
        assert settlement_rows(lake_b, table) == []
    assert len(proposals(anvil, deployed["distributor"], 1)) == 1


def test_the_signing_key_never_appears_in_any_output_log_or_file(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Run `royalty settle` as a process with JSON logs, and a malformed key in-process; grep every byte of
    output, of the tree files and of the ledger's folder for the key (with and without 0x, any case)."""
    lake = tmp_path / "lake"
    new_lake(lake, 100)
    deployed = deploy(anvil)
    run = settle_process(lake, anvil, deployed["distributor"], None)
    assert run.returncode == 0, run.stderr
    bad_key = SETTLER_KEY[:-2] + "zz"
    bad = runner.invoke(
        app, ["settle", "--lake", str(lake), "--rpc-url", anvil.url], env={"ROYALTY_SETTLER_KEY": bad_key}
    )
    assert bad.exit_code == 2 and "ROYALTY_SETTLER_KEY is not a 32-byte hex private key" in bad.stderr
    secrets = {SETTLER_KEY[2:].lower(), bad_key[2:].lower()}
    texts = [run.stdout, run.stderr, bad.stdout, bad.stderr]
    texts += [p.read_bytes().decode("latin-1") for p in lake.rglob("*") if p.is_file()]
    assert len(texts) > 4
    for text in texts:
        for secret in secrets:
            assert secret not in text.lower()


def test_keys_come_from_the_environment_or_an_encrypted_keystore_never_else() -> None:
    """load_signer: env key wins; a keystore needs its password env; wrong password and bad key are typed errors."""
    account = Account.from_key(SETTLER_KEY)
    assert load_signer(None, environ={}) is None
    assert load_signer(None, environ={"ROYALTY_SETTLER_KEY": SETTLER_KEY}).address == account.address
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "key.json"
        path.write_text(json.dumps(Account.encrypt(SETTLER_KEY, "pw", kdf="pbkdf2", iterations=1_000)))
        assert load_signer(str(path), environ={"ROYALTY_KEYSTORE_PASSWORD": "pw"}).address == account.address
        with pytest.raises(ChainConfigError, match="needs its password"):
            load_signer(str(path), environ={})
        with pytest.raises(ChainConfigError, match="cannot decrypt") as wrong:
            load_signer(str(path), environ={"ROYALTY_KEYSTORE_PASSWORD": "nope"})
        assert "nope" not in str(wrong.value)


def test_settle_without_rpc_url_runs_on_an_in_process_chain(tmp_path: Path) -> None:
    """No --rpc-url: eth-tester's in-process EVM; settle deploys its own contracts, proposes and records."""
    lake = tmp_path / "lake"
    new_lake(lake, 100)
    result = runner.invoke(app, ["settle", "--lake", str(lake), "--json"], env={"ROYALTY_SETTLER_KEY": ""})
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["outcome"] == "proposed" and summary["epoch"] == 1 and summary["leaf_count"] > 0


def test_a_root_still_in_its_timelock_makes_the_next_settle_fail_with_advice_and_send_nothing(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Distributor with a one-hour timelock: epoch 2's settle stops on the preflight's decoded
    RoyaltyDistributorRootPending, says to wait or revoke, records no intent; after the hour it proposes."""
    lake = tmp_path / "lake"
    traffic, offset = new_lake(lake, 100)
    deployed = royalty("deploy", "--rpc-url", anvil.url, "--timelock-seconds", "3600", "--mint-units", str(MINT_UNITS))
    assert settle(lake, anvil, deployed["distributor"])["outcome"] == "proposed"
    with Ledger.open(str(lake)) as ledger:
        append(ledger, list(traffic.metered(50, first_index=100)), offset)
    args = ["settle", "--lake", str(lake), "--rpc-url", anvil.url, "--distributor", deployed["distributor"]]
    blocked = runner.invoke(app, args, env={"ROYALTY_SETTLER_KEY": SETTLER_KEY})
    message = " ".join(blocked.stderr.split())
    assert blocked.exit_code == 2 and "RoyaltyDistributorRootPending" in message and "nothing was sent" in message
    assert [r["epoch"] for r in settlement_rows(lake, "settlement_intent")] == [1]
    assert len(proposals(anvil, deployed["distributor"], 2)) == 0
    anvil.advance_time(3_601)
    assert settle(lake, anvil, deployed["distributor"])["outcome"] == "proposed"
    assert len(proposals(anvil, deployed["distributor"], 2)) == 1


def test_transactions_wait_for_the_configured_confirmations_and_time_out_with_a_resumable_error(
    anvil: Anvil,  # noqa: F811
) -> None:
    """chain.transact with confirmations=3 under 1 s interval mining returns only once two blocks sit on
    the receipt's; with no further blocks, confirmations=5 raises ConfirmationTimeoutError after its bound."""
    deployed = deploy(anvil)
    signer = load_signer(None, environ={"ROYALTY_SETTLER_KEY": SETTLER_KEY})
    chain = connect(anvil.url, signer, confirmations=3, confirm_timeout_s=30)
    token = token_contract(chain, distributor_contract(chain, deployed["distributor"]))
    anvil.rpc("evm_setIntervalMining", [1])
    try:
        receipt = transact(chain, token.functions.transfer(deployed["distributor"], 1), "transfer")
        assert anvil.w3.eth.block_number - receipt["blockNumber"] + 1 >= 3
    finally:
        anvil.rpc("evm_setIntervalMining", [0])
    impatient = connect(anvil.url, signer, confirmations=5, confirm_timeout_s=1)
    with pytest.raises(ConfirmationTimeoutError, match="run `royalty settle` again"):
        transact(impatient, token.functions.transfer(deployed["distributor"], 1), "transfer")
