"""Which split applies to a fee: the registry as known at a snapshot, resolved into routes.

A model registration is valid when every parent is itself validly registered (so the lineage
graph is a DAG of registered models no deeper than `lineage_depth_max`); the first registration
of a model id is the one in force, later ones are ignored (in a ledger the operator registry's rules,
`authority.judge`, pass one registration per model, the first by arrival). A policy of a model that
no registration names is not usable: its fees wait in suspense until the model is registered.
A policy is usable when its `model:<parent>` recipients are exactly the model's registered parents
with their registered shares; a model with parents whose registration is not valid has no usable policy.

For one fee of model M at time t, the *route* is the policy in force at t for M and every
ancestor of M. It is constant between policy change points, so each model's timeline is cut
into segments, and fees are matched to segments with one as-of join. A route is complete when
every model on it has a usable policy in force; an incomplete route sends the fee to suspense.
"""

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from schemas.fields import model_recipient_prefix
from settlement.engine.accounts import dataset_prefix
from settlement.engine.authority import arrival_columns
from settlement.engine.constants import key_hex_digits, lineage_depth_max, time_origin_year

time_origin = datetime(time_origin_year, 1, 1, tzinfo=UTC)
time_type = pl.Datetime("us", "UTC")
# Below every model's level (0 and up): split levels run from the highest down, so datasets go last.
dataset_level = -1


@dataclass(frozen=True)
class Policy:
    policy_id: str
    model_id: str
    effective_from: datetime
    compute_share_ppm: int
    shares: tuple[tuple[str, int], ...]
    order: tuple  # (effective_from, event_time, event_id): the later one wins at a time


@dataclass
class Resolution:
    """The registry as known at one snapshot, as frames the split engine joins against."""

    segments: pl.DataFrame  # model_id, segment_start, route_id, pool_id, compute_share_ppm, complete
    pools: pl.DataFrame  # pool_id, model_id, policy_id, level
    pool_shares: pl.DataFrame  # pool_id, recipient, share_ppm, target_pool_id (null for contributors)
    problems: list[str] = field(default_factory=list)


def short_key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:key_hex_digits]


def valid_lineage(models: pl.DataFrame) -> tuple[dict[str, dict[str, int]], dict[str, int], list[str]]:
    """Registered parents of each validly registered model, its level (longest path to a root), problems."""
    # The first by arrival (the producer's `time` decides nothing: a backdated registration squats no id).
    order = [c for c in arrival_columns if c in models.columns]
    first = models.sort(order).unique("model_id", keep="first", maintain_order=True)
    parents = {
        row["model_id"]: {p["model_id"]: p["share_ppm"] for p in row["parents"]}
        for row in first.iter_rows(named=True)
    }
    level: dict[str, int] = {}
    problems: list[str] = []
    pending = set(parents)
    # Each round admits the models whose parents are all admitted; a cycle or a missing parent
    # never is. Rounds are bounded by the depth limit, so this loop is too.
    for depth in range(lineage_depth_max + 1):
        admitted = {m for m in pending if all(p in level for p in parents[m])}
        for model_id in admitted:
            level[model_id] = depth
        pending -= admitted
        if not admitted:
            break
    for model_id in sorted(pending):
        missing = sorted(p for p in parents[model_id] if p not in parents)
        reason = (
            f"unregistered parents {missing}"
            if missing
            else "a lineage cycle or a chain past the depth limit"
        )
        problems.append(f"model `{model_id}` is not validly registered: {reason}")
    return {m: parents[m] for m in level}, level, problems


def _policies(policies: pl.DataFrame) -> dict[str, list[Policy]]:
    by_model: dict[str, list[Policy]] = {}
    for row in policies.iter_rows(named=True):
        shares = tuple(sorted((s["recipient"], s["share_ppm"]) for s in row["shares"]))
        policy = Policy(
            row["event_id"],
            row["model_id"],
            row["effective_from"],
            row["compute_share_ppm"],
            shares,
            (row["effective_from"], row["event_time"], row["event_id"]),
        )
        by_model.setdefault(policy.model_id, []).append(policy)
    for items in by_model.values():
        items.sort(key=lambda p: p.order)
    return by_model


def _named_datasets(policy: Policy | None) -> set[str]:
    """The datasets (`dataset:<id>` records) a policy sends a share to: they split it again by their own policy."""
    return set() if policy is None else {r for r, _ in policy.shares if r.startswith(dataset_prefix)}


def _usable(policy: Policy, parents: dict[str, int] | None, datasets: frozenset[str] | set[str] = frozenset()) -> bool:
    if any(r.startswith(dataset_prefix) and r not in datasets for r, _ in policy.shares):
        return False  # a share to a dataset no registration names
    if policy.model_id.startswith(dataset_prefix) and any(
        r.startswith((dataset_prefix, model_recipient_prefix)) for r, _ in policy.shares
    ):
        return False  # a dataset's split pays accounts only
    named = {
        r.removeprefix(model_recipient_prefix): s
        for r, s in policy.shares
        if r.startswith(model_recipient_prefix)
    }
    if parents is None:  # a model no registration names is not paid: its fees wait in suspense
        return False
    return named == parents


def _in_force(items: list[Policy], at: datetime) -> Policy | None:
    chosen = None
    for policy in items:
        if policy.effective_from <= at:
            chosen = policy
    return chosen


def resolve(models: pl.DataFrame, policies: pl.DataFrame, as_of_snapshot: int) -> Resolution:
    """Resolve the registry as known at `as_of_snapshot` (rows with `known_snapshot` not after it)."""
    models = models.filter(pl.col("known_snapshot") <= as_of_snapshot)
    policies = policies.filter(pl.col("known_snapshot") <= as_of_snapshot)
    resolver = _Resolver(models, policies)
    segments = [
        segment
        for model_id in sorted(set(resolver.by_model) | resolver.registered)
        if model_id not in resolver.registered or model_id in resolver.parents  # else: all its fees to suspense
        for segment in resolver.segments(model_id)
    ]
    return Resolution(
        pl.DataFrame(segments, schema=_segment_schema).sort(["model_id", "segment_start"]),
        pl.DataFrame(list(resolver.pools.values()), schema=_pool_schema).sort("pool_id"),
        pl.DataFrame(resolver.pool_shares, schema=_pool_share_schema).sort(["pool_id", "recipient"]),
        resolver.problems + resolver.unused_policy_problems(),
    )


class _Resolver:
    """The registry as known at one snapshot: each model's route segments and the pools they pay into."""

    def __init__(self, models: pl.DataFrame, policies: pl.DataFrame) -> None:
        self.registered = set(models["model_id"].to_list())
        self.parents, self.level, self.problems = valid_lineage(models)
        self.by_model = _policies(policies)
        self.datasets = {m for m in self.registered if m.startswith(dataset_prefix)}
        self.pools: dict[str, dict] = {}
        self.pool_shares: list[dict] = []

    def lineage(self, model_id: str) -> dict[str, int] | None:
        return self.parents.get(model_id) if model_id in self.registered else None

    def closure(self, model_id: str) -> list[str]:
        seen, stack = {model_id}, [model_id]
        while stack:
            for parent in self.parents.get(stack.pop(), {}):
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return sorted(seen)

    def reached(self, model_id: str, vector: dict[str, Policy | None]) -> list[str]:
        """The lineage closure and the datasets its policies in force name (their splits apply too)."""
        members = self.closure(model_id)
        return sorted({*members, *(d for m in members for d in _named_datasets(vector.get(m)))})

    def candidates(self, model_id: str) -> list[str]:
        """Every record whose policy may be on the route at some time: the closure and every dataset named."""
        members = self.closure(model_id)
        named = (d for m in members for p in self.by_model.get(m, []) for d in _named_datasets(p))
        return sorted({*members, *named})

    def pool_of(self, model_id: str, vector: dict[str, Policy]) -> str:
        """The pool of `model_id` under the policies in force `vector`, added with its shares when new."""
        members = self.reached(model_id, vector)
        pool_id = short_key(model_id, *(f"{m}={vector[m].policy_id}" for m in members))
        if pool_id in self.pools:
            return pool_id
        policy = vector[model_id]
        self.pools[pool_id] = {
            "pool_id": pool_id,
            "model_id": model_id,
            "policy_id": policy.policy_id,
            # A dataset is paid by the models that name it, so it is split after all of them.
            "level": dataset_level if model_id.startswith(dataset_prefix) else self.level.get(model_id, 0),
        }
        for recipient, share_ppm in policy.shares:
            target = None
            if recipient.startswith(model_recipient_prefix):
                target = self.pool_of(recipient.removeprefix(model_recipient_prefix), vector)
            elif recipient.startswith(dataset_prefix):
                target = self.pool_of(recipient, vector)
            self.pool_shares.append(
                {"pool_id": pool_id, "recipient": recipient, "share_ppm": share_ppm, "target_pool_id": target}
            )
        return pool_id

    def segments(self, model_id: str) -> list[dict]:
        """One segment per time a policy on the model's route takes effect: its pool, or incomplete."""
        members = self.candidates(model_id)
        starts = sorted({time_origin} | {p.effective_from for m in members for p in self.by_model.get(m, [])})
        segments = []
        for start in starts:
            vector = {m: _in_force(self.by_model.get(m, []), start) for m in members}
            complete = all(
                (p := vector[m]) is not None and _usable(p, self.lineage(m), self.datasets)
                for m in self.reached(model_id, vector)
            )
            pool_id = self.pool_of(model_id, vector) if complete else None  # type: ignore[arg-type]
            segments.append(
                {
                    "model_id": model_id,
                    "segment_start": start,
                    "route_id": pool_id,
                    "pool_id": pool_id,
                    "compute_share_ppm": vector[model_id].compute_share_ppm if complete else 0,  # type: ignore[union-attr]
                    "complete": complete,
                }
            )
        return segments

    def unused_policy_problems(self) -> list[str]:
        """A policy of a model no registration names, or whose model recipients are not its registered parents."""
        problems = []
        for model_id, items in sorted(self.by_model.items()):
            for policy in items:
                if model_id not in self.registered:
                    problems.append(
                        f"policy `{policy.policy_id}` of model `{model_id}` is not used: no registration names the "
                        "model, so its fees wait in suspense until one does"
                    )
                elif not _usable(policy, self.lineage(model_id), self.datasets):
                    problems.append(
                        f"policy `{policy.policy_id}` of model `{model_id}` is not usable: its model "
                        "recipients must be exactly the model's registered parents and shares"
                    )
        return problems


_segment_schema = {
    "model_id": pl.String,
    "segment_start": time_type,
    "route_id": pl.String,
    "pool_id": pl.String,
    "compute_share_ppm": pl.Int64,
    "complete": pl.Boolean,
}
_pool_schema = {"pool_id": pl.String, "model_id": pl.String, "policy_id": pl.String, "level": pl.Int64}
_pool_share_schema = {
    "pool_id": pl.String,
    "recipient": pl.String,
    "share_ppm": pl.Int64,
    "target_pool_id": pl.String,
}
