"""An envelope `time` far ahead of the ingest clock is refused (`time_in_future`); `effective_from` is not bounded.

Before, a registration dated 9999 was stored and, since producer time ordered registry records, outranked
every later legitimate one. The clock is injected, never the global datetime patched.
"""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ingest.errors import IngestConfigError
from ingest.sample import SampleShape, SampleTraffic
from ingest.service import IngestService
from ledger import Ledger
from royalty.config import ConfigError, load_settings
from schemas import BatchDecoder, limits
from schemas.decoder import time_in_future_code
from tests.ledger.helpers import batch_of
from tests.strategies import times_max

now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _event(event_type: str, time: datetime | str, data: dict, event_id: str = "e-1") -> bytes:
    text = time if isinstance(time, str) else time.isoformat().replace("+00:00", "Z")
    return json.dumps(
        {"specversion": "1.0", "id": event_id, "source": "//registry", "type": event_type, "time": text, "data": data}
    ).encode()


def _registration(time: datetime | str, event_id: str = "c-1") -> bytes:
    data = {"contributor_id": "alice", "payout_address": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"}
    return _event("ai.contributor.registered.v1", time, data, event_id)


def test_a_registration_dated_9999_is_a_dead_letter_and_a_current_one_is_stored(tmp_path: Path) -> None:
    """Pins the scenario of the issue on a real ledger: the 9999 record never enters; today's does."""
    decoder = BatchDecoder(clock=lambda: now)
    values = [_registration("9999-12-31T23:59:59Z", "c-future"), _registration(now - timedelta(seconds=5), "c-now")]
    with Ledger.open(tmp_path / "lake") as ledger:
        result = ledger.append(*batch_of(values, decoder=decoder))
        assert (result.events, result.dead_letters) == (1, 1)
        (reason, field, event_id) = ledger.connection.execute(
            "SELECT reason, error_field, event_id FROM lake.main.dead_letter"
        ).fetchone()
        (stored,) = ledger.connection.execute("SELECT event_id FROM lake.main.contributor_registered").fetchone()
    assert time_in_future_code in reason and "event_time_future_s_max=300" in reason
    assert (field, event_id, stored) == ("time", "c-future", "c-now")


@pytest.mark.parametrize("use_native", [True, False], ids=["native", "python"])
def test_the_limit_follows_the_setting_and_the_injected_clock(use_native: bool) -> None:
    """Pins the bound: `event_time_future_s_max` seconds ahead of the clock is kept, a microsecond more is not."""
    decoder = BatchDecoder(use_native=use_native, event_time_future_s_max=60, clock=lambda: now)
    at, past = now + timedelta(seconds=60), now + timedelta(seconds=60, microseconds=1)
    batch = decoder.decode([_registration(at, "c-at"), _registration(past, "c-past")])
    assert batch.valid_count == 1
    (rejection,) = batch.rejections
    assert rejection.index == 1 and rejection.error.reason.startswith(time_in_future_code)
    later = BatchDecoder(use_native=use_native, event_time_future_s_max=60, clock=lambda: now + timedelta(seconds=1))
    assert later.decode([_registration(past)]).valid_count == 1


def test_a_policy_may_take_effect_in_the_future() -> None:
    """Pins what is not bounded: a policy sent now, effective in 2099, is accepted."""
    data = {
        "model_id": "m",
        "effective_from": "2099-01-01T00:00:00Z",
        "compute_share_ppm": 0,
        "shares": [{"recipient": "alice", "share_ppm": limits.ppm_total}],
    }
    batch = BatchDecoder(clock=lambda: now).decode([_event("ai.split-policy.set.v1", now, data)])
    assert (batch.valid_count, batch.rejections) == (1, [])


def test_the_setting_has_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins the setting: default 300 s, from the environment, refused outside 1 s .. 7 days."""
    assert load_settings().event_time_future_s_max == limits.event_time_future_s_max_default == 300
    monkeypatch.setenv("ROYALTY_EVENT_TIME_FUTURE_S_MAX", "60")
    assert load_settings().event_time_future_s_max == 60
    for bad in ("0", str(limits.event_time_future_s_max_limit + 1)):
        monkeypatch.setenv("ROYALTY_EVENT_TIME_FUTURE_S_MAX", bad)
        with pytest.raises(ConfigError, match="event_time_future_s_max"):
            load_settings()


def test_the_ingest_service_checks_times_with_its_setting_and_clock(tmp_path: Path) -> None:
    """Pins the wiring: the service's decoder uses the configured bound and the clock it was given."""
    with Ledger.open(tmp_path / "lake") as ledger:
        service = IngestService(
            ledger, lambda owner: None, "USDC", 10, 10, "test", event_time_future_s_max=60, clock=lambda: now
        )
        batch = service.decoder.decode([_registration(now + timedelta(seconds=61))])
    assert batch.valid_count == 0 and batch.rejections[0].error.reason.startswith(time_in_future_code)


def test_the_sample_generator_never_dates_an_event_after_now() -> None:
    """Pins the generator: traffic that would reach past the clock is refused, saying what to change."""
    shape = SampleShape(start=datetime(2026, 11, 23, tzinfo=UTC), events_per_day=1_000)
    traffic = SampleTraffic(shape, clock=lambda: datetime(2026, 11, 24, tzinfo=UTC))
    assert len(list(traffic.metered(1_000))) == 1_000
    with pytest.raises(IngestConfigError, match=r"after now.*fewer events or more events a day"):
        list(traffic.metered(1, first_index=1_000))


def test_generated_test_times_are_before_now() -> None:
    """Pins the strategies' bound: their latest time, in the most negative offset, is still in the past."""
    assert times_max + timedelta(hours=5, minutes=30) < datetime.now(UTC).replace(tzinfo=None)
