"""Hypothesis strategies for valid events of every type, generated independently of the decoder."""

import json
from datetime import UTC, datetime, timedelta, timezone

from eth_utils import to_checksum_address
from hypothesis import strategies as st

from schemas import limits

identifier = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._@/+-]{0,40}\Z", fullmatch=True)
event_id = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=64)
source = st.from_regex(r"\A//[a-z0-9.-]{1,20}/[a-z0-9-]{0,10}\Z", fullmatch=True)
offsets = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))])
# Before now (a day of margin covers the -05:30 offset): ingest refuses times ahead of its clock.
times_max = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
times = st.datetimes(min_value=datetime(2000, 1, 2), max_value=times_max, timezones=offsets)
address = st.binary(min_size=20, max_size=20).map(to_checksum_address)
# A payout address may be any address but the zero one (tokens claimed for it are lost: refused as field_invalid).
payout_address = st.binary(min_size=20, max_size=20).filter(any).map(to_checksum_address)
ppm = limits.ppm_total


def iso(time: datetime) -> str:
    return time.isoformat()


@st.composite
def shares(draw: st.DrawFn, model_id: str) -> list[dict]:
    recipients = draw(st.lists(identifier, min_size=1, max_size=6, unique=True))
    cuts = sorted(draw(st.lists(st.integers(1, ppm - 1), min_size=len(recipients) - 1,
                                max_size=len(recipients) - 1, unique=True)))
    bounds = [0, *cuts, ppm]
    return [{"recipient": r, "share_ppm": bounds[i + 1] - bounds[i]} for i, r in enumerate(recipients)]


@st.composite
def event_data(draw: st.DrawFn, event_type: str) -> dict:
    if event_type == "ai.inference.metered.v1":
        return {
            "model_id": draw(identifier),
            "request_id": draw(identifier),
            "payer": draw(identifier),
            "compute_provider": draw(identifier),
            "input_tokens": draw(st.integers(0, limits.tokens_max)),
            "output_tokens": draw(st.integers(0, limits.tokens_max)),
            "fee_micros": draw(st.integers(1, limits.fee_micros_max)),
            "asset": draw(st.sampled_from(["USDC", "EURC", "USD"])),
        }
    if event_type == "ai.inference.reversed.v1":
        return {"original_event_id": draw(event_id), "reason": draw(st.sampled_from(["refund", "chargeback"]))}
    if event_type == "ai.contributor.registered.v1":
        return {"contributor_id": draw(identifier), "payout_address": draw(payout_address)}
    if event_type == "ai.model.registered.v1":
        model_id = draw(identifier)
        parents = draw(st.lists(identifier.filter(lambda p: p != model_id), max_size=3, unique=True))
        return {"model_id": model_id, "parents": [{"model_id": p, "share_ppm": 100_000} for p in parents]}
    model_id = draw(identifier)
    return {
        "model_id": model_id,
        "effective_from": iso(draw(times)),
        "compute_share_ppm": draw(st.integers(0, ppm)),
        "shares": draw(shares(model_id)),
    }


event_type_names = [
    "ai.inference.metered.v1",
    "ai.inference.reversed.v1",
    "ai.contributor.registered.v1",
    "ai.model.registered.v1",
    "ai.split-policy.set.v1",
]


@st.composite
def valid_event(draw: st.DrawFn, event_type: str | None = None) -> dict:
    chosen = event_type or draw(st.sampled_from(event_type_names))
    event = {
        "specversion": "1.0",
        "id": draw(event_id),
        "source": draw(source),
        "type": chosen,
        "time": iso(draw(times)),
        "data": draw(event_data(chosen)),
    }
    if draw(st.booleans()):
        event["datacontenttype"] = "application/json"
    return event


def encode(event: dict) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)
