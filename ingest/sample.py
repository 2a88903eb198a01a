"""Realistic synthetic traffic: registry events that make it settleable, then paid calls.

Used by `royalty produce-sample`, the benchmarks and the tests. Deterministic for a seed.
Event ids are UUIDv7 (time-ordered), as modern gateways mint them; request ids are random.
Every event time is before now: ingest refuses times ahead of its clock (`time_in_future`).
"""

import json
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from eth_utils import keccak, to_checksum_address

from ingest.errors import IngestConfigError
from schemas import limits
from schemas.errors import require

_ppm = limits.ppm_total
# The CloudEvents source of the sample's metering events (its registry events come from //registry.example).
metered_source = "//gateway.example/eu-west-1"


@dataclass(frozen=True)
class SampleShape:
    """The population of a synthetic workload."""

    models: int = 20
    contributors: int = 200
    payers: int = 5_000
    compute_providers: int = 20
    derived_models_ppm: int = 200_000  # share of models derived from an earlier model
    asset: str = "USDC"
    start: datetime = datetime(2026, 11, 23, tzinfo=UTC)
    events_per_day: int = 1_000_000
    # On-chain registry mode: accounts are addresses, so metering events name the compute provider by one.
    provider_addresses: bool = False


def provider_address(index: int) -> str:
    """The address of sample compute provider `index` (derived from its id, so no draw of the generator)."""
    return to_checksum_address(keccak(text=f"gpu-{index:03d}")[:20])


def _utc_now() -> datetime:
    return datetime.now(UTC)


def uuid7(unix_ms: int, rng: random.Random) -> str:
    """A UUIDv7: 48 bits of milliseconds, version and variant bits, then random bits."""
    value = (unix_ms & (2**48 - 1)) << 80 | 0x7 << 76 | rng.getrandbits(12) << 64 | 0b10 << 62 | rng.getrandbits(62)
    return str(uuid.UUID(int=value))


def _envelope(event_type: str, event_id: str, time: datetime, data: dict, source: str) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": source,
            "type": event_type,
            "time": time.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": data,
        },
        separators=(",", ":"),
    ).encode()


class SampleTraffic:
    """A deterministic generator of registry and metering messages."""

    def __init__(
        self, shape: SampleShape = SampleShape(), seed: int = 7, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self.shape = shape
        self.clock = clock
        self.rng = random.Random(seed)
        self.model_ids = [f"model-{index:04d}" for index in range(shape.models)]
        self.contributor_ids = [f"contrib-{index:05d}" for index in range(shape.contributors)]
        self.parents: dict[str, list[str]] = {}
        self.sent: list[bytes] = []  # a window of recent messages to duplicate from

    def registry(self) -> Iterator[bytes]:
        """Contributors, models (some derived from earlier ones) and one policy per model."""
        shape, rng = self.shape, self.rng
        time = shape.start - timedelta(days=1)
        # Compute providers are paid like contributors, so they register payout addresses too.
        providers = [f"gpu-{index:03d}" for index in range(shape.compute_providers)]
        for contributor_id in [*self.contributor_ids, *providers]:
            address = to_checksum_address(rng.randbytes(20))
            yield _envelope(
                "ai.contributor.registered.v1",
                uuid7(int(time.timestamp() * 1000), rng),
                time,
                {"contributor_id": contributor_id, "payout_address": address},
                "//registry.example",
            )
        for index, model_id in enumerate(self.model_ids):
            parents = []
            if index and rng.randrange(_ppm) < shape.derived_models_ppm:
                parent = self.model_ids[rng.randrange(index)]
                parents = [{"model_id": parent, "share_ppm": rng.choice([50_000, 100_000, 200_000])}]
            self.parents[model_id] = [p["model_id"] for p in parents]
            yield _envelope(
                "ai.model.registered.v1",
                uuid7(int(time.timestamp() * 1000), rng),
                time,
                {"model_id": model_id, "parents": parents},
                "//registry.example",
            )
            yield _envelope(
                "ai.split-policy.set.v1",
                uuid7(int(time.timestamp() * 1000), rng),
                time,
                {
                    "model_id": model_id,
                    "effective_from": time.isoformat().replace("+00:00", "Z"),
                    "compute_share_ppm": rng.choice([100_000, 200_000, 300_000]),
                    "shares": self._shares(model_id, parents),
                },
                "//registry.example",
            )

    def _provider(self, index: int) -> str:
        return provider_address(index) if self.shape.provider_addresses else f"gpu-{index:03d}"

    def _shares(self, model_id: str, parents: list[dict]) -> list[dict]:
        recipients = self.rng.sample(self.contributor_ids, k=min(len(self.contributor_ids), self.rng.randint(1, 5)))
        shares = [{"recipient": f"model:{p['model_id']}", "share_ppm": p["share_ppm"]} for p in parents]
        remaining = _ppm - sum(share["share_ppm"] for share in shares)
        cuts = sorted(self.rng.sample(range(1, remaining), k=len(recipients) - 1)) if len(recipients) > 1 else []
        bounds = [0, *cuts, remaining]
        shares += [
            {"recipient": recipient, "share_ppm": bounds[i + 1] - bounds[i]} for i, recipient in enumerate(recipients)
        ]
        require(sum(share["share_ppm"] for share in shares) == _ppm, "sample policy shares sum to 1,000,000 ppm")
        return shares

    def metered(self, count: int, first_index: int = 0) -> Iterator[bytes]:
        """`count` paid inference calls, spread evenly over days of `events_per_day`."""
        shape, rng = self.shape, self.rng
        step_us = 86_400_000_000 // shape.events_per_day
        last = shape.start + timedelta(microseconds=(first_index + count) * step_us)
        now = self.clock()
        if count and last > now:
            raise IngestConfigError(
                f"{count:,} sample events from index {first_index:,} at {shape.events_per_day:,} a day from "
                f"{shape.start.date()} would reach {last.isoformat()}, after now ({now.isoformat()}), and ingest "
                "refuses event times ahead of its clock; ask for fewer events or more events a day"
            )
        for index in range(first_index, first_index + count):
            time = shape.start + timedelta(microseconds=index * step_us + rng.randrange(step_us))
            input_tokens = rng.randrange(20, 4_000)
            output_tokens = rng.randrange(1, 1_500)
            yield _envelope(
                "ai.inference.metered.v1",
                uuid7(int(time.timestamp() * 1000), rng),
                time,
                {
                    "model_id": self.model_ids[int(rng.paretovariate(1.2)) % len(self.model_ids)],
                    "request_id": f"req_{rng.getrandbits(64):016x}",
                    "payer": f"org-{rng.randrange(shape.payers):05d}",
                    "compute_provider": self._provider(rng.randrange(shape.compute_providers)),
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "fee_micros": input_tokens * 3 + output_tokens * 15 + rng.randrange(0, 100),
                    "asset": shape.asset,
                },
                metered_source,
            )


def invalid_message(rng: random.Random, valid: bytes) -> bytes:
    """One realistic bad message: broken JSON, a schema violation, or an unknown type."""
    kind = rng.randrange(6)
    if kind == 0:
        return valid[: rng.randrange(1, len(valid) - 1)]  # truncated
    if kind == 1:
        return valid.replace(b'"fee_micros":', b'"fee_micros":-', 1)  # negative fee
    if kind == 2:
        return valid.replace(b'"type":"ai.inference.metered.v1"', b'"type":"ai.inference.metred.v1"', 1)
    if kind == 3:
        return valid.replace(b'Z","datacontenttype"', b'","datacontenttype"', 1)  # time without a zone
    if kind == 4:
        return b"\xff\xfe not utf-8 \x00"
    return valid.replace(b'"asset":', b'"unexpected":1,"asset":', 1)  # unknown field


def conflicting_duplicate(valid: bytes) -> bytes:
    """The same event id with different content (a higher fee)."""
    event = json.loads(valid)
    event["data"]["fee_micros"] += 1
    return json.dumps(event, separators=(",", ":")).encode()
