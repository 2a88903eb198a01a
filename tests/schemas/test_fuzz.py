"""Hostile input to the batch decoder: it never crashes, and accounts for every message with a reason."""

import json
import os
import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.sample import SampleTraffic
from ledger import Ledger
from schemas import BatchDecoder
from schemas.limits import message_bytes_max
from tests.ledger.helpers import batch_of
from tests.strategies import encode, valid_event

# Batches of 1,000 hostile messages: 100 (100,000 messages) in CI; a nightly run sets e.g.
# ROYALTY_FUZZ_BATCHES=10000 (10 million messages, about an hour on this machine).
fuzz_batches = int(os.environ.get("ROYALTY_FUZZ_BATCHES", "100"))

decoder = BatchDecoder()
_seed_events = [json.loads(value) for value in SampleTraffic().registry()] + [
    json.loads(value) for value in SampleTraffic(seed=3).metered(200)
]
_nasty_values = [
    None,
    True,
    0,
    -1,
    2**63,
    -(2**63) - 1,
    10**40,
    1.5,
    float("nan"),
    float("inf"),
    -float("inf"),
    "",
    "\u0000",
    "\ud7ff\ue000",
    "é\u200b",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "x" * 300,
    [],
    {},
    [1, [2, [3]]],
    {"a": {"b": {}}},
    "2026-11-24T00:00:00",
    "2026-13-45T99:99:99Z",
    "0x" + "g" * 40,
    "model:m",
    "1e3",
]


def _hostile(rng: random.Random) -> bytes:
    """One hostile message made from a real event: truncated, bit-flipped, re-typed, nested, huge or spliced."""
    event = json.loads(json.dumps(rng.choice(_seed_events)))
    raw = json.dumps(event).encode()
    kind = rng.randrange(10)
    if kind == 0:
        return raw[: rng.randrange(len(raw))]
    if kind == 1:
        flipped = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        return bytes(flipped)
    if kind == 2:
        target = event["data"] if rng.random() < 0.7 else event
        target[rng.choice(sorted(target))] = rng.choice(_nasty_values)
        return json.dumps(event, allow_nan=True).encode()
    if kind == 3:
        depth = rng.randint(1, 5000)
        return b'{"data":' * depth + b"1" + b"}" * depth
    if kind == 4:
        return b'{"id":"' + b"x" * (message_bytes_max + rng.randint(1, 1000)) + b'"}'
    if kind == 5:
        event["data"][rng.choice(sorted(event["data"]))] = rng.choice(_nasty_values)
        return json.dumps(event, ensure_ascii=False, allow_nan=True).encode("utf-8", errors="surrogatepass")
    if kind == 6:
        return raw + rng.choice([b"}", b",", b" {}", b"\x00", b"\n{}"])
    if kind == 7:
        return rng.randbytes(rng.randrange(0, 600))
    if kind == 8:
        event[rng.choice(["extra", "subject", "Data"])] = 1
        return json.dumps(event).encode()
    return raw  # a valid event, duplicated freely


@settings(max_examples=fuzz_batches)
@given(st.randoms(use_true_random=False))
def test_a_hundred_thousand_fuzzed_messages_never_crash_and_are_all_accounted_for(rng: random.Random) -> None:
    """100 batches of 1,000 hostile messages: each message is kept or rejected with a specific reason."""
    values = [_hostile(rng) for _ in range(1_000)]
    batch = decoder.decode(values)
    kept = [i for table in batch.tables.values() for i in table.column("message_index").to_pylist()]
    rejected = [rejection.index for rejection in batch.rejections]
    assert sorted(kept + rejected) == list(range(len(values)))
    for rejection in batch.rejections:
        assert rejection.error.reason and rejection.error.reason != "Value error"


@settings(max_examples=30)
@given(st.lists(valid_event(), min_size=1, max_size=10), st.binary(max_size=200))
def test_arbitrary_bytes_beside_valid_events_leave_the_valid_ones_alone(events: list[dict], junk: bytes) -> None:
    """Arbitrary bytes placed among generated valid events are rejected without disturbing them."""
    values = [encode(event) for event in events]
    values.insert(len(values) // 2, junk)
    batch = decoder.decode(values)
    kept = sorted(i for table in batch.tables.values() for i in table.column("message_index").to_pylist())
    junk_index = len(events) // 2
    assert [i for i in kept if i != junk_index] == [i for i in range(len(values)) if i != junk_index]


def test_fuzzed_batches_appended_to_a_ledger_land_every_message_as_an_event_a_duplicate_or_a_dead_letter(
    tmp_path: Path,
) -> None:
    """Ten appends of 1,000 hostile messages: the ledger's events, duplicates dropped and dead letters (each with
    a reason and a stored reason_code) add up to every message sent, with nothing silently dropped."""
    rng = random.Random(7)
    sent = duplicates = 0
    with Ledger.open(tmp_path / "lake") as ledger:
        for batch_number in range(10):
            values = [_hostile(rng) for _ in range(1_000)]
            result = ledger.append(*batch_of(values, first_offset=batch_number * 1_000))
            sent += len(values)
            duplicates += result.duplicates
        counts = ledger.connection.execute(
            """SELECT (SELECT count(*) FROM lake.main.inference_metered)
                    + (SELECT count(*) FROM lake.main.inference_reversed)
                    + (SELECT count(*) FROM lake.main.contributor_registered)
                    + (SELECT count(*) FROM lake.main.model_registered)
                    + (SELECT count(*) FROM lake.main.split_policy_set),
                      (SELECT count(*) FROM lake.main.dead_letter),
                      (SELECT count(*) FROM lake.main.dead_letter WHERE coalesce(reason, '') = ''),
                      (SELECT count(*) FROM lake.main.dead_letter WHERE reason_code IS NULL)"""
        ).fetchone()
    events, dead_letters, without_reason, without_code = counts
    assert events + duplicates + dead_letters == sent
    assert dead_letters > 0 and events > 0 and without_reason == 0 and without_code == 0
