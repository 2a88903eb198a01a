"""The `reconciliation` view: all zeros on a healthy settled ledger, non-zero once a posting is tampered with."""

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ledger import Ledger, define_views, run_query
from tests.analytics.conftest import build_settled_ledger

if TYPE_CHECKING:
    from tests.support.postgres import PostgresServer

pytest_plugins = ("tests.support.postgres",)

checks = {
    "entry_balance",
    "recipient_credits",
    "model_pass_through",
    "epoch_payable_total",
    "billing_vs_epoch",
    "events_vs_epoch",
    "suspense_balance",
    "conservation",
}
chain_checks = {"root_vs_payables", "proofs_vs_root", "claims_vs_tree", "claims_paid"}


def _reconciliation(lake: Path | str, data_path: str | None = None) -> list[dict]:
    with Ledger.open_read_only(lake, data_path) as ledger:
        define_views(ledger)
        return run_query(ledger, "SELECT * FROM reconciliation ORDER BY epoch, check_name").to_pylist()


def test_reconciliation_is_all_zeros_for_every_check_and_epoch_of_a_settled_ledger(settled_lake: Path) -> None:
    """Every ledger check has a row per closed epoch (suspense, reversals and dead letters included), every chain
    check one per settled epoch (epoch 1, with two synced claims), and each is zero."""
    rows = _reconciliation(settled_lake)
    expected = {(c, e) for c in checks for e in (1, 2)} | {(c, 1) for c in chain_checks}
    assert {(row["check_name"], row["epoch"]) for row in rows} == expected
    assert all(row["items_checked"] > 0 for row in rows)
    assert [row for row in rows if row["items_off"] or row["difference_micros"]] == []


def test_a_conflicting_posting_written_behind_the_ledgers_back_makes_reconciliation_non_zero(
    settled_lake: Path, tmp_path: Path
) -> None:
    """Tamper: a second credit row for one contributor in an existing entry, inserted with plain DuckDB SQL."""
    lake = tmp_path / "tampered"
    build_settled_ledger(lake)
    assert _reconciliation(lake) == _reconciliation(settled_lake)
    with Ledger.open(lake) as ledger:
        ledger.connection.execute(
            """
            INSERT INTO lake.main.settlement_posting
            SELECT epoch, entry_id, entry_kind, account, -7 AS amount_micros, model_id, policy_id
            FROM lake.main.settlement_posting
            WHERE epoch = 2 AND account LIKE 'contributor:%' AND amount_micros < 0
            ORDER BY entry_id, account LIMIT 1
            """
        )
    off = {(row["check_name"], row["epoch"]): row for row in _reconciliation(lake) if row["difference_micros"]}
    assert set(off) == {("entry_balance", 2), ("recipient_credits", 2)}
    assert all(row["items_off"] == 1 and row["difference_micros"] == 7 for row in off.values())


def test_reconciliation_reads_the_catalog_metadata_on_a_postgresql_catalog_too(
    postgres_server: "PostgresServer", tmp_path: Path
) -> None:
    """events_vs_epoch joins DuckLake's own metadata tables: the same all-zero rows with a PostgreSQL catalog."""
    catalog = postgres_server.create_database(f"lake_{uuid.uuid4().hex[:12]}")
    build_settled_ledger(catalog, str(tmp_path / "data"))
    rows = _reconciliation(catalog, str(tmp_path / "data"))
    expected = {(c, e) for c in checks for e in (1, 2)} | {(c, 1) for c in chain_checks}
    assert {(row["check_name"], row["epoch"]) for row in rows} == expected
    assert [row for row in rows if row["items_off"] or row["difference_micros"]] == []


@pytest.mark.parametrize(
    ("tamper", "expected_off"),
    [
        (
            "UPDATE lake.main.settlement_claim SET amount_units = amount_units + 5 WHERE block_number = 8",
            {("claims_paid", 1): 5},
        ),
        (
            "UPDATE lake.main.settlement_claim SET cumulative_units = cumulative_units + 9 WHERE block_number = 9",
            {("claims_vs_tree", 1): 9, ("claims_paid", 1): 9},
        ),
        (
            "INSERT INTO lake.main.settlement_claim SELECT * REPLACE (log_index + 1 AS log_index) "
            "FROM lake.main.settlement_claim WHERE block_number = 8",
            None,
        ),
        (
            "UPDATE lake.main.settlement_proof SET cumulative_units = cumulative_units - 3 "
            "WHERE tree_index = (SELECT max(tree_index) FROM lake.main.settlement_proof)",
            None,
        ),
    ],
    ids=["claim-amount-altered", "claim-cumulative-forged", "claim-repeated", "proof-leaf-lowered"],
)
def test_a_tampered_claim_or_proof_record_makes_the_chain_checks_non_zero(
    tmp_path: Path, tamper: str, expected_off: dict[tuple[str, int], int] | None
) -> None:
    """Tamper with the synced claims or the stored proofs behind the ledger's back with plain SQL: the chain
    checks name the epoch and the difference in micros."""
    lake = tmp_path / "tampered"
    build_settled_ledger(lake)
    with Ledger.open(lake) as ledger:
        ledger.connection.execute(tamper)
    off = {
        (row["check_name"], row["epoch"]): row["difference_micros"]
        for row in _reconciliation(lake)
        if row["difference_micros"] or row["items_off"]
    }
    if expected_off is not None:
        assert off == expected_off
    else:
        assert off and {check for check, _ in off} <= chain_checks
