"""The producer contract: what the batch decoder accepts, rejects, and how it explains."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.sample import SampleTraffic
from schemas import BatchDecoder, event_types
from schemas.limits import message_bytes_max
from tests.conftest import examples
from tests.strategies import encode, event_type_names, utc, valid_event

decoder = BatchDecoder()


def _mutations() -> list[tuple[str, str, object]]:
    """(event type, dotted field path, invalid value); the path is what the error must name."""
    metered, policy = "ai.inference.metered.v1", "ai.split-policy.set.v1"
    return [
        (metered, "data.fee_micros", 0),
        (metered, "data.fee_micros", -5),
        (metered, "data.fee_micros", "100"),
        (metered, "data.fee_micros", 1.5),
        (metered, "data.fee_micros", True),
        (metered, "data.fee_micros", 10**13),
        (metered, "data.input_tokens", -1),
        (metered, "data.model_id", ""),
        (metered, "data.model_id", "model:x"),
        (metered, "data.model_id", "m1\n"),
        (metered, "data.payer", None),
        (metered, "data.unexpected", 1),
        (metered, "time", "2026-11-24T01:00:00"),
        (metered, "time", "1999-12-31T23:00:00Z"),
        (metered, "time", "yesterday"),
        (metered, "specversion", "0.3"),
        (metered, "extension", "x"),
        (metered, "id", ""),
        (metered, "id", "\u0000"),
        (metered, "id", "ev-1\n"),
        (metered, "source", "//gateway\u007f"),
        (metered, "datacontenttype", "text/plain"),
        ("ai.contributor.registered.v1", "data.payout_address", "0x52908400098527886e0f7030069857d2e4169ee7"),
        ("ai.contributor.registered.v1", "data.payout_address", "0x1234"),
        ("ai.inference.reversed.v1", "data.reason", "because"),
        (policy, "data.compute_share_ppm", 1_000_001),
        (policy, "data.shares", []),
    ]


def _set(event: dict, path: str, value: object) -> dict:
    parts = path.split(".")
    target = event
    for part in parts[:-1]:
        target = target[part]
    target[parts[-1]] = value
    return event


@settings(max_examples=examples(100))
@given(st.lists(valid_event(), min_size=1, max_size=20))
def test_every_valid_event_decodes_to_the_values_it_was_sent_with(events: list[dict]) -> None:
    """Generated valid events of every type decode with each field unchanged (times in UTC)."""
    batch = decoder.decode([encode(event) for event in events])
    assert batch.rejections == []
    rows = {
        row["message_index"]: row for table in batch.tables.values() for row in table.to_pylist()
    }
    assert sorted(rows) == list(range(len(events)))
    for index, event in enumerate(events):
        row = rows[index]
        assert row["event_id"] == event["id"]
        assert row["event_time"] == utc(event["time"])
        assert row["event_date"] == utc(event["time"]).date()
        assert row["source"] == event["source"]
        for name, value in event["data"].items():
            assert row[name] == (utc(value) if name == "effective_from" else value), name


@pytest.mark.parametrize(("event_type", "path", "value"), _mutations())
@settings(max_examples=10)
@given(data=st.data())
def test_an_invalid_field_is_rejected_with_its_name(event_type: str, path: str, value: object, data) -> None:
    """Each kind of contract violation, put into a generated event, is rejected naming that field."""
    event = _set(data.draw(valid_event(event_type)), path, value)
    batch = decoder.decode([encode(event)])
    assert batch.valid_count == 0
    (rejection,) = batch.rejections
    assert rejection.error.field == path, str(rejection.error)
    assert rejection.error.reason


def test_shares_that_do_not_sum_to_a_million_are_rejected() -> None:
    """A policy whose shares sum to 999,999 ppm is rejected, naming the sum."""
    event = {
        "specversion": "1.0", "id": "p1", "source": "//r", "type": "ai.split-policy.set.v1",
        "time": "2026-11-24T00:00:00Z",
        "data": {"model_id": "m", "effective_from": "2026-11-24T00:00:00Z", "compute_share_ppm": 0,
                 "shares": [{"recipient": "a", "share_ppm": 500_000}, {"recipient": "b", "share_ppm": 499_999}]},
    }
    (rejection,) = decoder.decode([json.dumps(event).encode()]).rejections
    assert rejection.error.field == "data"
    assert "999999" in rejection.error.reason


def test_whole_message_problems_are_explained() -> None:
    """Bytes that are not UTF-8, not JSON, not an object, too large or of an unknown type are explained."""
    values = [b"\xff\xfe", b"{not json", b"[1, 2]", b" " * (message_bytes_max + 1),
              json.dumps({"type": "ai.unknown.v1"}).encode()]
    reasons = [str(r.error) for r in decoder.decode(values).rejections]
    assert "not UTF-8" in reasons[0]
    assert "invalid JSON" in reasons[1]
    assert "object" in reasons[2]
    assert "over the limit" in reasons[3]
    assert "unknown event type" in reasons[4] and "ai.inference.metered.v1" in reasons[4]


def test_a_record_without_a_value_is_rejected_and_the_rest_of_the_batch_kept() -> None:
    """A Kafka tombstone (null value) is a bad message, not a crash."""
    valid = next(iter(SampleTraffic().metered(1)))
    batch = decoder.decode([None, valid, None])
    assert batch.valid_count == 1
    assert [rejection.index for rejection in batch.rejections] == [0, 2]
    assert all("no value" in str(rejection.error) for rejection in batch.rejections)
    assert "tombstone" in str(decoder.explain(None))


@given(st.lists(st.tuples(valid_event(), st.booleans(), st.sampled_from(_mutations())), min_size=1, max_size=30))
def test_a_mixed_batch_keeps_every_valid_event(items) -> None:
    """Valid and invalid events interleaved: every valid one is kept, every invalid one rejected, none lost."""
    values, valid_indexes = [], set()
    for index, (event, keep_valid, (event_type, path, value)) in enumerate(items):
        if keep_valid or event["type"] != event_type:
            valid_indexes.add(index)
        else:
            event = _set(event, path, value)
        values.append(encode(event))
    batch = decoder.decode(values)
    kept = {i for table in batch.tables.values() for i in table.column("message_index").to_pylist()}
    rejected = {rejection.index for rejection in batch.rejections}
    assert kept == valid_indexes
    assert rejected == set(range(len(values))) - valid_indexes


@given(st.sampled_from(event_type_names).flatmap(valid_event), st.sampled_from(_mutations()), st.booleans())
def test_the_fast_decoder_agrees_with_pydantic(event: dict, mutation, mutate: bool) -> None:
    """The derived msgspec decoder accepts exactly what the pydantic models accept."""
    event_type, path, value = mutation
    if mutate and event["type"] == event_type:
        event = _set(event, path, value)
    raw = encode(event)
    model = event_types[event["type"]].envelope_model
    try:
        model.model_validate_json(raw)
        pydantic_accepts = True
    except ValueError:
        pydantic_accepts = False
    assert (decoder.decode([raw]).valid_count == 1) == pydantic_accepts
