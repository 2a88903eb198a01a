"""Exactly-once effect at the ledger boundary, as a property: whatever the batching, redelivery and crashes.

Hypothesis writes two partitions' logs (valid events, identical resends, conflicting resends, junk) and
a consumer's life: batches of any size read from the stored offsets, batches lost before their append
(a crash), and stale batches redelivered from before the stored offsets (a consumer that missed a
commit). The ledger must end holding each event id once, each bad message and each conflicting
resend once as a dead letter, and offsets at the end of each log: exactly what a single in-order pass
over the committed batches gives, and independent of how the batches fell.
"""

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.sample import SampleTraffic
from ledger import Ledger, LedgerOffsetsFencedError
from tests.ledger.helpers import batch_of

pool = list(SampleTraffic(seed=23).metered(24))


def _conflicting(value: bytes) -> bytes:
    event = json.loads(value)
    event["data"]["fee_micros"] += 1
    return json.dumps(event).encode()


def _other_source(value: bytes) -> bytes:
    """The same id from another producer, with another fee: another event, not a conflict."""
    event = json.loads(value)
    event["source"] = "//other-gateway.example"
    event["data"]["fee_micros"] += 7
    return json.dumps(event).encode()


message = st.one_of(
    st.sampled_from(range(len(pool))).map(lambda i: ("event", pool[i])),
    st.sampled_from(range(len(pool))).map(lambda i: ("conflict", _conflicting(pool[i]))),
    st.sampled_from(range(len(pool))).map(lambda i: ("other source", _other_source(pool[i]))),
    st.binary(max_size=12).map(lambda junk: ("junk", b"\xff" + junk)),
)
logs = st.lists(st.lists(message, min_size=1, max_size=30), min_size=2, max_size=2)
steps = st.lists(
    st.tuples(st.sampled_from(["append", "crash", "stale"]), st.integers(0, 1), st.integers(1, 12)), max_size=40
)


def _expected(committed: list[bytes]) -> tuple[dict[tuple[str, str], bytes], int, int]:
    """One in-order pass: the first content of a (source, id) is kept; an identical resend is a duplicate; a
    different one is a dead letter, as is junk."""
    kept: dict[tuple[str, str], bytes] = {}
    dead_letters = duplicates = 0
    for value in committed:
        if value.startswith(b"\xff"):
            dead_letters += 1
            continue
        event = json.loads(value)
        event_id = (event["source"], event["id"])
        if event_id not in kept:
            kept[event_id] = value
        elif kept[event_id] == value:
            duplicates += 1
        else:
            dead_letters += 1
    return kept, dead_letters, duplicates


@settings(max_examples=25)
@given(logs=logs, steps=steps)
def test_any_batching_crashes_and_redeliveries_store_each_message_exactly_once(
    logs: list[list[tuple[str, bytes]]], steps: list[tuple[str, int, int]]
) -> None:
    values = [[value for _, value in log] for log in logs]
    with tempfile.TemporaryDirectory() as directory, Ledger.open(Path(directory) / "lake") as ledger:
        committed: list[bytes] = []
        duplicates_reported = 0

        def append(partition: int, start: int, count: int) -> None:
            nonlocal duplicates_reported
            chunk = values[partition][start : start + count]
            result = ledger.append(*batch_of(chunk, partition=partition, first_offset=start))
            committed.extend(chunk)
            duplicates_reported += result.duplicates

        for action, partition, count in steps:
            stored = ledger.stored_offsets().get(("t", partition), 0)
            if stored >= len(values[partition]):
                continue
            if action == "append":
                append(partition, stored, count)
            elif action == "stale" and stored > 0:
                snapshot = ledger.current_snapshot()
                try:
                    ledger.append(
                        *batch_of(
                            values[partition][max(0, stored - count) : stored + 1],
                            partition=partition,
                            first_offset=max(0, stored - count),
                        )
                    )
                    raise AssertionError("a batch starting before the stored offset was appended")
                except LedgerOffsetsFencedError:
                    pass
                assert ledger.current_snapshot() == snapshot
            # "crash": the batch was read and lost before its append; the next read starts at the stored offset
        for partition in (0, 1):  # the consumer restarts and drains what is left
            stored = ledger.stored_offsets().get(("t", partition), 0)
            if stored < len(values[partition]):
                append(partition, stored, len(values[partition]) - stored)

        kept, dead_letters, duplicates = _expected(committed)
        rows = ledger.connection.execute(
            "SELECT source, event_id, fee_micros FROM lake.main.inference_metered"
        ).fetchall()
        assert sorted((source, event_id) for source, event_id, _ in rows) == sorted(kept)
        assert {(source, event_id): fee for source, event_id, fee in rows} == {
            key: json.loads(value)["data"]["fee_micros"] for key, value in kept.items()
        }
        (stored_dead_letters,) = ledger.connection.execute("SELECT count(*) FROM lake.main.dead_letter").fetchone()
        assert (stored_dead_letters, duplicates_reported) == (dead_letters, duplicates)
        assert ledger.stored_offsets() == {("t", p): len(values[p]) for p in (0, 1)}
