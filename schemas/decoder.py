"""Batch decoding of raw Kafka message values into Arrow tables of valid events.

The fast path decodes with msgspec Structs derived from the pydantic models (`derive.py`).
A message it rejects is handed to pydantic, which is the authority: pydantic either explains
the rejection with the field and the reason, or (where the two parsers differ on an edge of
the format) accepts the message, which is then kept. A message is never dropped silently:
it is either a row of one of the returned tables or one of the rejections.

A JSON object that names a key twice is refused (`duplicate_key`) before either parser sees it:
both keep the last value, while another reader of the same bytes (an upstream validator, an
auditor's tool) may keep the first and see another fee. The native scanner
(`_fastjson.repeated_keys`) clears almost every message at once; `_repeated_key` decides the rest.
"""

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Annotated, Any, Union

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from schemas import limits
from schemas.arrow import decoded_schema, timestamp_type
from schemas.derive import ColumnCheck, Derived
from schemas.errors import SchemaError
from schemas.events import EventType, event_types
from schemas.fields import printable_pattern
from schemas.native_plan import build_native_decoder, repeated_keys_statuses
from schemas.reason_codes import ReasonCode

# The reason codes dead letters for a repeated JSON key and for a time ahead of the clock start with.
duplicate_key_code = ReasonCode.duplicate_key.value
time_in_future_code = ReasonCode.time_in_future.value


def utc_now() -> datetime:
    """The ingest clock: the host's time, in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Rejection:
    """The message at `index` of the batch broke the contract for `error.reason`."""

    index: int
    error: SchemaError


@dataclass
class DecodedBatch:
    """Valid events as one Arrow table per ledger table, and every rejected message."""

    tables: dict[str, pa.Table] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def valid_count(self) -> int:
        return sum(table.num_rows for table in self.tables.values())


class BatchDecoder:
    """Decodes and validates whole batches of CloudEvents JSON messages.

    An event whose envelope `time` is more than `event_time_future_s_max` seconds ahead of `clock()`
    (read once per batch) is refused as `time_in_future`.
    """

    def __init__(
        self,
        use_native: bool = True,
        event_time_future_s_max: int = limits.event_time_future_s_max_default,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not 0 <= event_time_future_s_max <= limits.event_time_future_s_max_limit:
            raise ValueError(
                f"event_time_future_s_max={event_time_future_s_max} "
                f"is outside 0..{limits.event_time_future_s_max_limit}"
            )
        self.event_time_future_s_max = event_time_future_s_max
        self._clock = clock
        derived = Derived()
        self._event_types: dict[type, EventType] = {}
        self._column_checks: dict[type, list[ColumnCheck]] = {}
        for event_type in event_types.values():
            struct = derived.envelope_struct(event_type.envelope_model, tag_field="type")
            self._event_types[struct] = event_type
            self._column_checks[struct] = derived.column_checks[event_type.envelope_model]
        self._struct_by_model = {et.envelope_model: struct for struct, et in self._event_types.items()}
        self._decoder = msgspec.json.Decoder(Union[tuple(self._event_types)])  # type: ignore[misc]  # noqa: UP007
        envelopes = tuple(event_type.envelope_model for event_type in event_types.values())
        self._explainer: TypeAdapter[Any] = TypeAdapter(
            Annotated[Union[envelopes], Field(discriminator="type")]  # type: ignore[misc]  # noqa: UP007
        )
        native = build_native_decoder(list(event_types.values())) if use_native else None
        self._native, self._native_types = native if native is not None else (None, [])

    @property
    def native(self) -> bool:
        """Whether the native fast path (`schemas/_fastjson.c`) is in use."""
        return self._native is not None

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        """Decode `values`; the result accounts for every one of them exactly once.

        A value of None (a Kafka record with a null value) is a rejection like any bad message.
        """
        decode = self._decoder.decode
        grouped: dict[type, tuple[list[int], list[Any]]] = {}
        slow: list[int] = []
        rejections: list[Rejection] = []
        parts: dict[str, list[pa.Table]] = {}
        indexes_left: Iterable[int] = range(len(values))
        if self._native is not None:
            # The native path takes what it is certain of; the rest goes the msgspec way below.
            results, indexes_left = self._native.decode(values)
            for native_type, result in zip(self._native_types, results, strict=True):
                if result is None:
                    continue
                event_type = native_type.event_type
                table = _native_table(event_type, native_type.columns, *result)  # null_columns: all null
                passed = _column_checks_mask(table, native_type.column_checks)
                if passed is not None:
                    slow.extend(table.filter(pc.invert(passed)).column("message_index").to_pylist())
                    table = table.filter(passed)
                parts.setdefault(event_type.table, []).append(table)
        indexes_left = list(indexes_left)
        repeated = _repeated_key_errors(values, indexes_left)
        for index in indexes_left:
            value = values[index]
            if value is None:
                rejections.append(Rejection(index, _no_value))
                continue
            if len(value) > limits.message_bytes_max:
                rejections.append(Rejection(index, _oversize(len(value))))
                continue
            if index in repeated:
                rejections.append(Rejection(index, repeated[index]))
                continue
            try:
                event = decode(value)
            except (msgspec.MsgspecError, ValueError, RecursionError):
                # Besides its own errors msgspec raises UnicodeDecodeError on some invalid UTF-8 and
                # RecursionError on JSON nested deeper than Python's recursion limit: pydantic, the
                # authority, explains each of them.
                slow.append(index)
                continue
            indexes, events = grouped.setdefault(type(event), ([], []))
            indexes.append(index)
            events.append(event)
        for struct, (indexes, events) in grouped.items():
            table = _to_arrow(self._event_types[struct], indexes, events)
            passed = _column_checks_mask(table, self._column_checks[struct])
            if passed is not None:
                slow.extend(table.filter(pc.invert(passed)).column("message_index").to_pylist())
                table = table.filter(passed)
            parts.setdefault(self._event_types[struct].table, []).append(table)
        slow_grouped: dict[type, tuple[list[int], list[Any]]] = {}
        for index in slow:
            accepted, error = self._validate_slowly(values[index])
            if error is not None:
                rejections.append(Rejection(index, error))
                continue
            # pydantic is the authority: where msgspec was stricter, the message is kept.
            struct = self._struct_by_model[type(accepted)]
            indexes, events = slow_grouped.setdefault(struct, ([], []))
            indexes.append(index)
            events.append(msgspec.convert(accepted.model_dump(), struct, from_attributes=True))
        for struct, (indexes, events) in slow_grouped.items():
            parts.setdefault(self._event_types[struct].table, []).append(
                _to_arrow(self._event_types[struct], indexes, events)
            )
        tables = {name: pa.concat_tables(tables) for name, tables in parts.items()}
        tables = self._refuse_future_times(tables, rejections)
        return DecodedBatch(tables, sorted(rejections, key=attrgetter("index")))

    def _time_limit(self) -> tuple[datetime, datetime]:
        now = self._clock()
        return now, now + timedelta(seconds=self.event_time_future_s_max)

    def _refuse_future_times(self, tables: dict[str, pa.Table], rejections: list[Rejection]) -> dict[str, pa.Table]:
        """`tables` without the rows timed past the clock's limit, each of which becomes a rejection.

        One comparison per table on the Arrow column, after both decoding paths, so they cannot disagree.
        """
        now, limit = self._time_limit()
        bound = pa.scalar(limit, type=timestamp_type)
        kept: dict[str, pa.Table] = {}
        for name, table in tables.items():
            future = pc.greater(table.column("event_time"), bound)
            if pc.any(future).as_py():
                refused = table.filter(future)
                # As integers and text: a time past 9999-12-31 in UTC has no Python datetime.
                micros = refused.column("event_time").cast(pa.int64()).to_pylist()
                texts = pc.cast(refused.column("event_time"), pa.string()).to_pylist()
                indexes = refused.column("message_index").to_pylist()
                for index, time_us, text in zip(indexes, micros, texts, strict=True):
                    rejections.append(Rejection(index, self._future_error(text, time_us / 1e6 - now.timestamp(), now)))
                table = table.filter(pc.invert(future))
            kept[name] = table
        return kept

    def _future_error(self, time: str, ahead_s: float, now: datetime) -> SchemaError:
        return SchemaError(
            f"{time_in_future_code}: {time} is {ahead_s:,.0f} s ahead of the ingest clock "
            f"({now.isoformat()}), more than event_time_future_s_max={self.event_time_future_s_max}; "
            "fix the producer's clock and send the event again",
            "time",
            ReasonCode.time_in_future,
        )

    def explain(self, value: bytes | None) -> SchemaError | None:
        """Why `value` breaks the contract, or None when it does not."""
        if value is None:
            return _no_value
        if len(value) > limits.message_bytes_max:
            return _oversize(len(value))
        repeated = _repeated_key_errors([value], [0])
        if repeated:
            return repeated[0]
        accepted, error = self._validate_slowly(value)
        if accepted is not None:
            now, limit = self._time_limit()
            if accepted.time > limit:  # type: ignore[attr-defined]
                # Through Arrow, as `decode` words it (a time past 9999 in UTC has no Python datetime).
                table = pa.table({"event_time": pa.array([accepted.time], timestamp_type)})  # type: ignore[attr-defined]
                time_us = table.column("event_time").cast(pa.int64())[0].as_py()
                text = pc.cast(table.column("event_time"), pa.string())[0].as_py()
                return self._future_error(text, time_us / 1e6 - now.timestamp(), now)
        return error

    def _validate_slowly(self, value: bytes) -> tuple[BaseModel | None, SchemaError | None]:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as error:
            return None, SchemaError(
                f"message is not UTF-8 (bad byte at offset {error.start})", code=ReasonCode.invalid_utf8
            )
        try:
            return self._explainer.validate_json(text), None
        except ValidationError as error:
            return None, _schema_error(error)
        except (ValueError, RecursionError) as error:  # not seen, but bad input must never stop a batch
            return None, SchemaError(
                f"undecodable message ({type(error).__name__}: {str(error)[:200]})", code=ReasonCode.invalid_json
            )


def _repeated_key_errors(values: Sequence[bytes | None], indexes: list[int]) -> dict[int, SchemaError]:
    """The `duplicate_key` error of each message at `indexes` in which a JSON object repeats a key.

    The native scanner answers for almost all at once; only what it is unsure of (escaped keys,
    invalid JSON) or finds repeated is parsed again in Python, to be certain and to name the key.
    """
    candidates = [index for index in indexes if values[index] is not None]
    statuses = repeated_keys_statuses([values[index] for index in candidates])
    errors: dict[int, SchemaError] = {}
    for index, status in zip(candidates, statuses, strict=True):
        if status == 0 or len(values[index]) > limits.message_bytes_max:  # type: ignore[arg-type]
            continue
        error = _repeated_key(values[index])  # type: ignore[arg-type]
        if error is not None:
            errors[index] = error
    return errors


class _RepeatedKey(dict):
    """A decoded JSON object that named `key` more than once."""

    key: str


def _object_of_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            marked = _RepeatedKey(pairs)
            marked.key = name
            return marked
        seen.add(name)
    return dict(pairs)


def _repeated_key(value: bytes) -> SchemaError | None:
    """The `duplicate_key` error when an object of the JSON text `value` repeats a key, else None.

    Text that is not JSON is no concern here: the parsers reject it with their own reason.
    """
    try:
        document = json.loads(value, object_pairs_hook=_object_of_pairs)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[Any, str]] = [(document, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, _RepeatedKey):
            where = f"{path}.{node.key}" if path else node.key
            return SchemaError(
                f"{duplicate_key_code}: the key `{node.key}` appears more than once in one JSON object; "
                "send each key once (readers disagree on which value counts)",
                where,
                ReasonCode.duplicate_key,
            )
        if isinstance(node, dict):
            stack.extend((child, f"{path}.{name}" if path else name) for name, child in node.items())
        elif isinstance(node, list):
            stack.extend((child, f"{path}.{i}") for i, child in enumerate(node))
    return None


_column_of_path = {"id": "event_id", "time": "event_time", "source": "source"}


def _column_checks_mask(table: pa.Table, checks: list[ColumnCheck]) -> pa.Array | None:
    """True for the rows that pass every check, or None when there are no checks."""
    passed = None
    for check in checks:
        column = table.column(_column_of_path.get(check.path) or check.path.removeprefix("data."))
        if check.kind == "pattern":
            ok = pc.match_substring_regex(column, check.value)
        else:
            bound = pa.scalar(check.value, type=column.type)
            ok = getattr(
                pc, {"gt": "greater", "ge": "greater_equal", "lt": "less", "le": "less_equal"}[check.kind]
            )(column, bound)
        passed = ok if passed is None else pc.and_(passed, ok)
    return passed


# A Kafka record whose value is null: a tombstone (compacted topics use them to delete a key).
_no_value = SchemaError(
    "the Kafka record has no value (null, a tombstone); a CloudEvent JSON object was expected",
    code=ReasonCode.missing_value,
)


def _oversize(size_bytes: int) -> SchemaError:
    return SchemaError(
        f"message is {size_bytes} bytes, over the limit of {limits.message_bytes_max} bytes "
        "(schemas.limits.message_bytes_max)",
        code=ReasonCode.message_too_large,
    )


def _schema_error(error: ValidationError) -> SchemaError:
    first = error.errors(include_url=False)[0]
    kind, location, message = first["type"], list(first["loc"]), first["msg"]
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", message)
        truncated = str(detail).startswith("EOF while parsing")
        return SchemaError(
            f"invalid JSON: {detail}", code=ReasonCode.truncated_json if truncated else ReasonCode.invalid_json
        )
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        known = ", ".join(sorted(event_types))
        if kind == "union_tag_not_found":
            return SchemaError(f"missing; expected one of {known}", "type", ReasonCode.field_missing)
        return SchemaError(
            f"unknown event type {first['input'].get('type')!r}; expected one of {known}",
            "type",
            ReasonCode.unknown_event_type,
        )
    if kind in ("model_attributes_type", "dict_type") and not location:
        return SchemaError(
            f"a CloudEvent must be a JSON object, got {type(first['input']).__name__}", code=ReasonCode.not_an_object
        )
    if location and location[0] in event_types:
        location = location[1:]
    path = ".".join(str(part) for part in location) or None
    code = _field_codes.get(kind, ReasonCode.field_invalid)
    if kind == "extra_forbidden":
        message = "unknown field; the contract forbids fields it does not define"
    if kind == "string_pattern_mismatch" and first.get("ctx", {}).get("pattern") == printable_pattern:
        message = "must not contain control characters (U+0000 to U+001F, U+007F)"
    extra = f" ({len(error.errors())} errors in all)" if error.error_count() > 1 else ""
    return SchemaError(message.removeprefix("Value error, ") + extra, path, code)


_field_codes = {"missing": ReasonCode.field_missing, "extra_forbidden": ReasonCode.unknown_field}


def _to_arrow(event_type: EventType, indexes: list[int], events: list[Any]) -> pa.Table:
    schema = decoded_schema(event_type)
    data = [event.data for event in events]
    times = pa.array([event.time for event in events], type=schema.field("event_time").type)
    columns: dict[str, pa.Array] = {
        "event_id": pa.array([event.id for event in events], type=pa.string()),
        "event_time": times,
        "event_date": pc.cast(times, pa.date32()),
        "source": pa.array([event.source for event in events], type=pa.string()),
    }
    for name in event_type.data_model.model_fields:
        arrow_type = schema.field(name).type
        values = list(map(attrgetter(name), data))
        if pa.types.is_list(arrow_type):
            values = msgspec.to_builtins(values)
        columns[name] = pa.array(values, type=arrow_type)
    columns["message_index"] = pa.array(indexes, type=pa.int64())
    return pa.Table.from_pydict(columns, schema=schema)


def _native_table(
    event_type: EventType, columns: list[str], count: int, message_indexes: bytes, buffers: list[Any]
) -> pa.Table:
    """The native decoder's buffers as a table of the decoded schema, without copying."""
    schema = decoded_schema(event_type)
    arrays: dict[str, pa.Array] = {}
    for name, buffer in zip(columns, buffers, strict=True):
        arrow_type = schema.field(name).type
        if isinstance(buffer, tuple):  # a string column: int32 offsets and UTF-8 data
            offsets, data = buffer
            arrays[name] = pa.Array.from_buffers(arrow_type, count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
        else:
            arrays[name] = pa.Array.from_buffers(arrow_type, count, [None, pa.py_buffer(buffer)])
    arrays["event_date"] = pc.cast(arrays["event_time"], pa.date32())
    for name in schema.names:
        if name not in arrays and name != "message_index":  # an optional field the native path saw absent
            arrays[name] = pa.nulls(count, schema.field(name).type)
    arrays["message_index"] = pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(message_indexes)])
    return pa.Table.from_pydict({name: arrays[name] for name in schema.names}, schema=schema)
