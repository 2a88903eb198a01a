"""The producer contract: event models, the batch decoder, Arrow schemas, JSON Schema export.

The names below are imported on first use (PEP 562), not with the package: `schemas.errors` and
`schemas.limits` are imported by every command's settings, and the models and the decoder (pydantic,
eth-utils, pyarrow) would make `royalty --help` take a second.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

_module_of = {
    "BatchDecoder": "schemas.decoder",
    "DecodedBatch": "schemas.decoder",
    "Rejection": "schemas.decoder",
    "RoyaltyError": "schemas.errors",
    "SchemaError": "schemas.errors",
    "ContributorRegistered": "schemas.events",
    "EventType": "schemas.events",
    "InferenceMetered": "schemas.events",
    "InferenceReversed": "schemas.events",
    "ModelRegistered": "schemas.events",
    "SplitPolicySet": "schemas.events",
    "event_types": "schemas.events",
    "ReasonCode": "schemas.reason_codes",
    "reason_code_of": "schemas.reason_codes",
}


def __getattr__(name: str) -> object:
    module = _module_of.get(name)
    if module is None:
        raise AttributeError(f"module 'schemas' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value

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
