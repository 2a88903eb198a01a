"""The stable code of each dead letter: one closed enumeration, beside the detailed `reason` text.

The reason text explains one message (the field, the value, the limit) and its wording may improve
from one version to the next; the code names the kind of fault and does not change, so analysts can
group and alert on it. docs/analytics.md lists each code with what the producer should do.

Every writer of a dead letter stores its code (`SchemaError.code`, the ledger's conflicting duplicates,
the settlement's unresolved reversals). Dead letters stored before the column existed (ledger format
below 6) have none: the `dead_letters` view derives it from the reason text with a SQL CASE that
follows `reason_rules` below, in the same order, and `reason_code_of` is the same derivation in Python
(tests require the two to agree, and to give every reason the decoder writes the code it stores).
Stored rows are never rewritten: the ledger is append-only.
"""

import re
from enum import StrEnum


class ReasonCode(StrEnum):
    """Why a message was dead-lettered. Add a member only with its row in docs/analytics.md; never rename one."""

    invalid_utf8 = "invalid_utf8"
    invalid_json = "invalid_json"
    truncated_json = "truncated_json"
    not_an_object = "not_an_object"
    duplicate_key = "duplicate_key"
    message_too_large = "message_too_large"
    missing_value = "missing_value"
    unknown_event_type = "unknown_event_type"
    field_missing = "field_missing"
    unknown_field = "unknown_field"
    field_invalid = "field_invalid"
    time_in_future = "time_in_future"
    asset_not_accepted = "asset_not_accepted"
    conflicting_duplicate = "conflicting_duplicate"
    reversal_unresolved = "reversal_unresolved"
    reversal_repeated = "reversal_repeated"
    unauthorized_source = "unauthorized_source"
    policy_notice = "policy_notice"
    model_already_registered = "model_already_registered"
    unclassified = "unclassified"  # a reason text no rule knows (never written by this version)


# (regular expression, code), tried in order on the reason's message: the reason text without the
# "field `F`: " prefix `SchemaError` puts before it. Every pattern is anchored at the start, where the
# wording is ours: event ids, keys and values a producer sent come later in the text.
# Rules for a fault of the whole message (no field); the first is the wording of ledger format 1 to 5.
whole_message_rules: tuple[tuple[str, ReasonCode], ...] = ((r"^Input should be an object", ReasonCode.not_an_object),)
reason_rules: tuple[tuple[str, ReasonCode], ...] = (
    (r"^message is not UTF-8", ReasonCode.invalid_utf8),
    (r"^invalid JSON: EOF while parsing", ReasonCode.truncated_json),
    (r"^invalid JSON: ", ReasonCode.invalid_json),
    (r"^undecodable message ", ReasonCode.invalid_json),
    (r"^a CloudEvent must be a JSON object", ReasonCode.not_an_object),
    (r"^message is [0-9]+ bytes, over the limit", ReasonCode.message_too_large),
    (r"^the Kafka record has no value", ReasonCode.missing_value),
    (r"^duplicate_key: ", ReasonCode.duplicate_key),
    (r"^time_in_future: ", ReasonCode.time_in_future),
    (r"^unknown event type ", ReasonCode.unknown_event_type),
    (r"^missing; expected one of ", ReasonCode.field_missing),
    (r"^Field required", ReasonCode.field_missing),
    (r"^unknown field; ", ReasonCode.unknown_field),
    (r"^asset `", ReasonCode.asset_not_accepted),
    (r"^conflicting duplicate: ", ReasonCode.conflicting_duplicate),
    (r"^settlement epoch [0-9]+: reversal of unknown event ", ReasonCode.reversal_unresolved),
    (r"^settlement epoch [0-9]+: reversal of already reversed event ", ReasonCode.reversal_repeated),
    (r"^settlement epoch [0-9]+: unauthorized source ", ReasonCode.unauthorized_source),
    (r"^settlement epoch [0-9]+: policy notice: ", ReasonCode.policy_notice),
    (r"^settlement epoch [0-9]+: model already registered: ", ReasonCode.model_already_registered),
)
_compiled_rules = tuple((re.compile(pattern), code) for pattern, code in reason_rules)
_compiled_whole_message_rules = tuple((re.compile(pattern), code) for pattern, code in whole_message_rules)


def reason_message(reason: str, error_field: str | None) -> str:
    """The reason without the "field `F`: " prefix naming its field (`SchemaError.__str__`)."""
    if error_field is not None:
        return reason.removeprefix(f"field `{error_field}`: ")
    return reason


def reason_code_of(reason: str, error_field: str | None = None) -> ReasonCode:
    """The code of a dead letter known only by its stored reason text and field (as the view derives it)."""
    message = reason_message(reason, error_field)
    rules = _compiled_rules if error_field is not None else _compiled_whole_message_rules + _compiled_rules
    for pattern, code in rules:
        if pattern.match(message):
            return code
    return ReasonCode.field_invalid if error_field is not None else ReasonCode.unclassified
