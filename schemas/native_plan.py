"""The native decoder's plan, derived from the pydantic models like the msgspec Structs.

`schemas/_fastjson.c` knows nothing of the contract: it is handed, per event type, the fields
of the envelope and of `data` with their kind, length, value and time bounds, literal values and
character-class patterns compiled to byte tables. An event type is given to it only when every
constraint of its fields is one the native code checks itself or that the decoder checks
afterwards on whole Arrow columns (patterns that do not compile to tables); a type with Python
validators, nested models or lists stays with the msgspec path. An optional field (`T | None =
None`) is taken natively only when absent (its column is then null); present, the message goes the
Python way. The plan holds no constraint of its own: change a field in `fields.py` and the plan follows.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args, get_origin

from pydantic import AwareDatetime
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from schemas import limits
from schemas.arrow import optional_of
from schemas.char_class import compile_char_class_pattern
from schemas.derive import ColumnCheck, constraints_of
from schemas.events import EventType

try:
    from schemas import _fastjson
except ImportError:  # built without a C compiler: the msgspec path does everything
    _fastjson = None

int64_min, int64_max = -(2**63), 2**63 - 1
epoch = datetime(1970, 1, 1, tzinfo=UTC)

# Columns the native code fills, in this order: the envelope's, then each data field's.
envelope_columns = {"id": "event_id", "time": "event_time", "source": "source"}


@dataclass(frozen=True)
class NativeType:
    """One event type the native decoder handles, the decoded-schema names of its columns, and
    the checks left for the Arrow columns (patterns not compiled to byte tables)."""

    event_type: EventType
    columns: list[str]
    column_checks: list[ColumnCheck]
    null_columns: list[str]  # optional fields, taken natively only when absent: all null


class NotNative(Exception):
    """A field has a constraint the native decoder cannot check."""


def native_available() -> bool:
    return _fastjson is not None


def repeated_keys_statuses(values: list[bytes | None]) -> bytes:
    """Per value 0 when no JSON object in it repeats a key, else nonzero (repeated, or not sure).

    Without the extension every value is "not sure", and the caller checks each in Python.
    """
    if _fastjson is None:
        return b"\x02" * len(values)
    return _fastjson.repeated_keys(values)


def build_native_decoder(types: list[EventType]) -> tuple[Any, list[NativeType]] | None:
    """The native decoder for those of `types` it can handle, or None (not built, or none fit)."""
    if _fastjson is None:
        return None
    envelope: tuple | None = None
    planned: list[tuple[bytes, tuple]] = []
    native_types: list[NativeType] = []
    for event_type in types:
        checks: list[ColumnCheck] = []
        try:
            type_envelope, tag, data_fields, columns, null_columns = _plan_of(event_type, checks)
        except NotNative:
            continue
        if envelope is not None and type_envelope != envelope:
            continue  # an envelope unlike the others': keep that type on the msgspec path
        envelope = type_envelope
        planned.append((tag, data_fields))
        native_types.append(NativeType(event_type, columns, checks, null_columns))
    if envelope is None:
        return None
    return _fastjson.Decoder(limits.message_bytes_max, envelope, tuple(planned)), native_types


def _plan_of(
    event_type: EventType, checks: list[ColumnCheck]
) -> tuple[tuple, bytes, tuple, list[str], list[str]]:
    columns = list(envelope_columns.values())
    envelope: list[tuple] = []
    tag = b""
    for name, info in event_type.envelope_model.model_fields.items():
        if name == "type":
            (tag_value,) = get_args(info.annotation)
            tag = tag_value.encode()
            envelope.append((b"type", _fastjson.KIND_TAG, 0, 0, (), -1, 1, None))
        elif name == "data":
            envelope.append((b"data", _fastjson.KIND_DATA, 0, 0, (), -1, 1, None))
        else:
            column = list(envelope_columns).index(name) if name in envelope_columns else -1
            envelope.append(_field_spec(name, info, column, checks, name))
    data: list[tuple] = []
    null_columns: list[str] = []
    for name, info in event_type.data_model.model_fields.items():
        if optional_of(info.annotation) is not None and info.default is None:
            # Present, it goes the Python way (which checks it); absent, its column is null.
            data.append((name.encode(), _fastjson.KIND_ABSENT, 0, 0, (), -1, 0, None))
            null_columns.append(name)
            continue
        data.append(_field_spec(name, info, len(columns), checks, f"data.{name}"))
        columns.append(name)
    if event_type.data_model.__pydantic_decorators__.model_validators:
        raise NotNative(f"{event_type.type} has model validators")
    return tuple(envelope), tag, tuple(data), columns, null_columns


def _field_spec(name: str, info: FieldInfo, column: int, checks: list[ColumnCheck], path: str) -> tuple:
    kwargs, validators = constraints_of(list(info.metadata))
    if validators:
        raise NotNative(f"{name} has Python validators")
    required = info.default is PydanticUndefined
    if not required and column >= 0:
        raise NotNative(f"{name} is optional and stored")
    annotation = info.annotation
    key = name.encode()
    if get_origin(annotation) is Literal:
        literals = tuple(value.encode() for value in get_args(annotation) if isinstance(value, str))
        if len(literals) != len(get_args(annotation)) or kwargs:
            raise NotNative(f"{name} is a Literal of non-strings")
        return (key, _fastjson.KIND_LITERAL, 0, 0, literals, column, int(required), None)
    if annotation is str:
        pattern, compiled = kwargs.pop("pattern", None), None
        if pattern is not None:
            compiled = compile_char_class_pattern(str(pattern))
            if compiled is None:  # checked on the Arrow column afterwards, as on the msgspec path
                checks.append(ColumnCheck(path, "pattern", str(pattern)))
        low, high = kwargs.pop("min_length", 0), kwargs.pop("max_length", int64_max)
        _no_more(name, kwargs)
        tables = None if compiled is None else (compiled.first, compiled.rest, compiled.rest_min)
        return (key, _fastjson.KIND_STR, low, high, (), column, int(required), tables)
    if annotation is int:
        low, high = _bounds(kwargs, int)
        _no_more(name, kwargs)
        return (key, _fastjson.KIND_INT, low, high, (), column, int(required), None)
    if annotation is AwareDatetime:
        low, high = _bounds(kwargs, _epoch_micros)
        _no_more(name, kwargs)
        return (key, _fastjson.KIND_TIME, low, high, (), column, int(required), None)
    raise NotNative(f"{name}: no native kind for {annotation!r}")


def _bounds(kwargs: dict[str, Any], as_int: Callable[[Any], int]) -> tuple[int, int]:
    """Inclusive int64 bounds from pydantic's gt/ge/lt/le, removed from `kwargs`."""
    low, high = int64_min, int64_max
    if "ge" in kwargs:
        low = max(low, as_int(kwargs.pop("ge")))
    if "gt" in kwargs:
        low = max(low, as_int(kwargs.pop("gt")) + 1)
    if "le" in kwargs:
        high = min(high, as_int(kwargs.pop("le")))
    if "lt" in kwargs:
        high = min(high, as_int(kwargs.pop("lt")) - 1)
    if not int64_min <= low <= high <= int64_max:
        raise NotNative(f"bounds {low}..{high} do not fit int64")
    return low, high


def _epoch_micros(moment: datetime) -> int:
    """Microseconds since the epoch, as the native decoder computes event times."""
    return (moment - epoch) // timedelta(microseconds=1)


def _no_more(name: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise NotNative(f"{name} has constraints the native decoder does not check: {sorted(kwargs)}")
