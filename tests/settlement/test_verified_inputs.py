"""Money moves only on verified data: `close-epoch` and `settle` refuse tampered, missing or unreconciled inputs.

Real DuckLake ledgers in temporary folders, the real `royalty` CLI (in-process through typer's runner, or a
`python -O` subprocess), and the in-process chain for `settle`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ingest.sample import SampleShape, SampleTraffic
from ledger import IngestBatch, Ledger, PartitionOffsets
from royalty.cli import app
from schemas import BatchDecoder
from settlement import close_epoch
from settlement.ledger_io import data_files
from settlement.onchain import tables as settle_tables  # noqa: F401 - every table exists before the snapshots compared
from tests.conftest import repo_root

shape = SampleShape(models=4, contributors=8, compute_providers=2, payers=20)
attacker = "0x000000000000000000000000000000000000dEaD"
runner = CliRunner()


def _new_lake(lake: Path, events: int = 300) -> None:
    traffic = SampleTraffic(shape, seed=5)
    values = list(traffic.registry()) + list(traffic.metered(events))
    offsets = list(range(len(values)))
    batch = IngestBatch.from_messages(values, ["t"] * len(values), [0] * len(values), offsets, BatchDecoder())
    with Ledger.open(lake) as ledger:
        ledger.append(batch, [PartitionOffsets("t", 0, 0, len(values))])


def _files(lake: Path, table: str) -> list[str]:
    with Ledger.open_read_only(lake) as ledger:
        return data_files(ledger.connection, table, ledger.current_snapshot())["path"].to_list()


def _rewrite_addresses(path: str, column: str) -> None:
    """What an attacker with write access to the data folder does: every payout address becomes theirs."""
    table = pq.read_table(path)
    index = table.schema.get_field_index(column)
    redirected = pc.if_else(pc.is_null(table[column]), table[column], attacker)
    pq.write_table(table.set_column(index, table.schema.field(index), redirected), path, compression="zstd")


def _unwrapped(output: str) -> str:
    """Output without the line breaks (and spaces) the console wraps long paths with."""
    return "".join(output.split())


def _epochs_and_snapshot(lake: Path) -> tuple[int, int]:
    with Ledger.open_read_only(lake) as ledger:
        (epochs,) = ledger.connection.execute("SELECT count(*) FROM lake.main.settlement_epoch").fetchone()
        return epochs, ledger.current_snapshot()


def _payout_addresses(lake: Path) -> set[str]:
    with Ledger.open_read_only(lake) as ledger:
        rows = ledger.connection.execute(
            "SELECT DISTINCT payout_address FROM lake.main.settlement_payable WHERE payout_address IS NOT NULL"
        ).fetchall()
    return {address for (address,) in rows}


def test_a_rewritten_registry_file_that_redirects_every_payee_is_refused_by_close_epoch(tmp_path: Path) -> None:
    """The contributor_registered Parquet file rewritten with another payout address: close-epoch exits 2 naming
    the file, writes nothing; `--accept-unverified-files` goes on (and then pays the rewritten addresses)."""
    lake = tmp_path / "lake"
    _new_lake(lake)
    (registry_file,) = _files(lake, "contributor_registered")
    _rewrite_addresses(registry_file, "payout_address")
    before = _epochs_and_snapshot(lake)

    refused = runner.invoke(app, ["close-epoch", "--lake", str(lake)])
    assert refused.exit_code == 2, refused.output
    output = " ".join(refused.output.split())
    assert registry_file in _unwrapped(refused.output) and "closing epoch 1" in output
    assert "--accept-unverified-files" in output and "nothing was written or sent" in output
    assert _epochs_and_snapshot(lake) == before

    accepted = runner.invoke(app, ["close-epoch", "--lake", str(lake), "--accept-unverified-files"])
    assert accepted.exit_code == 0, accepted.output
    assert "accepted by override" in accepted.output
    assert _payout_addresses(lake) == {attacker}


def test_settle_refuses_a_payables_file_rewritten_after_the_epoch_closed_and_sends_nothing(tmp_path: Path) -> None:
    """Epoch 1 closed honestly; then its settlement_payable file is rewritten to one address. `settle` (the
    in-process chain) exits 2 before any tree, intent or proposal is written."""
    lake = tmp_path / "lake"
    _new_lake(lake)
    with Ledger.open(lake) as ledger:
        close_epoch(ledger)
    (payables_file,) = _files(lake, "settlement_payable")
    _rewrite_addresses(payables_file, "payout_address")
    before = _epochs_and_snapshot(lake)

    refused = runner.invoke(app, ["settle", "--lake", str(lake), "--json"])
    assert refused.exit_code == 2, refused.output
    output = " ".join(refused.output.split())
    assert payables_file in _unwrapped(refused.output)
    assert "not the ones the ledger wrote" in output and "nothing was written or sent" in output
    assert _epochs_and_snapshot(lake) == before
    with Ledger.open_read_only(lake) as ledger:
        for table in ("settlement_root", "settlement_intent", "settlement_record"):
            assert ledger.connection.execute(f"SELECT count(*) FROM lake.main.{table}").fetchone() == (0,)


def test_a_non_zero_reconciliation_row_stops_close_epoch_until_an_operator_accepts_it(tmp_path: Path) -> None:
    """A posting inserted behind the ledger's back unbalances epoch 1: closing epoch 2 exits 2 naming the check."""
    lake = tmp_path / "lake"
    _new_lake(lake)
    with Ledger.open(lake) as ledger:
        close_epoch(ledger)
        ledger.connection.execute(
            """INSERT INTO lake.main.settlement_posting
               SELECT epoch, entry_id, entry_kind, account, -7, model_id, policy_id
               FROM lake.main.settlement_posting WHERE account LIKE 'contributor:%' ORDER BY ALL LIMIT 1"""
        )
    traffic = SampleTraffic(shape, seed=5)
    values = list(traffic.metered(50, first_index=10_000))
    with Ledger.open(lake) as ledger:
        first = 10_000
        batch = IngestBatch.from_messages(
            values, ["t"] * 50, [0] * 50, list(range(first, first + 50)), BatchDecoder()
        )
        ledger.append(batch, [PartitionOffsets("t", 0, first, first + 50)])
    before = _epochs_and_snapshot(lake)

    refused = runner.invoke(app, ["close-epoch", "--lake", str(lake)])
    assert refused.exit_code == 2, refused.output
    output = refused.output.replace("\n", " ")
    assert "entry_balance in epoch 1" in output and "--accept-unreconciled" in output
    assert _epochs_and_snapshot(lake) == before

    accepted = runner.invoke(app, ["close-epoch", "--lake", str(lake), "--accept-unreconciled"])
    assert accepted.exit_code == 0, accepted.output
    assert _epochs_and_snapshot(lake)[0] == 2


@pytest.mark.parametrize("table", ["inference_metered", "settlement_posting"])
def test_a_missing_data_file_is_a_clear_error_naming_it_not_a_traceback(tmp_path: Path, table: str) -> None:
    """A data file deleted from the folder: close-epoch exits 2 naming the file and the recovery, even with both
    overrides; one it hashes (the epoch's events) and one only the reconciliation query reads (postings)."""
    lake = tmp_path / "lake"
    _new_lake(lake)
    with Ledger.open(lake) as ledger:
        close_epoch(ledger)
    more = list(SampleTraffic(shape, seed=5).metered(20, first_index=20_000))
    with Ledger.open(lake) as ledger:
        batch = IngestBatch.from_messages(more, ["t"] * 20, [0] * 20, list(range(20_000, 20_020)), BatchDecoder())
        ledger.append(batch, [PartitionOffsets("t", 0, 20_000, 20_020)])
    gone = _files(lake, table)[-1]
    Path(gone).unlink()

    result = subprocess.run(
        [sys.executable, "-m", "royalty.cli", "close-epoch", "--lake", str(lake), "--accept-unverified-files",
         "--accept-unreconciled"],
        capture_output=True, text=True, cwd=repo_root, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert gone in _unwrapped(result.stderr) and "missing" in message
    assert "Restore them from a backup" in message and "royalty verify" in message
    assert _epochs_and_snapshot(lake)[0] == 1


_corrupted_close = textwrap.dedent(
    """
    import sys
    assert False, "this script must run under python -O"  # removed by -O: proves the flag is in force
    import polars as pl
    from settlement.engine import splits
    from settlement.engine.allocation import allocate

    def allocate_one_unit_short(parts, key="allocation_id"):
        allocated = allocate(parts, key)
        return allocated.with_columns(
            pl.when(pl.int_range(pl.len()) == 0).then(pl.col("amount_micros") - 1).otherwise(pl.col("amount_micros"))
            .alias("amount_micros")
        )

    splits.allocate = allocate_one_unit_short
    from royalty.cli import main
    sys.argv = ["royalty", "close-epoch", "--lake", sys.argv[1]]
    main()
    """
)


def test_close_epoch_under_python_O_refuses_an_allocation_that_loses_a_unit(tmp_path: Path) -> None:
    """`python -O` strips asserts; the money invariants still stop close-epoch (exit 2) and nothing is written."""
    lake = tmp_path / "lake"
    _new_lake(lake, events=100)
    before = _epochs_and_snapshot(lake)
    result = subprocess.run(
        [sys.executable, "-O", "-c", _corrupted_close, str(lake)],
        capture_output=True, text=True, cwd=repo_root, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "invariant violated" in result.stderr and "created or lost money" in result.stderr
    assert _epochs_and_snapshot(lake) == before


def test_production_code_has_no_bare_assert() -> None:
    """`python -O` removes `assert`: production packages use `schemas.errors.require` / typed errors instead."""
    import ast

    found = []
    for package in ("schemas", "ingest", "ledger", "settlement", "royalty"):
        for path in sorted((repo_root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Assert):
                    found.append(f"{path.relative_to(repo_root)}:{node.lineno}")
    assert found == []


def test_settle_checks_the_stored_proofs_of_the_epoch_it_settles(tmp_path: Path) -> None:
    """A rerun of `settle` reads the epoch's stored tree: a rewritten proof file is refused, a deleted one named."""
    from ledger.errors import LedgerDataFileMissingError
    from settlement.exceptions import UnverifiedInputError
    from settlement.input_checks import InputChecks, verify_settle_inputs
    from settlement.onchain.payout_tree import build_epoch_tree
    from settlement.onchain.settle import _payables, write_tree

    lake = tmp_path / "lake"
    _new_lake(lake, events=100)
    with Ledger.open(lake) as ledger:
        close_epoch(ledger)
        write_tree(ledger, build_epoch_tree(1, ledger.current_snapshot(), _payables(ledger.connection, 1)))
        assert verify_settle_inputs(ledger, 1, InputChecks()) == []
    (proof_file,) = _files(lake, "settlement_proof")
    _rewrite_addresses(proof_file, "account")
    with Ledger.open(lake) as ledger:
        with pytest.raises(UnverifiedInputError, match="settling epoch 1"):
            verify_settle_inputs(ledger, 1, InputChecks())
        Path(proof_file).unlink()
        with pytest.raises(LedgerDataFileMissingError) as missing:
            verify_settle_inputs(ledger, 1, InputChecks(accept_unverified_files=True))
    assert missing.value.paths == [proof_file]
