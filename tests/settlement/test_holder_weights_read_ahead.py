"""The holders' weights are read on a thread while the epoch is split (`settlement.ledger_io._weights_read_ahead`),
for every token a policy names; the engine then asks for the tokens the epoch credits. Through a real DuckLake
ledger: a named token the epoch credits nothing needs no sync (the read ahead meets its refusal and drops it), and a
credited token whose sync is behind still stops the close with the same refusal as before."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner
from web3 import Web3

from ledger import Ledger
from royalty.cli import app
from settlement import close_epoch, holders
from tests.ledger.helpers import batch_of
from tests.settlement.test_holders_ledger import _event, _metered, _synced, alice, big, small, token, zero

unsynced = Web3.to_checksum_address("0x" + "5e" * 20)
runner = CliRunner()


def _registry(at: datetime) -> list[bytes]:
    """Model `m` (the one metered) pays `token`'s holders; model `quiet` (never metered) pays `unsynced`'s."""
    stamp = at.isoformat().replace("+00:00", "Z")

    def policy(model: str, holders_token: str) -> dict:
        return {
            "model_id": model, "effective_from": stamp, "compute_share_ppm": 0,
            "shares": [{"recipient": "alice", "share_ppm": 400_000},
                       {"recipient": f"holders:{holders_token}", "share_ppm": 600_000}],
        }  # fmt: skip

    return [
        _event("ai.contributor.registered.v1", "reg-alice", {"contributor_id": "alice", "payout_address": alice}, at),
        _event("ai.model.registered.v1", "reg-m", {"model_id": "m", "parents": []}, at),
        _event("ai.model.registered.v1", "reg-quiet", {"model_id": "quiet", "parents": []}, at),
        _event("ai.split-policy.set.v1", "pol-m", policy("m", token), at),
        _event("ai.split-policy.set.v1", "pol-quiet", policy("quiet", unsynced), at),
    ]


def _close(lake: Path) -> tuple[int, str]:
    closed = runner.invoke(app, ["close-epoch", "--lake", str(lake)])
    return closed.exit_code, closed.output


def test_a_named_token_the_epoch_credits_nothing_needs_no_sync_and_a_credited_one_behind_refuses(
    tmp_path: Path,
) -> None:
    lake = tmp_path / "lake"
    now = datetime.now(UTC)
    at = now - timedelta(hours=1)
    with Ledger.open(str(lake)) as ledger:
        ledger.append(*batch_of(_registry(at) + _metered(0, 10, at + timedelta(seconds=1))))
        # `token` synced only to a block before the epoch's latest event: behind.
        _synced(ledger, 1, 10, [(1, zero, big, 10**6), (1, zero, small, 1)], at - timedelta(minutes=5))
    code, output = _close(lake)
    assert code != 0 and token.lower() in output.lower() and "synced up to block 10" in output, output

    with Ledger.open(str(lake)) as ledger:  # now caught up; `unsynced` still has no Transfer log at all
        _synced(ledger, 11, 20, [], now)
    code, output = _close(lake)
    assert code == 0, output
    with Ledger.open_read_only(str(lake)) as ledger:
        connection = ledger.connection
        paid = dict(
            connection.execute("SELECT recipient, amount_micros FROM lake.main.settlement_payable WHERE epoch = 1")
            .fetchall()
        )
        (blocks,) = connection.execute(
            "SELECT from_block || '-' || to_block FROM lake.main.settlement_epoch_blocks"
        ).fetchall()
    assert set(paid) == {"alice", big, small} and blocks == ("1-20",), (paid, blocks)
    assert sum(paid.values()) == 10 * json.loads(_metered(0, 1, at)[0])["data"]["fee_micros"]



def _paying_synced_holders(tmp_path: Path) -> Path:
    """A ledger whose model `m` (metered 10 times) pays `token`'s holders, the token synced past the events."""
    lake = tmp_path / "lake"
    now = datetime.now(UTC)
    at = now - timedelta(hours=1)
    with Ledger.open(str(lake)) as ledger:
        ledger.append(*batch_of(_registry(at)[:4] + _metered(0, 10, at + timedelta(seconds=1))))
        _synced(ledger, 1, 20, [(1, zero, big, 10**6), (1, zero, small, 1)], now)
    return lake


def test_the_weights_read_beside_the_split_runs_on_one_duckdb_thread_and_gives_the_count_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read ahead leaves the second core to the split (DuckDB's second thread cost CPU for no shorter wall
    time beside it); the connection's thread count is what it was once the close is done."""
    lake = _paying_synced_holders(tmp_path)
    seen: list[int] = []
    real = holders.holder_weight_units

    def noting_threads(connection, *args, **kwargs):
        seen.append(connection.execute("SELECT current_setting('threads')").fetchone()[0])
        return real(connection, *args, **kwargs)

    monkeypatch.setattr(holders, "holder_weight_units", noting_threads)
    with Ledger.open(str(lake)) as ledger:
        ledger.connection.execute("SET threads = 3")
        summary = close_epoch(ledger)
        (after,) = ledger.connection.execute("SELECT current_setting('threads')").fetchone()
    assert summary.epoch == 1 and not summary.noop
    assert seen == [1] and after == 3, (seen, after)


def test_a_duckdb_error_in_the_weights_read_is_the_error_the_close_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read's own error (here a failed cast, as a weight past HUGEINT would be) reaches the operator, not the
    aborted transaction's refusal to give the thread count back; nothing is written."""
    import duckdb

    lake = _paying_synced_holders(tmp_path)

    def failing(connection, *args, **kwargs):
        connection.execute("SELECT 'not a number'::HUGEINT").fetchall()

    monkeypatch.setattr(holders, "holder_weight_units", failing)
    with Ledger.open(str(lake)) as ledger, pytest.raises(Exception) as raised:
        close_epoch(ledger)
    assert "not a number" in str(raised.value) and "aborted" not in str(raised.value), raised.value
    assert isinstance(raised.value, duckdb.Error) or "not a number" in str(raised.value.__cause__ or raised.value)
    with Ledger.open_read_only(str(lake)) as ledger:
        assert ledger.connection.execute("SELECT count(*) FROM lake.main.settlement_epoch").fetchone() == (0,)
