"""Who may write the operator (Kafka) registry: ownership by source, in arrival order (docs/registry.md).

Arrival is a record's position in the ledger: the snapshot that added it, then its topic, partition and
offset (`arrival_columns`). The producer controls none of it, unlike the envelope `time`.

- The source of the first accepted registration of a model or a contributor id owns it. A model id is
  never registered again (`model_already_registered`). Only its owner, or a source `registry_sources`
  lists for the event type, may change a contributor's payout address or set a model's policy
  (`unauthorized_source`); an event type listed there is closed: only listed sources may register new ids.
- A policy for a model no accepted registration names is not judged yet and not used (its fees wait in
  suspense); it is judged once the model is registered, whatever the order the two arrived in.
- With `policy_notice_s`, a policy other than a model's first whose `effective_from` is earlier than its
  arrival time (the ledger's commit time of its snapshot) plus the notice is refused (`policy_notice`).
- Reversals come only from the reversed event's own source or a source `reversal_sources` lists.

This runs when an epoch closes (one writer per step), over every registry row as of its closing snapshot,
so the outcome does not depend on how rows were batched or on which ingest process wrote them. A record's
judgment is final: a record known at the previous closing whose model (for a policy) was registered by
then was judged then, and is refused now exactly when a dead letter of this kind names it
(`refused_before`), whatever the settings say today.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl

from schemas.reason_codes import ReasonCode
from schemas.type_names import registry_event_types

model_type, contributor_type, policy_type = registry_types = registry_event_types
arrival_columns = ["known_snapshot", "kafka_topic", "kafka_partition", "kafka_offset", "event_id"]
# What names a stored record in its dead letter (which has no `source` column).
position_columns = ["kafka_topic", "kafka_partition", "kafka_offset", "event_id"]
registry_codes = frozenset(
    {ReasonCode.unauthorized_source, ReasonCode.policy_notice, ReasonCode.model_already_registered}
)


@dataclass(frozen=True)
class RegistryRules:
    """The registry's settings: trusted sources per event type, reversal sources, policy notice (operator
    registry), and the addresses never paid as token holders (either registry mode)."""

    registry_sources: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    reversal_sources: tuple[str, ...] = ()
    policy_notice_s: int | None = None
    holder_excluded: tuple[str, ...] = ()  # pools, treasuries, bridges, the distributor (`holder_excluded`)
    holder_dust_units_min: int = 0  # a holder's part below this is carried forward (`holder_dust_units_min`)

    def listed(self, event_type: str, source: str) -> bool:
        return source in self.registry_sources.get(event_type, ())

    def closed(self, event_type: str) -> bool:
        return event_type in self.registry_sources

    def may_reverse(self, reversal_source: str, original_source: str) -> bool:
        return reversal_source == original_source or reversal_source in self.reversal_sources


@dataclass
class Judgment:
    """The accepted registry rows, the payout addresses in force, and the records refused now."""

    models: pl.DataFrame
    policies: pl.DataFrame
    addresses: pl.DataFrame  # contributor_id, payout_address
    refused: list[dict]  # event_type, reason, reason_code, the record's columns (its table's row)
    problems: list[str] = field(default_factory=list)  # policies waiting for their model's registration


def _position(row: dict) -> tuple:
    return tuple(row[c] for c in position_columns)


def _ordered(frame: pl.DataFrame) -> list[dict]:
    present = [c for c in arrival_columns if c in frame.columns]
    return list(frame.sort(present).iter_rows(named=True))


def _refusal(row: dict, event_type: str, code: ReasonCode, reason: str) -> dict:
    return {**row, "event_type": event_type, "reason_code": code.value, "reason": reason}


def _owned_by(
    rows: list[dict],
    id_column: str,
    event_type: str,
    rules: RegistryRules,
    refused_before: set[tuple],
    prior_closing: int,
    registers_once: bool,
) -> tuple[dict[str, dict], list[dict], list[dict]]:
    """Owners (id -> the owning row), accepted rows and refusals of one registration table, in arrival order."""
    owners: dict[str, dict] = {}
    accepted: list[dict] = []
    refused: list[dict] = []
    for row in rows:
        key, source = row[id_column], row["source"]
        if row["known_snapshot"] <= prior_closing:  # judged when it was first known
            ok = _position(row) not in refused_before
            if ok and registers_once and key in owners:
                ok = False  # a ledger from before ownership: the first by arrival stands
        else:
            owner = owners.get(key)
            problem = None
            if owner is not None and registers_once:
                problem = (
                    ReasonCode.model_already_registered,
                    f"model already registered: `{key}` was registered by source `{owner['source']}` (event "
                    f"`{owner['event_id']}`); a model id is never registered again",
                )
            elif owner is not None and source != owner["source"] and not rules.listed(event_type, source):
                problem = (
                    ReasonCode.unauthorized_source,
                    f"unauthorized source `{source}`: `{key}` is owned by source `{owner['source']}`; "
                    f"only its owner or a source `registry_sources` lists for `{event_type}` may",
                )
            elif owner is None and rules.closed(event_type) and not rules.listed(event_type, source):
                problem = (
                    ReasonCode.unauthorized_source,
                    f"unauthorized source `{source}`: not among the sources `registry_sources` lists for "
                    f"`{event_type}`",
                )
            if problem is not None:
                refused.append(_refusal(row, event_type, *problem))
            ok = problem is None
        if ok:
            owners.setdefault(key, row)
            accepted.append(row)
    return owners, accepted, refused


def judge(
    models: pl.DataFrame,
    policies: pl.DataFrame,
    contributors: pl.DataFrame,
    rules: RegistryRules,
    refused_before: set[tuple] | None = None,
    prior_closing: int = 0,
    arrival_times: Mapping[int, datetime] | None = None,
) -> Judgment:
    """Judge every registry row (each frame with `known_snapshot` and its position) by the rules above.

    `arrival_times` maps a snapshot to the ledger's commit time of it; needed with `policy_notice_s`.
    """
    refused_before = refused_before or set()
    model_owners, model_rows, refused = _owned_by(
        _ordered(models), "model_id", model_type, rules, refused_before, prior_closing, True
    )
    _, contributor_rows, contributor_refused = _owned_by(
        _ordered(contributors), "contributor_id", contributor_type, rules, refused_before, prior_closing, False
    )
    refused += contributor_refused
    with_policy: set[str] = set()
    policy_rows: list[dict] = []
    problems: list[str] = []
    for row in _ordered(policies):
        owner = model_owners.get(row["model_id"])
        if owner is None:  # not judged until its model is registered; its fees wait in suspense
            problems.append(
                f"policy `{row['event_id']}` of source `{row['source']}` waits: model `{row['model_id']}` has no "
                "accepted registration, so the model's fees stay in suspense until it has one"
            )
            continue
        if row["known_snapshot"] <= prior_closing and owner["known_snapshot"] <= prior_closing:
            ok = _position(row) not in refused_before  # judged when the previous epoch closed
        else:
            problem = _policy_problem(row, owner, row["model_id"] in with_policy, rules, arrival_times)
            if problem is not None:
                refused.append(_refusal(row, policy_type, *problem))
            ok = problem is None
        if ok:
            with_policy.add(row["model_id"])
            policy_rows.append(row)
    addresses = (
        pl.DataFrame(contributor_rows, schema=contributors.schema)
        .unique("contributor_id", keep="last", maintain_order=True)  # the last accepted by arrival
        .select("contributor_id", "payout_address")
        .sort("contributor_id")
    )
    return Judgment(
        pl.DataFrame(model_rows, schema=models.schema),
        pl.DataFrame(policy_rows, schema=policies.schema),
        addresses,
        refused,
        problems,
    )


def _policy_problem(
    row: dict,
    owner: dict,
    has_policy: bool,
    rules: RegistryRules,
    arrival_times: Mapping[int, datetime] | None,
) -> tuple[ReasonCode, str] | None:
    source, model_id = row["source"], row["model_id"]
    if source != owner["source"] and not rules.listed(policy_type, source):
        return (
            ReasonCode.unauthorized_source,
            f"unauthorized source `{source}`: model `{model_id}` is registered by source "
            f"`{owner['source']}`; only it or a source `registry_sources` lists for `{policy_type}` may",
        )
    if rules.policy_notice_s is None or not has_policy:
        return None
    arrived = (arrival_times or {}).get(row["known_snapshot"])
    if arrived is None:
        return None  # no commit time known (an in-memory run): nothing to measure the notice from
    earliest = arrived + timedelta(seconds=rules.policy_notice_s)
    if row["effective_from"] < earliest:
        return (
            ReasonCode.policy_notice,
            f"policy notice: the policy of model `{model_id}` takes effect at "
            f"{row['effective_from'].isoformat()}, before its arrival ({arrived.isoformat()}) plus the notice "
            f"of {rules.policy_notice_s} s (`policy_notice_s`): send it with effective_from at or after "
            f"{earliest.isoformat()}",
        )
    return None
