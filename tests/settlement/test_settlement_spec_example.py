"""docs/spec/settlement-v1.md §13: the worked example, recomputed by hand-written arithmetic with fractions.

The arithmetic here follows the spec's words (floor of the exact share, the units left to the largest
remainders, ties to the smaller recipient), independent of the engine and of the audit's SQL; the same epoch is
then split by the engine, and the spec's table is checked to state the same numbers.
"""

import math
import re
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import polars as pl

from settlement.engine.policies import resolve
from settlement.engine.splits import route, split

spec = Path(__file__).resolve().parents[2] / "docs" / "spec" / "settlement-v1.md"
t0 = datetime(2026, 1, 1, tzinfo=UTC)


def _by_hand(total: int, shares: dict[str, int]) -> dict[str, int]:
    exact = {r: Fraction(total * s, 1_000_000) for r, s in shares.items()}
    floors = {r: math.floor(x) for r, x in exact.items()}
    left = total - sum(floors.values())
    ranked = sorted(exact, key=lambda r: (-(exact[r] - floors[r]), r))
    return {r: floors[r] + (1 if r in ranked[:left] else 0) for r in shares}


def test_the_spec_example_by_hand_matches_the_spec_table_and_the_engine():
    cut_tuned = _by_hand(1_001 + 2_002, {"gpu-1": 100_000, "model:tuned": 900_000})
    cut_base = _by_hand(999, {"gpu-1": 200_000, "model:base": 800_000})
    assert (cut_tuned, cut_base) == ({"gpu-1": 300, "model:tuned": 2_703}, {"gpu-1": 200, "model:base": 799})
    tuned = _by_hand(cut_tuned["model:tuned"], {"model:base": 100_000, "carol": 450_000, "dave": 450_000})
    assert tuned == {"model:base": 270, "carol": 1_217, "dave": 1_216}  # the tie goes to carol (byte order)
    base = _by_hand(cut_base["model:base"] + tuned["model:base"], {"alice": 500_000, "bob": 500_000})
    credits = {
        "alice": base["alice"], "bob": base["bob"], "carol": tuned["carol"], "dave": tuned["dave"],
        "gpu-1": cut_tuned["gpu-1"] + cut_base["gpu-1"],
    }
    assert credits == {"alice": 535, "bob": 534, "carol": 1_217, "dave": 1_216, "gpu-1": 500}
    assert sum(credits.values()) == 1_001 + 2_002 + 999

    text = spec.read_text(encoding="utf-8")
    stated = re.search(r"Credits: (.*?)\. They sum to ([\d,]+)", text, re.S)
    assert stated is not None, "the spec's example states its credits"
    pairs = dict(re.findall(r"`([\w-]+)` ([\d,]+)", stated.group(1)))
    assert {r: int(v.replace(",", "")) for r, v in pairs.items()} == credits
    assert int(stated.group(2).replace(",", "")) == sum(credits.values())

    assert _engine_credits() == credits


def _engine_credits() -> dict[str, int]:
    parents = pl.List(pl.Struct({"model_id": pl.String, "share_ppm": pl.Int64}))
    shares = pl.List(pl.Struct({"recipient": pl.String, "share_ppm": pl.Int64}))
    time = pl.Datetime("us", "UTC")
    models = pl.DataFrame(
        [
            {"event_id": "r-base", "event_time": t0, "model_id": "base", "parents": [], "known_snapshot": 1},
            {"event_id": "r-tuned", "event_time": t0, "model_id": "tuned",
             "parents": [{"model_id": "base", "share_ppm": 100_000}], "known_snapshot": 1},
        ],
        schema={"event_id": pl.String, "event_time": time, "model_id": pl.String, "parents": parents,
                "known_snapshot": pl.Int64},
    )
    policies = pl.DataFrame(
        [
            {"event_id": "p-base", "model_id": "base", "effective_from": t0, "event_time": t0,
             "compute_share_ppm": 200_000, "known_snapshot": 1,
             "shares": [{"recipient": "alice", "share_ppm": 500_000}, {"recipient": "bob", "share_ppm": 500_000}]},
            {"event_id": "p-tuned", "model_id": "tuned", "effective_from": t0, "event_time": t0,
             "compute_share_ppm": 100_000, "known_snapshot": 1,
             "shares": [{"recipient": "model:base", "share_ppm": 100_000},
                        {"recipient": "carol", "share_ppm": 450_000}, {"recipient": "dave", "share_ppm": 450_000}]},
        ],
        schema={"event_id": pl.String, "model_id": pl.String, "effective_from": time, "event_time": time,
                "compute_share_ppm": pl.Int64, "known_snapshot": pl.Int64, "shares": shares},
    )
    events = pl.DataFrame(
        {
            "event_id": ["e1", "e2", "e3"], "source": ["//gw"] * 3, "event_time": [t0] * 3,
            "model_id": ["tuned", "tuned", "base"], "payer": ["org"] * 3, "compute_provider": ["gpu-1"] * 3,
            "fee_micros": [1_001, 2_002, 999],
        },
        schema_overrides={"event_time": time},
    )
    resolution = resolve(models, policies, 1)
    result = split(route(events.lazy(), resolution).groups, resolution)
    return {r: int(a) for r, a in result.credits.iter_rows()}
