"""Hostile messages made from real events (truncated, bit-flipped, re-typed, nested, huge, spliced), shared by
the decoder's fuzz tests and the dead-letter reason-code tests."""

import json
import random

from ingest.sample import SampleTraffic
from schemas.limits import message_bytes_max

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


def hostile_message(rng: random.Random) -> bytes:
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
