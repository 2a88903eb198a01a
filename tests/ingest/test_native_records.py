"""`ingest._kafka_records.decode_records` parses record batches exactly as kafka-python does, and rejects bad input.

Batches are built with kafka-python's own builders and parsed both ways, record by record;
malformed sections must raise ValueError (never crash, never read past the buffer).
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.record.memory_records import MemoryRecords

from tests.support.record_batches import (
    CODEC_GZIP,
    CODEC_NONE,
    OFFSET_MIN,
    Spec,
    native_records,
    records_section,
    stock_records,
    v2_batch,
)

kafka_records = pytest.importorskip("ingest._kafka_records", reason="the native record decoder is not built")
decode_records = kafka_records.decode_records

MIB = 1024 * 1024


def only_batch(buffer: bytes):
    batch = MemoryRecords(buffer).next_batch()
    assert batch is not None
    return batch


def section_of(specs: list[Spec], codec: int = CODEC_NONE) -> tuple[bytes, int]:
    batch = only_batch(v2_batch(specs, codec=codec))
    return bytes(records_section(batch)), batch.records_count


def test_keys_headers_null_and_empty_values_parse_as_kafka_python_does() -> None:
    """Pins the field handling: keys and headers skipped, null value None, empty value b''."""
    specs = [
        Spec(b"key", b"value", [("trace", b"abc"), ("empty", b""), ("null", None)]),
        Spec(None, None),
        Spec(b"", b""),
        Spec(None, b"\x00\xff" * 100, [("h" * 300, b"v" * 300)]),
        Spec(b"k" * 200, None, [("a", None)] * 50),
    ]
    buffer = v2_batch(specs, base_offset=1_000)
    assert native_records(buffer) == stock_records(buffer)
    assert [value for _, value in native_records(buffer)] == [s.value for s in specs]


def test_large_values_up_to_one_mebibyte_parse_intact() -> None:
    """Pins multi-byte length varints: values of 127/128 bytes, 16 KiB+1 and 1 MiB round-trip."""
    specs = [Spec(None, bytes([n % 251]) * n) for n in (127, 128, 16_385, 300_000, MIB)]
    buffer = v2_batch(specs, base_offset=7)
    assert native_records(buffer) == stock_records(buffer)


def test_many_records_and_several_batches_in_one_buffer() -> None:
    """Pins offsets across batches: base offsets, gaps (compaction) and 10,000-record batches."""
    rng = random.Random(7)
    buffer = b"".join(
        [
            v2_batch([Spec(None, b"%d" % i) for i in range(10_000)], base_offset=0),
            v2_batch([Spec(b"k", rng.randbytes(rng.randrange(0, 600))) for _ in range(500)], base_offset=10_000),
            v2_batch([Spec(None, b"gap")] * 20, base_offset=20_000, offset_step=3),
        ]
    )
    native = native_records(buffer)
    assert native == stock_records(buffer)
    assert len(native) == 10_520
    assert native[-1][0] == 20_000 + 19 * 3


def test_gzip_batches_parse_as_kafka_python_does() -> None:
    """Pins the decompressed path: gzip batches (the only codec installed here) with mixed records."""
    specs = [Spec(None if i % 3 else b"key", None if i % 7 == 0 else b'{"event": %d}' % i) for i in range(2_000)]
    buffer = v2_batch(specs, base_offset=500, codec=CODEC_GZIP) + v2_batch(specs[:10], base_offset=2_500)
    assert only_batch(buffer).compression_type == CODEC_GZIP
    assert native_records(buffer) == stock_records(buffer)


def test_records_below_min_offset_are_left_out_only_while_leading() -> None:
    """Pins kafka-python's dropwhile: leading records below the fetch offset go, later ones all stay."""
    buffer = v2_batch([Spec(None, b"%d" % i) for i in range(10)], base_offset=100)
    assert native_records(buffer, min_offset=104) == stock_records(buffer)[4:]
    assert native_records(buffer, min_offset=200) == []
    section = records_section(only_batch(buffer))
    kept, body_bytes, last_offset = decode_records(section, 10, 100, 200)
    assert (kept, last_offset) == ([], 109)
    assert body_bytes == sum(record.size_in_bytes for record in only_batch(buffer))


def test_record_is_a_small_tuple_with_offset_and_value() -> None:
    """Pins the record type the Kafka source reads: attribute and index access, hashable, immutable."""
    section, count = section_of([Spec(None, b"v")])
    (record,), _, _ = decode_records(section, count, 42, OFFSET_MIN)
    assert (record.offset, record.value) == (42, b"v") == tuple(record)
    assert record == kafka_records.Record((42, b"v"))


@pytest.mark.parametrize(
    ("section", "count", "message"),
    [
        (b"", 1, "truncated record length varint"),
        (b"\x80\x80", 1, "truncated record length varint"),
        (b"\xff\xff\xff\xff\x7f", 1, "overlong record length varint"),
        (b"\xff\xff\xff\xff\xff\x01", 1, "overlong record length varint"),
        (b"\x01", 1, "record length -1 is not within"),
        (b"\x00", 1, "record length 0 is not within"),
        (b"\x14\x00", 1, "record length 10 is not within 1..1"),
        (b"", -1, "negative record count"),
        (b"\x02\x00", 1, "truncated timestamp delta varint"),
        (b"\x16\x00" + b"\xff" * 9 + b"\x02", 1, "overlong timestamp delta varint"),
        (b"\x0a\x00\x00\x00\x06\x00", 1, "key of 3 bytes overruns the record"),
        (b"\x0c\x00\x00\x00\x01\x01\x01", 1, "header count -1 is not within"),
        (b"\x10\x00\x00\x00\x01\x01\x02\x01\x00", 1, "header 0 has a negative key length"),
        (b"\x10\x00\x00\x00\x01\x01\x02\x00\x06", 1, "header value of 3 bytes overruns"),
        (b"\x10\x00\x00\x00\x01\x01\x00\x00\x00", 1, "record length says 8 bytes but its fields take 6"),
        (b"\x0c\x00\x00\x00\x01\x01\x00\x00", 1, "1 unconsumed bytes after the last of 1 records"),
    ],
)
def test_malformed_sections_raise_a_value_error_saying_what_and_where(section: bytes, count: int, message: str) -> None:
    """Pins each structural check and its message (record index and byte position are in every one)."""
    with pytest.raises(ValueError, match=message):
        decode_records(section, count, 0, OFFSET_MIN)


def test_offset_overflow_is_rejected() -> None:
    """Pins the 64-bit offset arithmetic: base offset + delta past 2**63 - 1 is malformed, not wrapped."""
    section, count = section_of([Spec(None, b"a"), Spec(None, b"b")])
    with pytest.raises(ValueError, match="overflows 64 bits"):
        decode_records(section, count, 2**63 - 1, OFFSET_MIN)


def test_any_buffer_is_accepted_and_non_buffers_are_refused() -> None:
    """Pins the argument types: bytes, bytearray and memoryview work; str is a TypeError."""
    section, count = section_of([Spec(None, b"a")])
    for form in (section, bytearray(section), memoryview(section)):
        assert decode_records(form, count, 0, OFFSET_MIN)[0][0].value == b"a"
    with pytest.raises(TypeError):
        decode_records("text", 1, 0, OFFSET_MIN)


headers = st.lists(st.tuples(st.text(max_size=12), st.none() | st.binary(max_size=24)), max_size=4)
specs = st.builds(Spec, st.none() | st.binary(max_size=40), st.none() | st.binary(max_size=400), headers)
batches = st.lists(
    st.tuples(st.lists(specs, min_size=1, max_size=40), st.sampled_from([CODEC_NONE, CODEC_GZIP]), st.integers(1, 3)),
    min_size=1,
    max_size=4,
)


@given(batches=batches, base=st.integers(0, 2**40), skip=st.integers(0, 60))
def test_native_and_kafka_python_agree_on_generated_batches(batches: list, base: int, skip: int) -> None:
    """Property: any records, batched and compressed any way, parse the same both ways, skip included."""
    parts = []
    for records, codec, step in batches:
        parts.append(v2_batch(records, base_offset=base, codec=codec, offset_step=step))
        base += len(records) * step + 1
    buffer = b"".join(parts)
    stock = stock_records(buffer)
    assert native_records(buffer) == stock
    first = stock[0][0] + skip
    assert native_records(buffer, min_offset=first) == [r for r in stock if r[0] >= first] or first > stock[-1][0]


def parse_or_value_error(section: bytes, count: int) -> None:
    try:
        kept, _, _ = decode_records(section, count, 0, OFFSET_MIN)
    except ValueError:
        return
    assert len(kept) == count


@given(section=st.binary(max_size=300), count=st.integers(-2, 40))
def test_random_sections_never_crash(section: bytes, count: int) -> None:
    """Fuzz: arbitrary bytes either parse to `count` records or raise ValueError."""
    parse_or_value_error(section, count)


@given(records=st.lists(specs, min_size=1, max_size=8), data=st.data())
def test_truncated_and_bit_flipped_sections_never_crash(records: list[Spec], data: st.DataObject) -> None:
    """Fuzz: a valid section cut short, or with bits flipped, parses or raises ValueError, nothing else."""
    section, count = section_of(records)
    cut = data.draw(st.integers(0, len(section)))
    parse_or_value_error(section[:cut], count)
    flipped = bytearray(section)
    for position in data.draw(st.lists(st.integers(0, len(section) - 1), min_size=1, max_size=6)):
        flipped[position] ^= 1 << data.draw(st.integers(0, 7))
    parse_or_value_error(bytes(flipped), count)
    parse_or_value_error(bytes(flipped), data.draw(st.integers(0, count + 2)))


def test_truncation_at_every_byte_of_a_header_rich_section_raises() -> None:
    """Pins the bounds checks exhaustively for one section: every strict prefix is malformed."""
    section, count = section_of([Spec(b"key", b"x" * 200, [("a", b"1"), ("b", None)]), Spec(None, None)])
    for cut in range(len(section)):
        with pytest.raises(ValueError):
            decode_records(section[:cut], count, 0, OFFSET_MIN)
    assert struct.calcsize(">q") == 8  # the section carries no batch header: offsets come from the argument
