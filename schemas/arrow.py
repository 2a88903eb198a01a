"""Arrow schemas of the ledger's event tables, derived from the pydantic event models.

An event row is the envelope's identity and time, the flattened `data` fields under their own
names, and the position the ingest service read it from. `event_date` (UTC) is derived from
the event time: duplicates of an event share it, so deduplication looks in one date only.
"""

from datetime import datetime
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pyarrow as pa
from pydantic import AwareDatetime, BaseModel

from schemas.events import EventType, event_types

timestamp_type = pa.timestamp("us", tz="UTC")

envelope_fields: list[pa.Field] = [
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("event_time", timestamp_type, nullable=False),
    pa.field("event_date", pa.date32(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
]

# Where a row was read from: a Kafka topic, partition and offset, or for file backfills
# `file:<path>`, partition 0 and the line number. `ingest_batch_id` names the append.
position_fields: list[pa.Field] = [
    pa.field("kafka_topic", pa.string(), nullable=False),
    pa.field("kafka_partition", pa.int32(), nullable=False),
    pa.field("kafka_offset", pa.int64(), nullable=False),
    pa.field("ingest_batch_id", pa.string(), nullable=False),
]


def arrow_type_for(annotation: Any) -> pa.DataType:
    """The Arrow type of one pydantic field annotation."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return arrow_type_for(get_args(annotation)[0])
    if optional_of(annotation) is not None:
        return arrow_type_for(optional_of(annotation))
    if annotation in (AwareDatetime, datetime):
        return timestamp_type
    if annotation is str or origin is Literal:
        return pa.string()
    if annotation is int:
        return pa.int64()
    if origin is list:
        (item,) = get_args(annotation)
        return pa.list_(pa.field("item", arrow_type_for(item), nullable=False))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct(data_fields(annotation))
    raise TypeError(f"no Arrow type for {annotation!r}; extend schemas/arrow.py")


def optional_of(annotation: Any) -> Any:
    """`T` of an optional field's `T | None`, else None."""
    if get_origin(annotation) in (Union, UnionType):
        members = [member for member in get_args(annotation) if member is not NoneType]
        if len(members) == 1 and len(get_args(annotation)) == 2:
            return members[0]
    return None


def data_fields(model: type[BaseModel]) -> list[pa.Field]:
    """One column per field; an optional field (`T | None = None`) is a nullable column."""
    return [
        pa.field(name, arrow_type_for(info.annotation), nullable=optional_of(info.annotation) is not None)
        for name, info in model.model_fields.items()
    ]


def decoded_schema(event_type: EventType) -> pa.Schema:
    """Columns the decoder produces: envelope, data, and the index of each row's message."""
    return pa.schema(
        [
            *envelope_fields,
            *data_fields(event_type.data_model),
            pa.field("message_index", pa.int64(), nullable=False),
        ]
    )


def ledger_schema(event_type: EventType) -> pa.Schema:
    """Columns of the event type's ledger table.

    Optional data fields come last: they were added to the contract later, and a ledger format step
    appends such a column to an existing table, so new and migrated tables have the same column order.
    """
    data = data_fields(event_type.data_model)
    return pa.schema(
        [*envelope_fields, *(f for f in data if not f.nullable), *position_fields, *(f for f in data if f.nullable)]
    )


ledger_schemas: dict[str, pa.Schema] = {
    event_type.table: ledger_schema(event_type) for event_type in event_types.values()
}
