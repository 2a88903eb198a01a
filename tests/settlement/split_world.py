"""Generated registries and traffic for the split property tests, as in-memory polars frames."""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import polars as pl
from hypothesis import strategies as st

from ledger.rollups import payer_rollup_rows, rollup_rows
from ledger.tables import payer_rollup_schema, rollup_schema
from settlement.engine.epochs import EpochInputs, PriorState, advance, plan_epoch
from settlement.engine.policies import resolve
from settlement.engine.splits import event_columns, event_key, key_of
from settlement.ledger_io import deduplicated_reversals
from settlement.rollups import RollupEvents, weighted_events

start = datetime(2026, 1, 1, tzinfo=UTC)
contributors = [f"c{i}" for i in range(6)]
providers = ["gpu-a", "gpu-b"]
payers = ["p1", "p2", "p3"]
# Two gateways that mint the same ids: events are keyed by (source, id), so `ev-0003` of each is its own event.
sources = ["//gw-a", "//gw-b"]
billing_source = "//billing"
untrusted_source = "//intruder"
ppm = 1_000_000


@dataclass
class World:
    models: list[dict] = field(default_factory=list)  # model_id, parents {id: ppm}, known_snapshot
    policies: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)  # event columns + arrival (epoch)
    # event_id, source, original_event_id, original_source (None: the reversal's own source), arrival
    reversals: list[dict] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)
    epochs: int = 1


def _split_ppm(draw, total: int, count: int) -> list[int]:
    cuts = sorted(draw(st.lists(st.integers(1, total - 1), min_size=count - 1, max_size=count - 1, unique=True)))
    bounds = [0, *cuts, total]
    return [bounds[i + 1] - bounds[i] for i in range(count)]


@st.composite
def worlds(
    draw,
    events_max: int = 40,
    epochs_max: int = 3,
    epochs_min: int = 1,
    with_datasets: bool = False,
    mid_hour: bool = False,
    duplicates: bool = False,
    reversals_min: int = 0,
) -> World:
    """A registry and traffic; `with_datasets`: on-chain datasets too (`dataset:<id>` records with their own
    split among contributors, named by some model policies), as the on-chain registry maps them. `mid_hour`:
    policies may take effect, and events happen, at minutes past the hour (a rollup cell a policy change splits).
    `duplicates`: (source, id) stored twice in an epoch, as ingest lets them through: same-id resends with another
    event time, model and fee, and ranges of events appended twice (racing writers)."""
    minutes = st.sampled_from([0, 30, 59]) if mid_hour else st.just(0)
    policy_hours = st.sampled_from([0, 5]) if mid_hour else st.sampled_from([0, 0, 5, 30])
    # Mid-hour worlds crowd their events into a few hours around the policy changes, so rollup cells hold several.
    event_hours = st.integers(4, 5) if mid_hour else st.integers(0, 40)
    world = World(epochs=draw(st.integers(epochs_min, epochs_max)))
    datasets = [f"dataset:d{i}" for i in range(draw(st.integers(1, 2)))] if with_datasets else []
    for dataset in datasets:
        if draw(st.integers(0, 5)) > 0:  # now and then a dataset is named but never registered
            known = draw(st.integers(1, world.epochs))
            world.models.append({"model_id": dataset, "parents": {}, "known_snapshot": known})
        for number in range(draw(st.integers(0, 2))):
            recipients = draw(st.lists(st.sampled_from(contributors), min_size=1, max_size=3, unique=True))
            amounts = _split_ppm(draw, ppm, len(recipients))
            world.policies.append(
                {
                    "event_id": f"pol-{dataset}-{number}",
                    "model_id": dataset,
                    "effective_from": start + timedelta(hours=draw(st.sampled_from([0, 0, 10, 20]))),
                    "event_time": start + timedelta(minutes=number),
                    "compute_share_ppm": 0,
                    "shares": [{"recipient": r, "share_ppm": a} for r, a in zip(recipients, amounts, strict=True)],
                    "known_snapshot": draw(st.integers(1, world.epochs)),
                }
            )
    count = draw(st.integers(1, 7))
    for index in range(count):
        model_id = f"m{index}"
        # Parents among earlier models keep the graph a DAG; a chain m0 <- m1 <- ... reaches depth 5+.
        parents = {}
        if index and draw(st.booleans()):
            chosen = draw(st.lists(st.integers(0, index - 1), min_size=1, max_size=2, unique=True))
            parents = {f"m{p}": draw(st.sampled_from([50_000, 100_000, 250_000])) for p in chosen}
        if draw(st.integers(0, 9)) > 0:  # now and then a model is never registered
            world.models.append(
                {
                    "model_id": model_id,
                    "parents": parents,
                    "known_snapshot": draw(st.integers(1, world.epochs)),
                }
            )
        for number in range(draw(st.integers(0, 2))):
            pool = contributors + (datasets if datasets and draw(st.booleans()) else [])
            recipients = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique=True))
            remaining = ppm - sum(parents.values())
            shares = [{"recipient": f"model:{p}", "share_ppm": s} for p, s in parents.items()]
            amounts = _split_ppm(draw, remaining, len(recipients))
            shares += [{"recipient": r, "share_ppm": a} for r, a in zip(recipients, amounts, strict=True)]
            world.policies.append(
                {
                    "event_id": f"pol-{model_id}-{number}",
                    "model_id": model_id,
                    "effective_from": start + timedelta(hours=draw(policy_hours), minutes=draw(minutes)),
                    "event_time": start + timedelta(minutes=number),
                    "compute_share_ppm": draw(st.sampled_from([0, 100_000, 333_333, 1_000_000])),
                    "shares": shares,
                    "known_snapshot": draw(st.integers(1, world.epochs)),
                }
            )
    for index in range(draw(st.integers(1, events_max))):
        world.events.append(
            {
                "event_id": f"ev-{index // 2:04d}",
                "source": sources[index % 2],
                "event_time": start + timedelta(hours=draw(event_hours), minutes=draw(minutes), microseconds=index),
                "model_id": f"m{draw(st.integers(0, count - 1))}",
                "payer": draw(st.sampled_from(payers)),
                "compute_provider": draw(st.sampled_from(providers)),
                "fee_micros": draw(st.one_of(st.integers(1, 1_000), st.integers(1, 10**12))),
                "arrival": draw(st.integers(1, world.epochs)),
            }
        )
    for index in range(draw(st.integers(reversals_min, 6))):
        target, target_source = draw(
            st.sampled_from([(e["event_id"], e["source"]) for e in world.events] + [("ev-unknown", sources[0])])
        )
        # From the original's own source, or from a billing system naming the original's source.
        # An untrusted source's reversal is a dead letter (only the original's source or reversal_sources).
        source = draw(st.sampled_from([target_source, billing_source, untrusted_source]))
        world.reversals.append(
            {
                "event_id": f"rev-{index}",
                "source": source,
                "original_event_id": target,
                "original_source": None if source == target_source else target_source,
                "event_time": start + timedelta(hours=50, microseconds=index),
                "arrival": draw(st.integers(1, world.epochs)),
            }
        )
    if duplicates:
        _add_duplicates(draw, world, event_hours, minutes, count)
    world.addresses = {c: f"0x{i:040x}" for i, c in enumerate(contributors) if draw(st.booleans())}
    return world


def _add_duplicates(draw, world: World, event_hours, minutes, models: int) -> None:
    """Append to `world.events` copies of some of its events: a resent id with another time, model and fee, and
    a range appended twice, each arriving in the original's epoch. Not of a reversed event: which copy a reversal
    takes back (the first stored) and which the epoch keeps (the least in column order) may differ, in both paths
    alike (a finding left to the engine)."""
    reversed_keys = {(r["original_source"] or r["source"], r["original_event_id"]) for r in world.reversals}
    originals = [e for e in world.events if (e["source"], e["event_id"]) not in reversed_keys]
    if not originals:
        return
    for number in range(draw(st.integers(0, 2))):
        original = draw(st.sampled_from(originals))
        world.events.append(
            {
                **original,
                "event_time": start + timedelta(hours=draw(event_hours), minutes=draw(minutes), microseconds=number),
                "model_id": f"m{draw(st.integers(0, models - 1))}",
                "fee_micros": draw(st.integers(1, 10**9)),
                "arrival": original["arrival"],
            }
        )
    if draw(st.booleans()):
        first = draw(st.integers(0, len(originals) - 1))
        copied = originals[first : first + draw(st.integers(1, 5))]
        world.events += [dict(event) for event in copied]


def registry_frames(world: World) -> tuple[pl.DataFrame, pl.DataFrame]:
    models = pl.DataFrame(
        [
            {
                "event_id": f"reg-{m['model_id']}",
                "event_time": start,
                "model_id": m["model_id"],
                "parents": [{"model_id": p, "share_ppm": s} for p, s in m["parents"].items()],
                "known_snapshot": m["known_snapshot"],
            }
            for m in world.models
        ],
        schema={
            "event_id": pl.String,
            "event_time": pl.Datetime("us", "UTC"),
            "model_id": pl.String,
            "parents": pl.List(pl.Struct({"model_id": pl.String, "share_ppm": pl.Int64})),
            "known_snapshot": pl.Int64,
        },
    )
    policies = pl.DataFrame(
        world.policies,
        schema={
            "event_id": pl.String,
            "model_id": pl.String,
            "effective_from": pl.Datetime("us", "UTC"),
            "event_time": pl.Datetime("us", "UTC"),
            "compute_share_ppm": pl.Int64,
            "shares": pl.List(pl.Struct({"recipient": pl.String, "share_ppm": pl.Int64})),
            "known_snapshot": pl.Int64,
        },
    )
    return models, policies


def event_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(
        [{c: r[c] for c in event_columns} for r in rows],
        schema={
            **dict.fromkeys(event_columns, pl.String),
            "event_time": pl.Datetime("us", "UTC"),
            "fee_micros": pl.Int64,
        },
    ).select(event_columns)


def run_epochs(
    world: World,
    order_seed: int | None = None,
    each=None,
    holder_weights=None,
    holder_dust_units_min: int = 0,
    path: str = "events",
    reversal_order_seed: int | None = None,
) -> list:
    """Close every epoch of the world in memory (epoch k closes at snapshot k); return the plans.

    `path="rollups"` reads each epoch's new events as settlement.rollups does: from the rollup rows two appends of
    them would write (ledger.rollups), and from the raw events only in the cells where rollups cannot be exact.

    `each(inputs, prior, plan)` is called after each epoch is planned (the bundle property test publishes it);
    `holder_weights(epoch)` gives the epoch's token holders' weights (`settlement.engine.holders`), and a holder's
    part below `holder_dust_units_min` is carried forward. Copies of a reversal id in one epoch are deduplicated as
    the ledger does (`ledger_io.deduplicated_reversals`), after shuffling them by `reversal_order_seed`."""
    models, policies = registry_frames(world)
    prior, plans = PriorState(), []
    for epoch in range(1, world.epochs + 1):
        new = [e for e in world.events if e["arrival"] == epoch]
        if order_seed is not None:
            new = sorted(new, key=lambda e: hash((order_seed, e["source"], e["event_id"])))
        reversals = [r for r in world.reversals if r["arrival"] == epoch]
        if reversal_order_seed is not None:
            reversals = sorted(reversals, key=lambda r: hash((reversal_order_seed, repr(sorted(r.items())))))
        wanted = {(r["original_source"] or r["source"], r["original_event_id"]) for r in reversals}
        originals = event_frame(
            [e for e in world.events if (e["source"], e["event_id"]) in wanted and e["arrival"] <= epoch]
        )
        arrival: dict[str, int] = {}
        for e in world.events:  # a (source, id) stored twice arrived first with its earliest copy
            key = key_of(e["source"], e["event_id"])
            arrival[key] = min(arrival.get(key, e["arrival"]), e["arrival"])
        originals = originals.with_columns(
            arrival_snapshot=event_key().replace_strict(arrival, return_dtype=pl.Int64)
        ).unique(["source", "event_id"], keep="first", maintain_order=True)  # as the ledger keeps the first stored
        new_events, payer_fees = event_frame(new), None
        if new_events.select("source", "event_id").is_duplicated().any():  # as ledger_io._new_events deduplicates
            new_events = new_events.sort(event_columns).unique(
                ["source", "event_id"], keep="first", maintain_order=True
            )
        new_events = new_events.lazy()
        if path == "rollups":
            rolled = rolled_up(event_frame(new), models, policies, epoch, originals)
            assert rolled is not None, "the rollups count every event"
            new_events, payer_fees = rolled.events, rolled.payer_fees
        inputs = EpochInputs(
            closing_snapshot=epoch,
            new_events=new_events,
            reversals=deduplicated_reversals(
                pl.DataFrame(
                    [
                        {k: r[k] for k in ("event_id", "source", "event_time", "original_event_id", "original_source")}
                        | {"reason": "refund"}
                        for r in reversals
                    ],
                    schema={
                        "event_id": pl.String,
                        "source": pl.String,
                        "event_time": pl.Datetime("us", "UTC"),
                        "original_event_id": pl.String,
                        "original_source": pl.String,
                        "reason": pl.String,
                    },
                )
            ),
            originals=originals,
            models=models,
            policies=policies,
            addresses=pl.DataFrame(
                {"contributor_id": list(world.addresses), "payout_address": list(world.addresses.values())},
                schema={"contributor_id": pl.String, "payout_address": pl.String},
            ),
            reversal_sources=(billing_source,),  # trusted to reverse the gateways' events
            holder_weights=None if holder_weights is None else holder_weights(epoch),
            payer_fees=payer_fees,
            holder_dust_units_min=holder_dust_units_min,
        )
        plan = plan_epoch(inputs, prior)
        plans.append(plan)
        if each is not None:
            each(inputs, prior, plan)
        prior = advance(prior, plan)
    return plans


def rolled_up(
    events: pl.DataFrame, models: pl.DataFrame, policies: pl.DataFrame, closing: int, originals: pl.DataFrame
) -> RollupEvents | None:
    """`events` as the rollup path gives them: the rollups of two appends (halves), raw events where needed."""
    half = events.height // 2
    appends = [events.slice(0, half), events.slice(half)]
    tables = [(rollup_schema, rollup_rows), (payer_rollup_schema, payer_rollup_rows)]
    rollups, payer_rollups = (
        pl.concat(
            [pl.from_arrow(schema.empty_table())]
            + [
                pl.from_arrow(rows_of(part.to_arrow(), f"append-{number}"))
                for number, part in enumerate(appends)
                if part.height
            ]
        )
        for schema, rows_of in tables
    )
    new_originals = originals.filter(pl.col("arrival_snapshot") == closing)
    resolution = resolve(models, policies, closing)
    return weighted_events(rollups, events.lazy(), resolution, new_originals, payer_rollups)  # type: ignore[arg-type]


def exact_credits(world: World, events: list[dict], snapshot: int) -> tuple[dict[str, Fraction], dict[str, set]]:
    """Independent reference: each event's exact rational split, and the allocations feeding each recipient.

    Returns (recipient -> exact amount, recipient -> set of allocation keys on its paths); events whose
    route is incomplete at `snapshot` are skipped (they are suspense).
    """
    first: dict[str, dict] = {}
    for m in world.models:
        if m["known_snapshot"] <= snapshot and m["model_id"] not in first:
            first[m["model_id"]] = m["parents"]

    def valid(model_id: str, seen: tuple = ()) -> bool:
        if model_id in seen or model_id not in first or len(seen) > 16:
            return False
        return all(valid(p, (*seen, model_id)) for p in first[model_id])

    def in_force(model_id: str, at: datetime) -> dict | None:
        known = [
            p
            for p in world.policies
            if p["model_id"] == model_id and p["known_snapshot"] <= snapshot and p["effective_from"] <= at
        ]
        return max(known, key=lambda p: (p["effective_from"], p["event_time"], p["event_id"]), default=None)

    def usable(model_id: str, policy: dict | None) -> bool:
        if policy is None:
            return False
        if any(s["recipient"].startswith("dataset:") and s["recipient"] not in first for s in policy["shares"]):
            return False
        named = {s["recipient"][6:]: s["share_ppm"] for s in policy["shares"] if s["recipient"].startswith("model:")}
        if model_id not in first:  # a model no registration names is not paid (its fees wait in suspense)
            return False
        return valid(model_id) and named == first[model_id]

    exact: dict[str, Fraction] = {}
    feeding: dict[str, set] = {}

    def closure(model_id: str) -> list[str]:
        out = {model_id}
        for p in first.get(model_id, {}):
            out |= set(closure(p))
        return sorted(out)

    def reached(model_id: str, at: datetime) -> list[str]:
        """The closure and the datasets its policies in force at `at` name."""
        members = closure(model_id)
        named = {
            s["recipient"]
            for m in members
            if (p := in_force(m, at)) is not None
            for s in p["shares"]
            if s["recipient"].startswith("dataset:")
        }
        return sorted({*members, *named})

    for event in events:
        model_id, at = event["model_id"], event["event_time"]
        members = reached(model_id, at)
        vector = {m: in_force(m, at) for m in members}
        if not all(usable(m, vector[m]) for m in members):
            continue

        def key(m: str, vector: dict = vector, at: datetime = at) -> tuple:
            return tuple((x, vector[x]["event_id"]) for x in reached(m, at))

        cut = ("cut", model_id, key(model_id), event["compute_provider"])
        fee = Fraction(event["fee_micros"])
        compute = fee * vector[model_id]["compute_share_ppm"] / ppm
        provider = event["compute_provider"]
        exact[provider] = exact.get(provider, 0) + compute
        feeding.setdefault(provider, set()).add(cut)
        stack = [(model_id, fee - compute, {cut})]
        while stack:
            m, amount, path = stack.pop()
            here = path | {("pool", m, key(m))}
            for share in vector[m]["shares"]:
                part = amount * share["share_ppm"] / ppm
                if share["recipient"].startswith("model:"):
                    stack.append((share["recipient"][6:], part, here))
                elif share["recipient"].startswith("dataset:"):
                    stack.append((share["recipient"], part, here))
                else:
                    exact[share["recipient"]] = exact.get(share["recipient"], 0) + part
                    feeding.setdefault(share["recipient"], set()).update(here)
    return exact, feeding
