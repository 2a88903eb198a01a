"""An event is paid once, whatever its copies: a producer's resend with another event time passes ingest's duplicate
probe (it looks for copies at the same event time), so settlement must drop it, in a later epoch too, and a reversal
must take back the copy that was paid."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger import Ledger
from ledger.verify import verify
from settlement import close_epoch
from settlement.exceptions import UnreconciledLedgerError
from settlement.input_checks import InputChecks
from tests.ledger.helpers import batch_of

start = datetime(2026, 12, 1, tzinfo=UTC)
alice = "0x" + "11" * 20


def _event(event_type: str, event_id: str, data: dict, at: datetime, source: str) -> bytes:
    envelope = {"specversion": "1.0", "id": event_id, "source": source, "type": event_type}
    return json.dumps({**envelope, "time": at.isoformat().replace("+00:00", "Z"), "data": data}).encode()


def _registry() -> list[bytes]:
    policy = {
        "model_id": "m", "effective_from": start.isoformat().replace("+00:00", "Z"), "compute_share_ppm": 0,
        "shares": [{"recipient": "alice", "share_ppm": 1_000_000}],
    }  # fmt: skip
    return [
        _event("ai.contributor.registered.v1", "reg-alice", {"contributor_id": "alice", "payout_address": alice},
               start, "//registry"),
        _event("ai.model.registered.v1", "reg-m", {"model_id": "m", "parents": []}, start, "//registry"),
        _event("ai.split-policy.set.v1", "pol-m", policy, start, "//registry"),
    ]  # fmt: skip


def _metered(event_id: str, hours: int, fee_micros: int) -> bytes:
    data = {
        "model_id": "m", "payer": "org-1", "compute_provider": "gpu-1", "input_tokens": 1, "output_tokens": 1,
        "fee_micros": fee_micros, "asset": "USDC", "request_id": f"r-{event_id}",
    }  # fmt: skip
    return _event("ai.inference.metered.v1", event_id, data, start + timedelta(hours=hours), "//gw")


def _refund(event_id: str, original: str, hours: int) -> bytes:
    data = {"original_event_id": original, "reason": "refund"}
    return _event("ai.inference.reversed.v1", event_id, data, start + timedelta(hours=hours), "//gw")


class _Feed:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger, self.offset = ledger, 0

    def send(self, *values: bytes) -> None:
        self.ledger.append(*batch_of(list(values), first_offset=self.offset))
        self.offset += len(values)


def _paid_micros(ledger: Ledger) -> dict[int, int]:
    sql = "SELECT epoch, sum(amount_micros) FROM lake.main.settlement_payable GROUP BY 1"
    return {epoch: int(amount) for epoch, amount in ledger.connection.execute(sql).fetchall()}


@pytest.mark.parametrize("from_rollups", [False, True], ids=["events", "rollups"])
def test_an_event_resent_with_another_time_in_a_later_epoch_is_not_paid_again(
    tmp_path: Path, from_rollups: bool
) -> None:
    with Ledger.open(tmp_path / "lake") as ledger:
        feed = _Feed(ledger)
        feed.send(*_registry(), _metered("ev-1", 1, 1_000), _metered("ev-2", 1, 500))
        assert close_epoch(ledger, from_rollups=from_rollups).epoch == 1
        # The resend (another event time, so stored: ingest probes by time) and one new event.
        feed.send(_metered("ev-1", 5, 1_000), _metered("ev-3", 5, 70))
        second = close_epoch(ledger, from_rollups=from_rollups)
        assert second.epoch == 2
        assert _paid_micros(ledger) == {1: 1_500, 2: 70}  # was {1: 1_500, 2: 1_070}: ev-1 paid twice
        # From rollups: the append's key group (ev-1 .. ev-3) meets epoch 1's ids, so its one cell is read from the
        # events (the whole epoch was, before session 9).
        assert second.rollup_cells == ((0, 1) if from_rollups else None)
        assert verify(ledger).ok


def test_a_reversal_of_an_event_stored_twice_with_different_fees_takes_back_what_was_paid(tmp_path: Path) -> None:
    """Two copies of ev-1 in one epoch: the epoch pays the least in column order (the earlier event time, fee 400); a
    later refund must take back those 400, not the first-stored copy's 900 (which broke conservation: close-epoch
    stopped)."""
    with Ledger.open(tmp_path / "lake") as ledger:
        feed = _Feed(ledger)
        feed.send(*_registry(), _metered("ev-1", 2, 900))
        feed.send(_metered("ev-1", 1, 400))  # an earlier time, alone: ingest's probe (by time) does not see the copy
        feed.send(_metered("ev-2", 3, 50))
        assert close_epoch(ledger).epoch == 1
        assert _paid_micros(ledger) == {1: 450}
        feed.send(_refund("rf-1", "ev-1", 6))
        # The stored copy shows in epoch 1's reconciliation (events_vs_epoch): the operator looks, then accepts it.
        with pytest.raises(UnreconciledLedgerError, match="events_vs_epoch in epoch 1"):
            close_epoch(ledger)
        second = close_epoch(ledger, checks=InputChecks(accept_unreconciled=True))
        assert (second.epoch, second.reversal_count, second.reversed_micros) == (2, 1, 400)
        assert second.receivable_micros == 400  # alice was paid 450 before the refund: she owes the 400 back
        assert verify(ledger).ok


def _taken_back(tmp_path: Path, name: str, refund_batches: list[list[bytes]]) -> tuple[int, int]:
    """(reversed micros of epoch 2, snapshots the refunds took) after ev-1 (900) and ev-2 (400) settle in epoch 1 and
    the refund batches arrive (one append each) in epoch 2."""
    with Ledger.open(tmp_path / name) as ledger:
        feed = _Feed(ledger)
        feed.send(*_registry(), _metered("ev-1", 1, 900), _metered("ev-2", 1, 400))
        assert close_epoch(ledger).epoch == 1
        for batch in refund_batches:
            feed.send(*batch)
        second = close_epoch(ledger)
        assert (second.epoch, second.reversal_count) == (2, 1)
        return second.reversed_micros


def test_a_reversal_id_stored_twice_naming_two_originals_takes_back_the_same_one_whatever_the_batching(
    tmp_path: Path,
) -> None:
    """A refund id resent with another event time and another original (ingest stores it: its probe looks by time)
    is one reversal: the copy that sorts first by column (the earlier time), as for metered events, whatever the
    batching. Before, the first copy in data-file path order won: sent in one append it took back ev-1 (900), sent in
    two appends (the later time first) it took back ev-2 (400)."""
    early, late = _refund("rf-1", "ev-1", 6), _refund("rf-1", "ev-2", 7)
    one_append = _taken_back(tmp_path, "one", [[early, late]])
    two_appends = _taken_back(tmp_path, "two", [[late], [early]])
    assert one_append == two_appends == 900  # two appends took back 400 before


def test_a_reversal_applied_in_one_epoch_and_resent_naming_another_original_is_not_applied_again(
    tmp_path: Path,
) -> None:
    """rf-1 takes back ev-1 (900) in epoch 2; a copy of rf-1 with another event time naming ev-2 arrives in epoch 3
    (stored: ingest's probe looks by time). One reversal id is applied once: the copy is a dead letter. Before, it
    took back ev-2's 400 as well."""
    with Ledger.open(tmp_path / "lake") as ledger:
        feed = _Feed(ledger)
        feed.send(*_registry(), _metered("ev-1", 1, 900), _metered("ev-2", 1, 400))
        assert close_epoch(ledger).epoch == 1
        feed.send(_refund("rf-1", "ev-1", 6))
        assert close_epoch(ledger).reversed_micros == 900
        feed.send(_refund("rf-1", "ev-2", 9))
        third = close_epoch(ledger)
        assert (third.epoch, third.reversal_count, third.dead_letter_count) == (3, 1, 1)
        assert third.reversed_micros == 0  # was 400
        (reason,) = ledger.connection.execute(
            "SELECT reason FROM lake.main.dead_letter WHERE event_id = 'rf-1'"
        ).fetchone()
        assert "applied in epoch 2" in reason
        assert verify(ledger).ok


def _opened_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every data file polars is asked to scan from now on (the events path's and the rollup path's readers; not the
    reconciliation's one read of each file after its epoch closed, `recorder.row_counts_and_sums`)."""
    from ledger import recorder

    opened: list[str] = []
    scan = recorder.scan_parquet

    def recording(paths: list[str], **options: object):
        opened.extend(paths)
        return scan(paths, **options)

    monkeypatch.setattr(recorder, "scan_parquet", recording)
    return opened


@pytest.mark.parametrize("from_rollups", [False, True], ids=["events", "rollups"])
def test_earlier_epochs_files_whose_ids_miss_the_new_ones_are_not_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, from_rollups: bool
) -> None:
    """The check for events an earlier epoch stored opens only the earlier files whose recorded id bounds reach the new
    ids (the catalog's per-file statistics): none when ids grow with arrival, whatever the ledger's age (it opened every
    earlier file before). A resend of an epoch-2 id opens epoch 2's file, not epoch 1's, and is still not paid again; a
    resend of an epoch-1 id among new ids opens epoch 1's file alone (the rollup path reads the resend's cell from
    its events and checks those ids alike)."""
    from ledger import recorder

    with Ledger.open(tmp_path / "lake") as ledger:
        feed = _Feed(ledger)
        feed.send(*_registry(), _metered("ev-1", 1, 1_000), _metered("ev-2", 1, 500))
        close_epoch(ledger, from_rollups=from_rollups)
        first = set(recorder.files_as_of(ledger.connection, "inference_metered", ledger.current_snapshot())["path"])
        feed.send(_metered("ev-3", 2, 70))
        opened = _opened_paths(monkeypatch)
        second = close_epoch(ledger, from_rollups=from_rollups)
        assert not first & set(opened), opened  # epoch 1's ids all lie below ev-3: its file is never opened
        assert second.rollup_cells == ((1, 0) if from_rollups else None)  # closed from rollups: no earlier id met
        both = set(recorder.files_as_of(ledger.connection, "inference_metered", ledger.current_snapshot())["path"])
        feed.send(_metered("ev-3", 6, 70), _metered("ev-4", 6, 9))  # ev-3 again, at another time
        opened.clear()
        close_epoch(ledger, from_rollups=from_rollups)
        assert not first & set(opened) and both - first <= set(opened), opened
        assert _paid_micros(ledger) == {1: 1_500, 2: 70, 3: 9}
        # ev-1 again among ids above every earlier one: the events path matches each earlier file's bounds against
        # the new ids not above them (ev-1 alone), so epochs 2 and 3's files (ev-3 .. ev-4) stay closed too.
        feed.send(_metered("ev-1", 7, 1_000), _metered("ev-5", 7, 3))
        opened.clear()
        # (epoch 3's dropped copy of ev-3 shows in its reconciliation, events_vs_epoch: accepted here)
        close_epoch(ledger, from_rollups=from_rollups, checks=InputChecks(accept_unreconciled=True))
        assert first <= set(opened) and not (both - first) & set(opened), opened
        assert _paid_micros(ledger) == {1: 1_500, 2: 70, 3: 9, 4: 3}
