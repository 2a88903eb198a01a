"""Hostile input to the batch decoder: it never crashes, and accounts for every message with a reason."""

import os
import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import Ledger
from schemas import BatchDecoder
from tests.conftest import depth, other_python
from tests.ledger.helpers import batch_of
from tests.strategies import encode, valid_event
from tests.support.hostile import hostile_message

# Batches of 1,000 hostile messages: 15 (15,000 messages) in CI, 100 nightly; a deeper run sets e.g.
# ROYALTY_FUZZ_BATCHES=10000 (10 million messages, about an hour on this machine).
fuzz_batches = int(os.environ.get("ROYALTY_FUZZ_BATCHES", str(depth(15, 100))))

decoder = BatchDecoder()


@settings(max_examples=fuzz_batches)
@given(st.randoms(use_true_random=False))
def test_batches_of_fuzzed_messages_never_crash_and_are_all_accounted_for(rng: random.Random) -> None:
    """Batches of 1,000 hostile messages: each message is kept or rejected with a specific reason."""
    values = [hostile_message(rng) for _ in range(1_000)]
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
    """Ten appends of 1,000 hostile messages (three on the other Pythons): the ledger's events, duplicates dropped
    and dead letters (each with a reason and a stored reason_code) add up to every message sent, with nothing
    silently dropped."""
    rng = random.Random(7)
    sent = duplicates = 0
    with Ledger.open(tmp_path / "lake") as ledger:
        for batch_number in range(3 if other_python else 10):
            values = [hostile_message(rng) for _ in range(1_000)]
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
