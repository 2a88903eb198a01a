"""The producer contract: event models, the batch decoder, Arrow schemas, JSON Schema export."""

from schemas.decoder import BatchDecoder, DecodedBatch, Rejection
from schemas.errors import RoyaltyError, SchemaError
from schemas.events import (
    ContributorRegistered,
    EventType,
    InferenceMetered,
    InferenceReversed,
    ModelRegistered,
    SplitPolicySet,
    event_types,
)

__all__ = [
    "BatchDecoder",
    "ContributorRegistered",
    "DecodedBatch",
    "EventType",
    "InferenceMetered",
    "InferenceReversed",
    "ModelRegistered",
    "Rejection",
    "RoyaltyError",
    "SchemaError",
    "SplitPolicySet",
    "event_types",
]
