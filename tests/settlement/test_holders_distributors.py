"""Distributors are never paid as token holders (issue 17): a distributor contract that holds the holder token (the
token is also the payout token, or someone sent it some) could never claim or pass on a holder share, so every
distributor the ledger knows is excluded, not only the current `distributor` setting: those it settled to
(`settlement_record`, `settlement_intent`), read claims of (`settlement_claim`) or migrated from
(`settlement_migration`, `royalty deploy --migrate-from`), with or without the setting. Their share goes to the
other holders, and the epoch records them in its exclusions (re-plans use the recorded list).

Transfers, sync cursor and settlement records are written as `sync-holders` and `settle` write them: no chain here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner
from web3 import Web3

from ledger import Ledger, define_views, run_query
from settlement import holders
from settlement.onchain.tables import migration_schema, record_schema
from tests.ledger.helpers import batch_of
from tests.settlement.test_holders_ledger import _metered, _registry, _synced, chain_id, fee_micros, take_ppm, zero

holder, settled_to, migrated_from, current = (
    Web3.to_checksum_address(f"0x{i:040x}") for i in (0xD4, 0xE5, 0xF6, 0x1D1)
)
runner = CliRunner()
take_micros = 10 * fee_micros * take_ppm // 1_000_000


def _close(lake: Path, env: dict[str, str]) -> str:
    from royalty.cli import app

    closed = runner.invoke(app, ["close-epoch", "--lake", str(lake)], env=env)
    assert closed.exit_code == 0, closed.output
    return closed.output


def _settled(ledger: Ledger, epoch: int, contract: str, at: datetime) -> None:
    record = {"epoch": epoch, "root": "0x" + "ab" * 32, "total_units": 0, "tx_hash": "0x" + "cd" * 32,
              "block_number": 1, "block_hash": "0x" + "ef" * 32, "chain_id": chain_id, "contract": contract,
              "closing_snapshot": 0, "tree_snapshot": 0, "outcome": "confirmed", "recorded_at": at}  # fmt: skip
    ledger.append_records({"settlement_record": pa.Table.from_pylist([record], schema=record_schema)})


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Epoch 1: three holders of 10**6 units each: an ordinary one, a distributor the ledger settled to before and
    one it migrated from; closed with the `distributor` setting naming a third, current one. Epoch 2: the current
    distributor (settled to in epoch 1) is sent 10**6 units, and the close runs without the `distributor` setting."""
    lake = tmp_path_factory.mktemp("holders-distributors") / "lake"
    now = datetime.now(UTC)
    at = now - timedelta(hours=1)
    with Ledger.open(str(lake)) as ledger:
        ledger.append(*batch_of(_registry(at) + _metered(0, 10, at + timedelta(seconds=1))))
        _synced(ledger, 1, 10, [(1, zero, account, 10**6) for account in (holder, settled_to, migrated_from)], now)
        _settled(ledger, 0, settled_to, now)
        migration = {"epoch": 0, "predecessor": migrated_from, "predecessor_epoch": 0, "written_at": now}
        ledger.append_records({"settlement_migration": pa.Table.from_pylist([migration], schema=migration_schema)})
    outputs = [_close(lake, {"ROYALTY_DISTRIBUTOR": current})]
    with Ledger.open(str(lake)) as ledger:
        _settled(ledger, 1, current, now)
        ledger.append(*batch_of(_metered(10, 10, at + timedelta(seconds=2)), first_offset=13))
        _synced(ledger, 11, 20, [(11, zero, current, 10**6)], now)
    outputs.append(_close(lake, {"ROYALTY_DISTRIBUTOR": ""}))
    with Ledger.open(str(lake)) as ledger:
        ledger.append(*batch_of(_metered(20, 10, at + timedelta(seconds=3)), first_offset=23))
        _synced(ledger, 21, 30, [], now)
    with pytest.MonkeyPatch.context() as patch:  # epoch 3 closed as before the rule: only the setting excluded
        patch.setattr(holders, "known_distributors", lambda connection, chain_id: [])
        outputs.append(_close(lake, {"ROYALTY_DISTRIBUTOR": current}))
    return {"lake": lake, "outputs": outputs}


def _credited(lake: Path) -> tuple[dict, list[dict]]:
    with Ledger.open_read_only(str(lake)) as ledger:
        define_views(ledger)
        payables = run_query(ledger, "SELECT epoch, recipient, credited_micros FROM payables").to_pylist()
        recorded = run_query(ledger, "SELECT epoch, excluded FROM lake.main.settlement_epoch_blocks "
                                     "ORDER BY epoch").to_pylist()
    return {(row["epoch"], row["recipient"]): row["credited_micros"] for row in payables}, recorded


def test_a_distributor_migrated_from_or_settled_to_is_not_paid_as_a_holder_and_its_share_goes_to_the_others(
    lake: dict,
) -> None:
    """Epoch 1 (the setting names another distributor): the old distributors hold two thirds of the token and get
    nothing; the ordinary holder gets the whole take (the old code paid each a third)."""
    credited, recorded = _credited(lake["lake"])
    assert (1, settled_to) not in credited and (1, migrated_from) not in credited
    assert credited[(1, holder)] == take_micros
    assert set(recorded[0]["excluded"].split(",")) == {a.lower() for a in (settled_to, migrated_from, current)}


def test_close_epoch_without_the_distributor_setting_still_excludes_every_distributor_the_ledger_knows(
    lake: dict,
) -> None:
    """Epoch 2, closed without the `distributor` setting: the distributor settled to in epoch 1 now holds half the
    token and is still not paid, nor are the older ones; the ordinary holder gets the whole take."""
    credited, recorded = _credited(lake["lake"])
    assert not {(2, current), (2, settled_to), (2, migrated_from)} & credited.keys()
    assert credited[(2, holder)] == take_micros
    assert set(recorded[1]["excluded"].split(",")) == {a.lower() for a in (settled_to, migrated_from, current)}
    # The close says what it excluded, and that without the setting a distributor never settled to would be paid.
    first, second = (" ".join(output.split()) for output in lake["outputs"][:2])
    assert "no `distributor` setting" not in first and current.lower() in first
    assert "no `distributor` setting" in second and "ROYALTY_DISTRIBUTOR" in second
    assert all(address.lower() in second for address in (settled_to, migrated_from, current))


def test_publish_and_audit_re_plan_each_epoch_with_the_exclusions_it_recorded(lake: dict, tmp_path: Path) -> None:
    """`publish` (without the `distributor` setting) re-plans each epoch with the exclusions the epoch recorded, and
    the audit recomputes it from the bundle: epochs 1 and 2 list the distributors; epoch 3, closed as before the rule
    (only the setting excluded), keeps paying the two old distributors a third each and still publishes and audits."""
    from royalty.cli import app

    excluded = {}
    for epoch in (1, 2, 3):
        bundle = tmp_path / f"e{epoch}"
        published = runner.invoke(app, ["publish", "--lake", str(lake["lake"]), "--epoch", str(epoch),
                                         "--to", str(bundle)], env={"ROYALTY_DISTRIBUTOR": ""})  # fmt: skip
        assert published.exit_code == 0, published.output
        audited = runner.invoke(app, ["audit", "--bundle", str(bundle)])
        assert audited.exit_code == 0 and "settlement-v3" in audited.output, audited.output
        excluded[epoch] = set(json.loads((bundle / "manifest.json").read_text())["holders"]["excluded"])
    distributors = {a.lower() for a in (settled_to, migrated_from, current)}
    assert distributors <= excluded[1] and distributors <= excluded[2]
    assert excluded[3] & distributors == {current.lower()}
    credited, _ = _credited(lake["lake"])
    assert credited[(3, settled_to)] == credited[(3, migrated_from)] == credited[(3, holder)] > 0
