"""The producer contract: CloudEvents 1.0 envelopes (structured JSON mode) with typed `data`.

Each event type is one pydantic model of its `data`, named in the past tense, and one
envelope model made from it. `source` + `id` is the event's idempotency key, as CloudEvents
defines it: the ledger keeps one event per (source, id). These models are the single
definition that the fast decoder (`decoder.py`), the Arrow schemas (`arrow.py`) and the JSON
Schema export derive from.
"""

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from schemas import limits, type_names
from schemas.errors import require
from schemas.fields import (
    AssetCode,
    EventId,
    EventTime,
    FeeMicros,
    Identifier,
    PayoutAddress,
    PositiveSharePpm,
    Recipient,
    SharePpm,
    Source,
    Tokens,
    model_recipient_prefix,
)

strict_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Data(BaseModel):
    model_config = strict_config


class InferenceMetered(_Data):
    """A paid inference call: `fee_micros` of `asset` owed by `payer`, served by `compute_provider`."""

    model_id: Identifier
    request_id: Identifier
    payer: Identifier
    compute_provider: Identifier
    input_tokens: Tokens
    output_tokens: Tokens
    fee_micros: FeeMicros
    asset: AssetCode


class InferenceReversed(_Data):
    """A refund or chargeback of an earlier `InferenceMetered` event, by its source and event id.

    The original is looked up within the reversal's own `source` unless `original_source` names
    another (a billing system reversing a gateway's event): CloudEvents ids are unique per source.
    """

    original_event_id: EventId
    reason: Literal["refund", "chargeback"]
    original_source: Source | None = None


class ContributorRegistered(_Data):
    """A contributor's payout address; registering again changes it from then on."""

    contributor_id: Identifier
    payout_address: PayoutAddress


class ParentShare(_Data):
    """One parent of a derived model and the share of the derived model's revenue it is due."""

    model_id: Identifier
    share_ppm: PositiveSharePpm


class ModelRegistered(_Data):
    """A model and its lineage, immutable once registered."""

    model_id: Identifier
    parents: list[ParentShare] = Field(max_length=limits.parents_count_max)

    @model_validator(mode="after")
    def check_parents(self):
        names = [parent.model_id for parent in self.parents]
        if self.model_id in names:
            raise ValueError(f"model `{self.model_id}` names itself as a parent (a lineage cycle)")
        if len(set(names)) != len(names):
            raise ValueError(f"parents of `{self.model_id}` name a model more than once: {sorted(names)}")
        total_ppm = sum(parent.share_ppm for parent in self.parents)
        if total_ppm > limits.ppm_total:
            raise ValueError(f"parents' share_ppm sum to {total_ppm}, more than {limits.ppm_total}")
        return self


class RecipientShare(_Data):
    """One recipient of a model's revenue: a contributor id or `model:<parent id>`."""

    recipient: Recipient
    share_ppm: PositiveSharePpm


class SplitPolicySet(_Data):
    """How a model's fees are split from `effective_from` on, until a later policy takes over."""

    model_id: Identifier
    effective_from: EventTime
    compute_share_ppm: SharePpm
    shares: list[RecipientShare] = Field(min_length=1, max_length=limits.shares_count_max)

    @model_validator(mode="after")
    def check_shares(self):
        total_ppm = sum(share.share_ppm for share in self.shares)
        if total_ppm != limits.ppm_total:
            raise ValueError(f"shares sum to {total_ppm} ppm; they must sum to exactly {limits.ppm_total}")
        names = [share.recipient for share in self.shares]
        if len(set(names)) != len(names):
            raise ValueError(f"a recipient is named more than once: {sorted(names)}")
        if f"{model_recipient_prefix}{self.model_id}" in names:
            raise ValueError(f"model `{self.model_id}` names itself as a recipient (a lineage cycle)")
        return self


@dataclass(frozen=True)
class EventType:
    """One event type of the contract and where it lands in the ledger."""

    type: str
    data_model: type[BaseModel]
    envelope_model: type[BaseModel]
    table: str


def _envelope(type_name: str, data_model: type[BaseModel]) -> type[BaseModel]:
    return create_model(
        data_model.__name__ + "Event",
        __config__=strict_config,
        __doc__=f"CloudEvents 1.0 envelope of `{type_name}`.",
        specversion=(Literal["1.0"], ...),
        id=(EventId, ...),
        source=(Source, ...),
        type=(Literal[type_name], ...),  # type: ignore[valid-type]
        time=(EventTime, ...),
        datacontenttype=(Literal["application/json"], "application/json"),
        data=(data_model, ...),
    )


def _event_type(type_name: str, data_model: type[BaseModel], table: str) -> EventType:
    return EventType(type_name, data_model, _envelope(type_name, data_model), table)


event_types: dict[str, EventType] = {
    event_type.type: event_type
    for event_type in (
        _event_type("ai.inference.metered.v1", InferenceMetered, "inference_metered"),
        _event_type("ai.inference.reversed.v1", InferenceReversed, "inference_reversed"),
        _event_type("ai.contributor.registered.v1", ContributorRegistered, "contributor_registered"),
        _event_type("ai.model.registered.v1", ModelRegistered, "model_registered"),
        _event_type("ai.split-policy.set.v1", SplitPolicySet, "split_policy_set"),
    )
}

# The operator registry's event types, declared where `royalty.config` reads them without the models.
registry_event_types = type_names.registry_event_types
require(set(registry_event_types) <= set(event_types), "the registry's event types are event types")
