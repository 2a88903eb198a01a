"""Token holders' dust through a real DuckLake ledger (issue 17): `close-epoch` with `holder_dust_units_min` carries a
small holder's part forward (`settlement_holder_dust`, view `holder_dust`, account `holders-dust:<token>`) and pays it
whole in the epoch it reaches the threshold; the reconciliation stays clean; each epoch publishes a settlement-v3
bundle that `royalty audit` recomputes, and a changed holder weight is named.

The token's Transfer logs and sync cursor are written as `sync-holders` writes them (the sync itself is tested on
anvil in test_holders_anvil.py): no chain here.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from typer.testing import CliRunner
from web3 import Web3

from ledger import Ledger, define_views, run_query
from royalty.cli import app
from settlement.engine.allocation import allocate_by_weight
from settlement.holders import holder_sync_schema, holder_sync_table, holder_transfer_schema, holder_transfer_table
from settlement.reports.audit import AuditDisagreement, audit_bundle
from tests.ledger.helpers import batch_of

chain_id = 31337
token = Web3.to_checksum_address("0x" + "7e" * 20)
small, big, alice = (Web3.to_checksum_address(f"0x{i:040x}") for i in (0xA1, 0xB2, 0xC3))
zero = "0x" + "00" * 20
fee_micros, take_ppm, dust_units_min = 1_000_003, 600_000, 10
runner = CliRunner()


def _event(event_type: str, event_id: str, data: dict, at: datetime, source: str = "//registry") -> bytes:
    envelope = {"specversion": "1.0", "id": event_id, "source": source, "type": event_type}
    return json.dumps({**envelope, "time": at.isoformat().replace("+00:00", "Z"), "data": data}).encode()


def _registry(at: datetime) -> list[bytes]:
    policy = {
        "model_id": "m", "effective_from": at.isoformat().replace("+00:00", "Z"), "compute_share_ppm": 0,
        "shares": [{"recipient": "alice", "share_ppm": 1_000_000 - take_ppm},
                   {"recipient": f"holders:{token}", "share_ppm": take_ppm}],
    }  # fmt: skip
    return [
        _event("ai.contributor.registered.v1", "reg-alice", {"contributor_id": "alice", "payout_address": alice}, at),
        _event("ai.model.registered.v1", "reg-m", {"model_id": "m", "parents": []}, at),
        _event("ai.split-policy.set.v1", "pol-m", policy, at),
    ]


def _metered(first: int, count: int, at: datetime) -> list[bytes]:
    data = {
        "model_id": "m", "payer": "org-1", "compute_provider": "gpu-1", "input_tokens": 1, "output_tokens": 1,
        "fee_micros": fee_micros, "asset": "USDC",
    }  # fmt: skip
    return [
        _event("ai.inference.metered.v1", f"ev-{i}", {**data, "request_id": f"r-{i}"}, at, "//gateway")
        for i in range(first, first + count)
    ]


def _synced(ledger: Ledger, first: int, last: int, transfers: list[tuple[int, str, str, int]], at: datetime) -> None:
    """Blocks first..last of the token as `sync-holders` stores them: the transfers and the cursor, in one append."""
    rows = [
        {"chain_id": chain_id, "token": token, "block_number": block, "block_hash": f"0x{block:064x}",
         "tx_hash": f"0x{block:032x}{index:032x}", "log_index": index, "from_address": sender, "to_address": receiver,
         "value_units": str(value), "synced_at": at}
        for index, (block, sender, receiver, value) in enumerate(transfers)
    ]  # fmt: skip
    cursor = {"chain_id": chain_id, "token": token, "from_block": first, "to_block": last,
              "to_block_hash": f"0x{last:064x}", "to_block_time": at, "transfers": len(rows), "checked_holders": 0,
              "synced_at": at}  # fmt: skip
    ledger.append_records({
        holder_transfer_table: pa.Table.from_pylist(rows, schema=holder_transfer_schema),
        holder_sync_table: pa.Table.from_pylist([cursor], schema=holder_sync_schema),
    })  # fmt: skip


def _close(lake: Path) -> None:
    closed = runner.invoke(app, ["close-epoch", "--lake", str(lake)],
                           env={"ROYALTY_HOLDER_DUST_UNITS_MIN": str(dust_units_min)})
    assert closed.exit_code == 0, closed.output


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs of 10 events each; the small holder holds 1 unit, the big one 10**6, over blocks 1..10 and
    11..20: the small one's part of each epoch's take is about 6 micros, below the threshold of 10."""
    lake = tmp_path_factory.mktemp("holders-ledger") / "lake"
    now = datetime.now(UTC)
    at = now - timedelta(hours=1)
    with Ledger.open(str(lake)) as ledger:
        ledger.append(*batch_of(_registry(at) + _metered(0, 10, at + timedelta(seconds=1))))
        _synced(ledger, 1, 10, [(1, zero, big, 10**6), (1, zero, small, 1)], now)
    _close(lake)
    with Ledger.open(str(lake)) as ledger:
        ledger.append(*batch_of(_metered(10, 10, at + timedelta(seconds=2)), first_offset=13))
        _synced(ledger, 11, 20, [], now)
    _close(lake)
    return lake


def _parts() -> list[dict[str, int]]:
    take = 10 * fee_micros * take_ppm // 1_000_000
    weights = sorted({big: 10**6 * 10, small: 10}.items())  # ten blocks held in each epoch's range
    return [dict(allocate_by_weight(take, weights))] * 2


def test_a_small_holders_dust_is_carried_then_paid_whole_and_the_ledger_reconciles(lake: Path) -> None:
    """Epoch 1 credits the small holder nothing and carries its part (`holder_dust`, `holders-dust:<token>`);
    epoch 2 pays it both parts at once; the big holder is paid each epoch; every reconciliation check is 0."""
    first, second = _parts()
    assert 0 < first[small] < dust_units_min <= first[small] + second[small]
    with Ledger.open_read_only(str(lake)) as ledger:
        define_views(ledger)
        payables = run_query(ledger, "SELECT epoch, recipient, credited_micros FROM payables").to_pylist()
        dust = run_query(ledger, "SELECT epoch, token, holder, carried_micros, change_micros, latest FROM holder_dust "
                                 "ORDER BY epoch").to_pylist()
        account = run_query(ledger, "SELECT epoch, sum(amount_micros)::BIGINT AS moved FROM postings "
                                    f"WHERE account = 'holders-dust:{token}' GROUP BY 1 ORDER BY 1").to_pylist()
        off = run_query(ledger, "SELECT check_name, epoch FROM ledger_checks WHERE items_off <> 0").to_pylist()
        recorded = run_query(ledger, "SELECT epoch, dust_units_min FROM lake.main.settlement_epoch_blocks "
                                     "ORDER BY epoch").to_pylist()
    credited = {(row["epoch"], row["recipient"]): row["credited_micros"] for row in payables}
    assert (1, small) not in credited and credited[(2, small)] == first[small] + second[small]
    assert credited[(1, big)] == first[big] and credited[(2, big)] == second[big]
    assert dust == [
        {"epoch": 1, "token": token, "holder": small, "carried_micros": first[small],
         "change_micros": first[small], "latest": False},
        {"epoch": 2, "token": token, "holder": small, "carried_micros": 0, "change_micros": -first[small],
         "latest": True},
    ]  # fmt: skip
    assert account == [{"epoch": 1, "moved": -first[small]}, {"epoch": 2, "moved": first[small]}]
    assert off == []
    assert recorded == [{"epoch": 1, "dust_units_min": dust_units_min}, {"epoch": 2, "dust_units_min": dust_units_min}]


def _rehashed(directory: Path, name: str) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"][name]["sha256"] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_each_epoch_publishes_a_v3_bundle_the_audit_recomputes_and_a_changed_weight_is_named(
    lake: Path, tmp_path: Path
) -> None:
    """`royalty publish` writes the holders' weights, exclusions, threshold and dust carried in and out
    (settlement-v3); `royalty audit` recomputes both epochs from them (exit 0). Publish runs without the dust
    setting: it re-plans each epoch with the threshold the epoch recorded (with today's 0 the plan would not give the
    payables written, and publish would refuse). A changed weight of the big holder, with the manifest's hash
    updated, is named (exit 1), and so is a dust row changed; as a settlement-v2 bundle (no holder files) the epoch
    is named as not recomputable."""
    for epoch in (1, 2):
        published = runner.invoke(app, ["publish", "--lake", str(lake), "--epoch", str(epoch),
                                         "--to", str(tmp_path / f"e{epoch}")])
        assert published.exit_code == 0, published.output
        audited = runner.invoke(app, ["audit", "--bundle", str(tmp_path / f"e{epoch}")])
        assert audited.exit_code == 0 and "settlement-v3" in audited.output, audited.output
    manifest = json.loads((tmp_path / "e2" / "manifest.json").read_text())
    assert manifest["holders"] | {"excluded": None} == {
        "chain_id": chain_id, "from_block": 11, "to_block": 20, "excluded": None, "dust_units_min": dust_units_min,
    }  # fmt: skip
    assert pl.read_parquet(tmp_path / "e2" / "prior_holder_dust.parquet").to_dicts() == [
        {"token": token, "holder": small, "carried_micros": _parts()[0][small]}
    ]
    weights = tmp_path / "weight"
    shutil.copytree(tmp_path / "e2", weights)
    frame = pl.read_parquet(weights / "holder_weights.parquet")
    frame.with_columns(pl.when(pl.col("holder") == big).then(pl.lit(str(10**6))).otherwise(pl.col("weight"))
                       .alias("weight")).write_parquet(weights / "holder_weights.parquet")
    _rehashed(weights, "holder_weights.parquet")
    with pytest.raises(AuditDisagreement) as caught:
        audit_bundle(weights)
    assert caught.value.what in (f"recipient {big}", f"recipient {small}"), str(caught.value)
    assert "holder_weights.parquet" in str(caught.value)
    named = runner.invoke(app, ["audit", "--bundle", str(weights)])
    assert named.exit_code == 1 and "holder_weights.parquet" in named.output, named.output
    dust = tmp_path / "dust"
    shutil.copytree(tmp_path / "e1", dust)
    pl.read_parquet(dust / "holder_dust.parquet").with_columns(pl.col("carried_micros") + 1).write_parquet(
        dust / "holder_dust.parquet"
    )
    _rehashed(dust, "holder_dust.parquet")
    with pytest.raises(AuditDisagreement, match=r"holder_dust\.parquet says") as caught:
        audit_bundle(dust)
    assert caught.value.what == f"holder dust {small} of {token}"
    # The same epoch as a settlement-v2 bundle (no holder files): the audit says it cannot recompute the holders.
    older = tmp_path / "v2"
    shutil.copytree(tmp_path / "e1", older)
    manifest = json.loads((older / "manifest.json").read_text())
    manifest["rules_version"] = "settlement-v2"
    del manifest["holders"]
    for name in ("holder_weights.parquet", "prior_holder_dust.parquet", "holder_dust.parquet"):
        del manifest["files"][name]
    (older / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AuditDisagreement, match="carries no holder weights") as caught:
        audit_bundle(older)
    assert caught.value.what == f"recipient holders:{token}"


def test_the_report_shows_each_holder_token_with_the_holders_paid_and_the_dust_carried(lake: Path) -> None:
    """The HTML report's "Token holders" table: per `holders:<token>` recipient, the take, the count of holders
    paid and what they got, the dust carried (its change, total and holders carrying); the conservation line counts
    the dust and stays balanced in both epochs."""
    from settlement.reports.html import gather, render_html

    first, _ = _parts()
    take = first[big] + first[small]
    with Ledger.open_read_only(str(lake)) as ledger:
        reports = [gather(ledger, epoch) for epoch in (1, 2)]
    assert [r.holder_tokens.to_dicts() for r in reports] == [
        [{"token": token, "take_micros": take, "holders_paid": 1, "paid_micros": first[big],
          "dust_change_micros": first[small], "dust_carried_micros": first[small], "dust_holders": 1,
          "waiting_micros": 0}],
        [{"token": token, "take_micros": take, "holders_paid": 2, "paid_micros": take + first[small],
          "dust_change_micros": -first[small], "dust_carried_micros": 0, "dust_holders": 0, "waiting_micros": 0}],
    ]  # fmt: skip
    for report in reports:
        assert report.conserved and report.conservation_difference_micros == 0
    page = render_html(reports[0])
    table = page[page.index('id="holder-tokens"'):]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", table[: table.index("</table>")])
    assert cells == [f"holders:{token}", "6.000018", "1", f"{first[big] / 10**6:.6f}", "0.000006", "0.000006", "1",
                     "0.000000"], cells
    assert "Δholder dust" in page and 'id="conservation-verdict">balanced' in page


def _dust_checks(ledger: Ledger) -> tuple[list[dict], list[dict], list[dict]]:
    define_views(ledger)
    accounts = run_query(ledger, "SELECT * FROM holder_dust_accounts ORDER BY epoch").to_pylist()
    checks = run_query(ledger, "SELECT epoch, items_checked, items_off, difference_micros FROM reconciliation "
                               "WHERE check_name = 'holder_dust_balance' ORDER BY epoch").to_pylist()
    off = run_query(ledger, "SELECT check_name, epoch, difference_micros FROM reconciliation "
                            "WHERE items_off <> 0 ORDER BY ALL").to_pylist()
    return accounts, checks, off


def test_the_dust_rows_and_the_dust_account_agree_in_the_reconciliation(lake: Path) -> None:
    """`holder_dust_accounts`: per epoch, the carried total of the `holder_dust` rows and the `holders-dust:<token>`
    account's balance are the same (the small holder's part after epoch 1, 0 once paid in epoch 2), and the
    reconciliation's holder_dust_balance row of each epoch checks the one token and finds nothing off."""
    first, _ = _parts()
    with Ledger.open_read_only(str(lake)) as ledger:
        accounts, checks, off = _dust_checks(ledger)
    assert accounts == [
        {"epoch": 1, "token": token, "carried_micros": first[small], "account_micros": first[small]},
        {"epoch": 2, "token": token, "carried_micros": 0, "account_micros": 0},
    ]
    assert checks == [{"epoch": e, "items_checked": 1, "items_off": 0, "difference_micros": 0} for e in (1, 2)]
    assert off == []


def test_a_dust_row_the_dust_account_does_not_hold_is_named_by_the_reconciliation_and_stops_close_epoch(
    lake: Path, tmp_path: Path
) -> None:
    """Tamper: a `settlement_holder_dust` row saying the big holder carries 5 micros after epoch 2, appended behind
    the engine's back (no posting moves `holders-dust:<token>`). Conservation, computed from the postings, still
    holds; holder_dust_balance names epoch 2 (one token off by 5 micros), the report shows that row and is not
    reconciled, and the check close-epoch and settle run first raises `UnreconciledLedgerError` naming the check
    and epoch (exit 2 from the CLI: tests/settlement/test_verified_inputs.py)."""
    from settlement.exceptions import UnreconciledLedgerError
    from settlement.holders import holder_dust_schema, holder_dust_table
    from settlement.input_checks import InputChecks, verify_reconciled
    from settlement.reports.html import gather

    tampered = tmp_path / "tampered"
    shutil.copytree(lake, tampered)
    row = {"epoch": 2, "token": token, "holder": big, "carried_micros": 5}
    with Ledger.open(str(tampered)) as ledger:
        ledger.append_records({holder_dust_table: pa.Table.from_pylist([row], schema=holder_dust_schema)})
    with Ledger.open_read_only(str(tampered)) as ledger:
        accounts, checks, off = _dust_checks(ledger)
        report = gather(ledger, 2)
        with pytest.raises(UnreconciledLedgerError) as refused:
            verify_reconciled(ledger, InputChecks(), "close epoch 3")
    assert accounts[-1] == {"epoch": 2, "token": token, "carried_micros": 5, "account_micros": 0}
    assert checks[-1] == {"epoch": 2, "items_checked": 1, "items_off": 1, "difference_micros": 5}
    assert off == [{"check_name": "holder_dust_balance", "epoch": 2, "difference_micros": 5}]
    assert not report.reconciled
    named = report.reconciliation.filter(pl.col("items_off") != 0)
    assert named.select("check_name", "difference_micros").to_dicts() == [
        {"check_name": "holder_dust_balance", "difference_micros": 5}
    ]
    message = " ".join(str(refused.value).split())
    assert "holder_dust_balance in epoch 2" in message and "--accept-unreconciled" in message
