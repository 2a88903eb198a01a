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
from schemas.reason_codes import ReasonCode, reason_code_of

__all__ = [
    "BatchDecoder",
    "ContributorRegistered",
    "DecodedBatch",
    "EventType",
    "InferenceMetered",
    "InferenceReversed",
    "ModelRegistered",
    "ReasonCode",
    "Rejection",
    "RoyaltyError",
    "SchemaError",
    "SplitPolicySet",
    "event_types",
    "reason_code_of",
]
