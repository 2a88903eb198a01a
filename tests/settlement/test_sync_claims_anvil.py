"""`royalty sync-claims` against a real anvil: claims read back once each, reconciled, and a reorganisation caught."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ledger import Ledger, define_views, run_query
from royalty.cli import app
from tests.support.anvil import Anvil, anvil  # noqa: F401 - anvil is a fixture
from tests.support.settle_runs import (
    append,
    claim_with_proof_output,
    deploy,
    expected_units,
    new_lake,
    royalty,
    settle,
)


def _sync(lake: Path, node: Anvil, *extra: str) -> dict:
    return royalty("sync-claims", "--lake", str(lake), "--rpc-url", node.url, *extra)


def _query(lake: Path, sql: str) -> list[dict]:
    with Ledger.open_read_only(str(lake)) as ledger:
        define_views(ledger)
        return run_query(ledger, sql).to_pylist()


def _off_checks(lake: Path) -> list[dict]:
    return _query(lake, "SELECT * FROM reconciliation WHERE items_off <> 0 OR difference_micros <> 0")


def test_claims_are_read_back_once_each_across_epochs_and_reconcile_to_zero(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Settle, claim for three payees, sync: the `claims` view holds exactly those claims; a rerun adds none;
    epoch 2's claim pays the difference and the next sync adds just it; every reconciliation row is zero."""
    lake = tmp_path / "lake"
    traffic, offset = new_lake(lake, 300, seed=5)
    deployed = deploy(anvil)
    settle(lake, anvil, deployed["distributor"])
    expected_1 = expected_units(lake)
    claimants = sorted(expected_1, key=lambda a: (-expected_1[a], a))[:3]
    paid = {a: claim_with_proof_output(lake, anvil, a, tmp_path) for a in claimants}

    first = _sync(lake, anvil)  # the distributor comes from the ledger's settlement record
    assert (first["claims_added"], int(first["claimed_units_added"])) == (3, sum(paid.values()))
    assert first["contract"] == deployed["distributor"]
    rows = _query(lake, "SELECT lower(account) AS account, epoch, amount_micros, cumulative_claimed_micros FROM claims")
    assert {r["account"]: (r["epoch"], r["amount_micros"], r["cumulative_claimed_micros"]) for r in rows} == {
        a: (1, paid[a], expected_1[a]) for a in claimants
    }
    again = _sync(lake, anvil)
    assert again["claims_added"] == 0 and again["from_block"] == first["to_block"] + 1

    with Ledger.open(str(lake)) as ledger:
        append(ledger, list(traffic.metered(200, first_index=300)), offset)
    settle(lake, anvil, deployed["distributor"])
    expected_2 = expected_units(lake)
    grown = next(a for a in claimants if expected_2[a] > expected_1[a])
    assert claim_with_proof_output(lake, anvil, grown, tmp_path) == expected_2[grown] - expected_1[grown]
    second = _sync(lake, anvil, "--distributor", deployed["distributor"])
    assert (second["claims_added"], int(second["claimed_units_added"])) == (1, expected_2[grown] - expected_1[grown])
    totals = _query(
        lake, "SELECT count(*) AS claims, sum(amount_micros)::BIGINT AS paid, max(epoch) AS epoch_max FROM claims"
    )
    assert totals == [{"claims": 4, "paid": sum(paid.values()) + expected_2[grown] - expected_1[grown], "epoch_max": 2}]
    checks = _query(lake, "SELECT DISTINCT check_name FROM reconciliation")
    assert {"claims_vs_tree", "claims_paid", "root_vs_payables", "proofs_vs_root"} <= {c["check_name"] for c in checks}
    assert _off_checks(lake) == []


def test_a_reorganisation_below_the_synced_cursor_stops_the_next_sync_with_advice(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Sync claims, then revert the chain (evm_revert) and mine other blocks in place of the synced ones: the
    next sync refuses, names the block and both hashes, and writes nothing."""
    lake = tmp_path / "lake"
    new_lake(lake, 200, seed=9)
    deployed = deploy(anvil)
    settle(lake, anvil, deployed["distributor"])
    snapshot = anvil.rpc("evm_snapshot", [])
    account = max(expected_units(lake).items(), key=lambda item: item[1])[0]
    claim_with_proof_output(lake, anvil, account, tmp_path)
    synced = _sync(lake, anvil)
    assert synced["claims_added"] == 1
    anvil.rpc("evm_revert", [snapshot])
    for _ in range(3):
        anvil.rpc("evm_mine", [])
    result = CliRunner().invoke(app, ["sync-claims", "--lake", str(lake), "--rpc-url", anvil.url])
    assert result.exit_code != 0
    message = " ".join(result.output.split())
    assert f"block {synced['to_block']} was 0x" in message and "reorganised deeper than the 1 confirmation" in message
    assert _query(lake, "SELECT count(*) AS claims FROM claims") == [{"claims": 1}]
