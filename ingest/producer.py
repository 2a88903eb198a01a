"""`royalty produce-sample`: realistic traffic with duplicates, conflicts and invalid messages."""

import dataclasses
import random
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import msgspec

from ingest.sample import SampleShape, SampleTraffic, conflicting_duplicate, invalid_message

_ppm = 1_000_000
_chunk = 10_000


def sample_messages(
    events: int,
    duplicates_ppm: int,
    conflicts_ppm: int,
    invalid_ppm: int,
    models: int,
    contributors: int,
    seed: int,
    provider_addresses: bool = False,
    timing: tuple[datetime, int] | None = None,
):
    """Yield (kind, message): registry events, then metering events with mistakes mixed in (`timing`: the
    first event's time and events a day, instead of the sample's fixed ones)."""
    shape = SampleShape(models=models, contributors=contributors, provider_addresses=provider_addresses)
    if timing is not None:
        shape = dataclasses.replace(shape, start=timing[0], events_per_day=timing[1])
    traffic = SampleTraffic(shape, seed=seed)
    rng = random.Random(seed + 1)
    for message in traffic.registry():
        yield "registry", message
    recent: list[bytes] = []
    for message in traffic.metered(events):
        yield "event", message
        recent.append(message)
        if len(recent) > 1_000:
            recent = recent[-500:]
        roll = rng.randrange(_ppm)
        if roll < duplicates_ppm:
            yield "duplicate", rng.choice(recent)
        elif roll < duplicates_ppm + conflicts_ppm:
            yield "conflict", conflicting_duplicate(rng.choice(recent))
        elif roll < duplicates_ppm + conflicts_ppm + invalid_ppm:
            yield "invalid", invalid_message(rng, message)


class _Identity(msgspec.Struct):
    id: str | None = None


def _event_key(message: bytes) -> bytes | None:
    try:
        event_id = msgspec.json.decode(message, type=_Identity).id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return event_id.encode() if event_id else None


def produce_sample_traffic(
    events: int,
    bootstrap_servers: str | None,
    topic: str,
    to_file: Path | None,
    duplicates_ppm: int = 10_000,
    conflicts_ppm: int = 1_000,
    invalid_ppm: int = 10_000,
    models: int = 20,
    contributors: int = 200,
    seed: int = 7,
    on_progress: Callable[[int], None] | None = None,
    provider_addresses: bool = False,
    timing: tuple[datetime, int] | None = None,
) -> dict[str, int]:
    """Write the sample to a JSON-lines file or a Kafka topic; return counts by kind (`provider_addresses`:
    compute providers named by address, as the on-chain registry mode pays them)."""
    counts = {"registry": 0, "event": 0, "duplicate": 0, "conflict": 0, "invalid": 0}
    messages = sample_messages(
        events, duplicates_ppm, conflicts_ppm, invalid_ppm, models, contributors, seed, provider_addresses, timing
    )
    if to_file is not None:
        with open(to_file, "wb") as handle:
            for kind, message in messages:
                # A JSON-lines file cannot hold a raw newline inside a message; such invalid
                # messages are written with it escaped, which keeps them invalid.
                handle.write(message.replace(b"\n", b"\\n") + b"\n")
                counts[kind] += 1
                if on_progress and kind == "event" and counts["event"] % _chunk == 0:
                    on_progress(counts["event"])
        return counts
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers.split(","),
        acks="all",
        linger_ms=20,
        batch_size=1024 * 1024,
        compression_type=None,
        max_request_size=8 * 1024 * 1024,
    )
    try:
        for kind, message in messages:
            # Keyed by event id, as gateways key them: an event and its resends share a
            # partition, so a resend is never read before the event it repeats.
            producer.send(topic, message, key=_event_key(message))
            counts[kind] += 1
            if on_progress and kind == "event" and counts["event"] % _chunk == 0:
                on_progress(counts["event"])
        producer.flush()
    finally:
        producer.close()
    return counts
