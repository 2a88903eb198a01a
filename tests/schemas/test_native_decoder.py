"""The native fast path (`schemas/_fastjson.c`) changes nothing but speed.

Every test decodes the same bytes with and without the native path and requires the very same
tables and rejections: the native code only ever accepts what pydantic accepts, with the same
values, and leaves everything else to the Python path.
"""

import json
import os
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import BatchDecoder
from schemas.char_class import compile_char_class_pattern
from schemas.decoder import DecodedBatch
from schemas.fields import identifier_pattern, printable_pattern
from schemas.limits import message_bytes_max
from schemas.native_plan import native_available
from tests.conftest import examples
from tests.strategies import encode, event_type_names, valid_event

pytestmark = pytest.mark.skipif(
    not native_available() and not os.environ.get("CI"), reason="schemas._fastjson not built (no C compiler)"
)

# One clock reading for both, so that a `time_in_future` reason (which quotes the clock) reads the same.
_started = datetime.now(UTC)
with_native = BatchDecoder(clock=lambda: _started)
without_native = BatchDecoder(use_native=False, clock=lambda: _started)

metered = (
    b'{"specversion":"1.0","id":"01a205b3-d02a-7651-8317-1ff4a6a3a450","source":"//gateway.example/eu-west-1",'
    b'"type":"ai.inference.metered.v1","time":"2026-11-23T00:00:00.042445Z","datacontenttype":"application/json",'
    b'"data":{"model_id":"model-0001","request_id":"req_1818e811892f902b","payer":"org-02995",'
    b'"compute_provider":"gpu-018","input_tokens":3902,"output_tokens":309,"fee_micros":16348,"asset":"USDC"}}'
)
reversed_event = (
    b'{"specversion":"1.0","id":"rev-1","source":"//billing","type":"ai.inference.reversed.v1",'
    b'"time":"2026-11-23T10:00:00+02:00","data":{"original_event_id":"ev-1","reason":"refund"}}'
)


def test_fastjson_extension_is_built_in_ci() -> None:
    """CI must test the native path, never silently the fallback."""
    if os.environ.get("CI"):
        import schemas._fastjson  # noqa: F401

        assert with_native.native


def _outcome(batch: DecodedBatch) -> tuple[dict, list]:
    tables = {name: table.sort_by("message_index") for name, table in batch.tables.items() if table.num_rows}
    rejections = [(rejection.index, str(rejection.error)) for rejection in batch.rejections]
    return tables, rejections


def assert_same_outcome(values: list[bytes]) -> DecodedBatch:
    native, python = with_native.decode(values), without_native.decode(values)
    native_tables, native_rejections = _outcome(native)
    python_tables, python_rejections = _outcome(python)
    assert native_tables.keys() == python_tables.keys()
    for name, table in native_tables.items():
        assert table.equals(python_tables[name]), name
    assert native_rejections == python_rejections
    return native


def natively_accepted(value: bytes) -> bool:
    _, deferred = with_native._native.decode([value])
    return not deferred


def _replaced(old: bytes, new: bytes, base: bytes = metered) -> bytes:
    assert old in base, old
    return base.replace(old, new, 1)


# (what, message, whether the native path itself takes it)
edge_cases = [
    ("canonical metered", metered, True),
    ("reversed, offset time, optional datacontenttype absent", reversed_event, True),
    ("whitespace everywhere", json.dumps(json.loads(metered), indent=2).encode(), True),
    ("data before type", json.dumps(dict(reversed(list(json.loads(metered).items())))).encode(), True),
    ("non-ASCII id", _replaced(b'"id":"01a2', '"id":"é€😀01a2'.encode()), True),
    ("DEL in id", _replaced(b'"id":"01a2', b'"id":"\x7f01a2'), False),
    ("non-ASCII model id", _replaced(b'"model-0001"', '"modèle"'.encode()), False),
    ("model id starting with a dot", _replaced(b'"model-0001"', b'".model"'), False),
    ("escaped id", _replaced(b'"id":"01a2', b'"id":"\\u00e901a2'), True),
    ("escaped slash in source", _replaced(b'"//gateway', b'"\\/\\/gateway'), True),
    ("escaped NUL in id", _replaced(b'"id":"01a2', b'"id":"\\u000001a2'), False),
    ("escaped emoji (surrogate pair) in id", _replaced(b'"id":"01a2', b'"id":"\\ud83d\\ude0001a2'), True),
    ("escaped letters in model id", _replaced(b'"model-0001"', b'"\\u006Dodel-\\u0030001"'), True),
    ("escaped quote and backslash in id", _replaced(b'"id":"01a2', b'"id":"\\"\\\\01a2'), True),
    ("escaped newline in id", _replaced(b'"id":"01a2', b'"id":"\\n01a2'), False),
    ("escaped tab in reason", _replaced(b'"refund"', b'"ref\\tund"', reversed_event), False),
    ("escaped literal", _replaced(b'"refund"', b'"\\u0072efund"', reversed_event), True),
    ("escaped time", _replaced(b'"2026-11-23T', b'"2026\\u002d11-23T'), True),
    ("unknown escape", _replaced(b'"id":"01a2', b'"id":"\\x4101a2'), False),
    ("short unicode escape", _replaced(b'"id":"01a2', b'"id":"\\u12"'), False),
    ("high surrogate then a letter", _replaced(b'"id":"01a2', b'"id":"\\ud83dA01a2'), False),
    ("low surrogate alone", _replaced(b'"id":"01a2', b'"id":"\\ude0001a2'), False),
    ("escaped key", _replaced(b'"source":', b'"sourc\\u0065":'), False),
    ("escaped key in data", _replaced(b'"payer":', b'"p\\u0061yer":'), False),
    ("escape in skipped data before type", json.dumps(
        dict(reversed(list(json.loads(metered).items()))), ensure_ascii=True
    ).encode().replace(b'"model-0001"', b'"\\u006dodel-0001"'), True),
    ("model id of 128 characters, escaped", _replaced(b'"model-0001"', b'"' + b"\\u006d" * 128 + b'"'), True),
    ("model id of 129 characters, escaped", _replaced(b'"model-0001"', b'"' + b"\\u006d" * 129 + b'"'), False),
    ("lone surrogate", _replaced(b'"id":"01a2', b'"id":"\\ud80001a2'), False),
    ("raw control byte", _replaced(b'"id":"01a2', b'"id":"\x0101a2'), False),
    ("overlong UTF-8", _replaced(b'"id":"01a2', b'"id":"\xc0\xaf01a2'), False),
    ("encoded surrogate", _replaced(b'"id":"01a2', b'"id":"\xed\xa0\x8001a2'), False),
    ("invalid byte", _replaced(b'"id":"01a2', b'"id":"\xff01a2'), False),
    ("truncated UTF-8", _replaced(b'"id":"01a2', b'"id":"\xe2\x82'), False),
    ("past U+10FFFF", _replaced(b'"id":"01a2', b'"id":"\xf4\x90\x80\x8001a2'), False),
    ("offset +05:30", _replaced(b"00.042445Z", b"00.042445+05:30"), True),
    ("offset -00:00", _replaced(b"00.042445Z", b"00.042445-00:00"), True),
    ("no fraction", _replaced(b"00.042445Z", b"00Z"), True),
    ("one fraction digit", _replaced(b"00.042445Z", b"00.5Z"), True),
    ("leap day", _replaced(b"2026-11-23", b"2024-02-29"), True),
    ("not a leap day", _replaced(b"2026-11-23", b"2026-02-29"), False),
    ("seven fraction digits", _replaced(b"00.042445Z", b"00.0424451Z"), False),
    ("empty fraction", _replaced(b"00.042445Z", b"00.Z"), False),
    ("lowercase z", _replaced(b"00.042445Z", b"00.042445z"), False),
    ("space separator", _replaced(b"2026-11-23T", b"2026-11-23 "), False),
    ("no zone", _replaced(b"00.042445Z", b"00.042445"), False),
    ("offset without colon", _replaced(b"00.042445Z", b"00.042445+0530"), False),
    ("offset +24:00", _replaced(b"00.042445Z", b"00.042445+24:00"), False),
    ("hour 24", _replaced(b"T00:00:00", b"T24:00:00"), False),
    ("leap second", _replaced(b"T00:00:00", b"T23:59:60"), False),
    ("month 13", _replaced(b"2026-11-23", b"2026-13-23"), False),
    ("day 0", _replaced(b"2026-11-23", b"2026-11-00"), False),
    ("before the year 2000", _replaced(b"2026-11-23", b"1999-12-31"), False),
    ("2000 in UTC, 1999 locally", _replaced(b"2026-11-23T00:00:00.042445Z", b"1999-12-31T23:01:00-01:00"), True),
    ("just before 2000 in UTC", _replaced(b"2026-11-23T00:00:00.042445Z", b"2000-01-01T00:59:59+01:00"), False),
    ("year 9999", _replaced(b"2026-11-23", b"9999-12-31"), True),
    ("year 0", _replaced(b"2026-11-23", b"0000-12-31"), False),
    ("float fee", _replaced(b"16348", b"16348.0"), False),
    ("exponent fee", _replaced(b"16348", b"1e3"), False),
    ("negative zero tokens", _replaced(b":309", b":-0"), True),
    ("leading zero", _replaced(b"16348", b"016348"), False),
    ("zero fee", _replaced(b"16348", b"0"), False),
    ("negative fee", _replaced(b"16348", b"-5"), False),
    ("fee at the bound", _replaced(b"16348", str(10**12).encode()), True),
    ("fee past the bound", _replaced(b"16348", str(10**12 + 1).encode()), False),
    ("huge fee", _replaced(b"16348", b"123456789012345678901234567890"), False),
    ("boolean fee", _replaced(b"16348", b"true"), False),
    ("string fee", _replaced(b"16348", b'"16348"'), False),
    ("null payer", _replaced(b'"org-02995"', b"null"), False),
    ("empty model id", _replaced(b'"model-0001"', b'""'), False),
    ("model id of 128 characters", _replaced(b'"model-0001"', b'"' + b"m" * 128 + b'"'), True),
    ("model id of 129 characters", _replaced(b'"model-0001"', b'"' + b"m" * 129 + b'"'), False),
    ("asset in lowercase", _replaced(b'"USDC"', b'"usdc"'), False),
    ("duplicate key", _replaced(b'"payer":"org-02995"', b'"payer":"org-1","payer":"org-02995"'), False),
    ("duplicate envelope key", _replaced(b'"specversion":"1.0"', b'"specversion":"1.0","specversion":"1.0"'), False),
    ("unknown data key", _replaced(b'"asset":"USDC"', b'"asset":"USDC","extra":1'), False),
    ("unknown envelope key", _replaced(b'"specversion":"1.0"', b'"specversion":"1.0","ext":"x"'), False),
    ("missing payer", _replaced(b'"payer":"org-02995",', b""), False),
    ("other content type", _replaced(b'"application/json"', b'"text/plain"'), False),
    ("specversion 1.1", _replaced(b'"1.0"', b'"1.1"'), False),
    ("reason not a literal", _replaced(b'"refund"', b'"because"', reversed_event), False),
    ("trailing comma", _replaced(b'"USDC"}}', b'"USDC",}}'), False),
    ("trailing garbage", metered + b"x", False),
    ("trailing whitespace", metered + b" \n", True),
    ("two objects", metered + metered, False),
    ("byte order mark", b"\xef\xbb\xbf" + metered, False),
    ("truncated", metered[:-1], False),
    ("empty", b"", False),
    ("null", b"null", False),
    ("array", b"[" + metered + b"]", False),
    ("data is an array", _replaced(b'"data":{', b'"data":[{', metered)[:-1] + b"]}", False),
    ("deep nesting in data", _replaced(b'"asset":"USDC"', b'"asset":"USDC","x":' + b"[" * 5000 + b"]" * 5000), False),
    ("registry event", encode({
        "specversion": "1.0", "id": "c-1", "source": "//registry", "type": "ai.contributor.registered.v1",
        "time": "2026-11-23T00:00:00Z",
        "data": {"contributor_id": "alice", "payout_address": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"},
    }), False),
    ("unknown type", _replaced(b"ai.inference.metered.v1", b"ai.inference.metered.v2"), False),
    ("over the size limit", _replaced(b'"model-0001"', b'"' + b"m" * message_bytes_max + b'"'), False),
]


@pytest.mark.parametrize(("what", "value", "native"), edge_cases, ids=[case[0] for case in edge_cases])
def test_an_edge_case_has_the_same_outcome_with_and_without_the_native_path(
    what: str, value: bytes, native: bool
) -> None:
    assert natively_accepted(value) == native, what
    assert_same_outcome([metered, value, reversed_event])


def test_every_edge_case_in_one_batch_has_the_same_outcome() -> None:
    batch = assert_same_outcome([value for _, value, _ in edge_cases])
    assert batch.valid_count >= sum(native for _, _, native in edge_cases)


@settings(max_examples=examples(300))
@given(st.lists(st.sampled_from(event_type_names).flatmap(valid_event), min_size=1, max_size=30))
def test_generated_valid_events_decode_the_same_and_mostly_natively(events: list[dict]) -> None:
    values = [encode(event) for event in events]
    batch = assert_same_outcome(values)
    assert batch.valid_count == len(values)


@settings(max_examples=examples(200))
@given(st.lists(st.sampled_from(event_type_names).flatmap(valid_event), min_size=1, max_size=30))
def test_generated_events_with_every_non_ascii_character_escaped_decode_the_same(events: list[dict]) -> None:
    """As Python's `json.dumps` writes by default: `\\uXXXX` escapes, surrogate pairs beyond the BMP."""
    values = [json.dumps(event, ensure_ascii=True).encode() for event in events]
    batch = assert_same_outcome(values)
    assert batch.valid_count == len(values)


@settings(max_examples=examples(300))
@given(st.sampled_from(event_type_names).flatmap(valid_event), st.data())
def test_generated_events_with_a_byte_changed_decode_the_same(event: dict, data: st.DataObject) -> None:
    value = bytearray(encode(event))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(value) - 1))
        value[position] = data.draw(st.sampled_from(b'"\\{}[],:0129.-+eETZ xau/\x00\x7f\x80\xc3\xff'))
    assert_same_outcome([bytes(value), encode(event)])


def test_random_corruptions_of_a_metered_event_decode_the_same() -> None:
    rng = random.Random(20261124)
    values = []
    escaped = metered.replace(b'"org-02995"', b'"org-\\u0030\\u00322995"').replace(b"//", b"\\/\\/")
    assert natively_accepted(escaped)
    for _ in range(5_000):
        value = bytearray(rng.choice([metered, escaped]))
        for _ in range(rng.randint(1, 4)):
            choice = rng.random()
            position = rng.randrange(len(value))
            if choice < 0.5:
                value[position] = rng.randrange(256)
            elif choice < 0.75:
                del value[position]
            else:
                value.insert(position, rng.randrange(256))
        values.append(bytes(value))
    assert_same_outcome(values)


@pytest.mark.parametrize("pattern", [identifier_pattern, printable_pattern, r"^[A-Z0-9][A-Z0-9.-]*$"])
@given(text=st.text(max_size=12))
def test_a_compiled_character_class_pattern_matches_what_the_regex_matches(pattern: str, text: str) -> None:
    import re

    compiled = compile_char_class_pattern(pattern)
    assert compiled is not None
    encoded = text.encode("utf-8", "surrogatepass")
    matched = True
    rest = encoded
    if compiled.first is not None:
        matched = bool(encoded) and bool(compiled.first[encoded[0]])
        rest = encoded[len(text[:1].encode("utf-8", "surrogatepass")) :]
    matched = matched and len(rest) >= compiled.rest_min and all(compiled.rest[byte] for byte in rest)
    assert matched == bool(re.fullmatch(pattern.removesuffix("$") + r"\Z", text))


@pytest.mark.parametrize("pattern", [r"^\d+$", r"^[a-z]{3}$", r"^[a&&b]+$", r"^[é]+$", r"^ab$", r"^[a-z]+"])
def test_other_patterns_are_left_to_the_regex_engine(pattern: str) -> None:
    assert compile_char_class_pattern(pattern) is None


# The ingest clock of the time-in-future tests: `metered` is dated 42 ms after it.
clock_now = datetime(2026, 11, 23, tzinfo=UTC)
clocked_native = BatchDecoder(event_time_future_s_max=300, clock=lambda: clock_now)
clocked_python = BatchDecoder(use_native=False, event_time_future_s_max=300, clock=lambda: clock_now)


def _assert_same_clocked_outcome(values: list[bytes]) -> DecodedBatch:
    native, python = clocked_native.decode(values), clocked_python.decode(values)
    assert _outcome(native)[1] == _outcome(python)[1]
    for name, table in _outcome(native)[0].items():
        assert table.equals(_outcome(python)[0][name]), name
    return native


future_cases = [
    ("at the limit", b"2026-11-23T00:05:00Z", True),
    ("at the limit, offset", b"2026-11-23T05:35:00+05:30", True),
    ("a microsecond past", b"2026-11-23T00:05:00.000001Z", False),
    ("a microsecond past, offset", b"2026-11-22T18:35:00.000001-05:30", False),
    ("year 9999", b"9999-12-31T23:59:59Z", False),
    ("past 9999 in UTC", b"9999-12-31T23:59:59.999999-23:59", False),
    ("an hour before the clock", b"2026-11-22T23:00:00Z", True),
]


@pytest.mark.parametrize(("what", "time", "kept"), future_cases, ids=[case[0] for case in future_cases])
def test_a_time_ahead_of_the_clock_has_the_same_outcome_with_and_without_the_native_path(
    what: str, time: bytes, kept: bool
) -> None:
    """Pins the time bound on both paths: the native plan's static time bounds and the clock's limit
    (checked on the Arrow column after both paths) give one outcome, `time_in_future` past the limit."""
    value = _replaced(b"2026-11-23T00:00:00.042445Z", time)
    batch = _assert_same_clocked_outcome([metered, value])
    assert batch.valid_count == 1 + kept
    if not kept:
        (rejection,) = batch.rejections
        assert rejection.error.field == "time" and rejection.error.reason.startswith("time_in_future: ")
        assert str(clocked_python.explain(value)) == str(rejection.error)


@settings(max_examples=examples(200))
@given(
    ahead_us=st.integers(-10**9, 10**9),
    offset_minutes=st.sampled_from([0, 330, -330, 23 * 60 + 59, -(23 * 60 + 59)]),
)
def test_generated_times_around_the_clock_limit_decode_the_same(ahead_us: int, offset_minutes: int) -> None:
    """Property: for any time within ±1000 s of the limit, in any offset, both paths agree, and the
    event is kept exactly when it is at most event_time_future_s_max ahead of the clock."""
    moment = clock_now + timedelta(seconds=300, microseconds=ahead_us)
    zone = timezone(timedelta(minutes=offset_minutes))
    text = moment.astimezone(zone).isoformat().replace("+00:00", "Z").encode()
    batch = _assert_same_clocked_outcome([_replaced(b"2026-11-23T00:00:00.042445Z", text)])
    assert batch.valid_count == (1 if ahead_us <= 0 else 0)
