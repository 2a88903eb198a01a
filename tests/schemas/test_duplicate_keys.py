"""A JSON object that names a key twice is refused as `duplicate_key`, by both decoders, at any depth.

Before, both parsers kept the last value (`"fee_micros":100,"fee_micros":999999` stored 999999), while
a reader that keeps the first (an upstream validator, an auditor's tool) would see another fee.
"""

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import Ledger, define_views, run_query
from schemas import BatchDecoder
from schemas.decoder import duplicate_key_code
from schemas.native_plan import native_available
from tests.conftest import examples
from tests.ledger.helpers import batch_of
from tests.strategies import event_type_names, valid_event

with_native = BatchDecoder()
without_native = BatchDecoder(use_native=False)

metered = (
    b'{"specversion":"1.0","id":"ev-1","source":"//gateway.example/eu","type":"ai.inference.metered.v1",'
    b'"time":"2026-11-23T00:00:00Z","data":{"model_id":"model-0001","request_id":"req-1","payer":"org-1",'
    b'"compute_provider":"gpu-1","input_tokens":10,"output_tokens":20,"fee_micros":100,"asset":"USDC"}}'
)
policy = (
    b'{"specversion":"1.0","id":"pol-1","source":"//registry","type":"ai.split-policy.set.v1",'
    b'"time":"2026-11-23T00:00:00Z","data":{"model_id":"m","effective_from":"2026-11-23T00:00:00Z",'
    b'"compute_share_ppm":0,"shares":[{"recipient":"alice","share_ppm":500000},'
    b'{"recipient":"bob","share_ppm":500000}]}}'
)


def _replaced(base: bytes, old: bytes, new: bytes) -> bytes:
    assert old in base, old
    return base.replace(old, new, 1)


repeated = [
    ("data field, last value larger", _replaced(metered, b'"fee_micros":100', b'"fee_micros":100,"fee_micros":999999'),
     "data.fee_micros"),
    ("data field, last value invalid", _replaced(metered, b'"fee_micros":100', b'"fee_micros":100,"fee_micros":-1'),
     "data.fee_micros"),
    ("envelope field", _replaced(metered, b'"source":', b'"source":"//other","source":'), "source"),
    ("envelope id", _replaced(metered, b'"id":"ev-1"', b'"id":"ev-1","id":"ev-2"'), "id"),
    ("key written with an escape", _replaced(metered, b'"fee_micros":100', b'"fee_micros":100,"fee\\u005fmicros":9'),
     "data.fee_micros"),
    ("data before type", b'{"data":{"asset":"USDC","asset":"EURC"},' + metered[1:metered.index(b',"data"')] + b"}",
     "data.asset"),
    ("data object twice", _replaced(metered, b'"data":', b'"data":{},"data":'), "data"),
    ("nested object in a list", _replaced(policy, b'"recipient":"bob"', b'"recipient":"mallory","recipient":"bob"'),
     "data.shares.1.recipient"),
    ("repeat after more keys than the native scanner compares",
     _replaced(metered, b'"asset":"USDC"', b'"asset":"USDC",' + b",".join(b'"x%d":1' % i for i in range(80))
               + b',"fee_micros":5'), "data.fee_micros"),
]


@pytest.mark.parametrize("decoder", [with_native, without_native], ids=["native", "python"])
@pytest.mark.parametrize(("what", "value", "path"), repeated, ids=[case[0] for case in repeated])
def test_a_repeated_key_is_refused_by_both_decoders(decoder: BatchDecoder, what: str, value: bytes, path: str) -> None:
    """Pins the refusal: no table row, one rejection whose reason starts with the code and names the key's path."""
    batch = decoder.decode([metered, value, policy])
    assert batch.valid_count == 2
    (rejection,) = batch.rejections
    assert rejection.index == 1
    assert rejection.error.reason.startswith(f"{duplicate_key_code}: ")
    assert rejection.error.field == path
    assert str(decoder.explain(value)) == str(rejection.error)


def test_the_same_key_in_different_objects_is_not_a_repeat() -> None:
    """Pins what is not refused: `model_id` in data and `recipient` in each share are keys of distinct objects."""
    for decoder in (with_native, without_native):
        batch = decoder.decode([metered, policy])
        assert (batch.valid_count, batch.rejections) == (2, [])


@pytest.mark.skipif(not native_available(), reason="schemas._fastjson not built (no C compiler)")
def test_the_native_scanner_is_sure_only_of_what_it_can_compare() -> None:
    """Pins `repeated_keys`: 0 unique, 1 repeated, 2 unsure (escaped keys, not JSON, not bytes)."""
    from schemas import _fastjson

    values = [
        metered,
        b'{"a":{"b":1,"b":2}}',
        b'{"a":[{"x":1},{"x":2}]}',
        b'{"a":[{"x":1,"x":2}]}',
        b'{"a\\u0062":1,"ab":2}',
        b'{"a":1',
        None,
        b'{"k":"a","k ":"b"}',
    ]
    assert list(_fastjson.repeated_keys(values)) == [0, 1, 0, 1, 2, 2, 2, 0]


def _with_repeat(node: Any, target: tuple, path: tuple = ()) -> str:
    """`node` as JSON where the object at `target` names its first key twice (the repeat first, valued null)."""
    if isinstance(node, dict):
        items = [f"{json.dumps(k)}:{_with_repeat(v, target, (*path, k))}" for k, v in node.items()]
        if path == target:
            items.insert(0, f"{json.dumps(next(iter(node)))}:null")
        return "{" + ",".join(items) + "}"
    if isinstance(node, list):
        return "[" + ",".join(_with_repeat(v, target, (*path, i)) for i, v in enumerate(node)) + "]"
    return json.dumps(node, ensure_ascii=False)


def _object_paths(node: Any, path: tuple = ()) -> list[tuple]:
    paths = [path] if isinstance(node, dict) and node else []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in children:
        paths += _object_paths(child, (*path, key))
    return paths


@settings(max_examples=examples(150))
@given(st.sampled_from(event_type_names).flatmap(valid_event), st.data())
def test_any_object_of_any_event_repeating_a_key_is_refused(event: dict, data: st.DataObject) -> None:
    """Property: repeat the first key of any object of a valid event, and both decoders refuse it as
    `duplicate_key` at that key's path, whatever the earlier value."""
    target = data.draw(st.sampled_from(_object_paths(event)))
    value = _with_repeat(event, target).encode()
    node = event
    for step in target:
        node = node[step]
    expected = ".".join(str(step) for step in (*target, next(iter(node))))
    for decoder in (with_native, without_native):
        batch = decoder.decode([value])
        assert batch.valid_count == 0
        (rejection,) = batch.rejections
        assert rejection.error.reason.startswith(duplicate_key_code), rejection.error
        assert rejection.error.field == expected


def test_a_repeated_key_becomes_a_dead_letter_in_the_ledger(tmp_path: Path) -> None:
    """Pins the ledger outcome: the message is a dead letter with the code in its reason; the others are stored."""
    bad = repeated[0][1]
    with Ledger.open(tmp_path / "lake") as ledger:
        result = ledger.append(*batch_of([metered, bad, policy]))
        assert (result.events, result.dead_letters) == (2, 1)
        define_views(ledger)
        (row,) = run_query(ledger, "SELECT reason, error_field, raw, kafka_offset FROM dead_letters").to_pylist()
        (fee,) = ledger.connection.execute("SELECT fee_micros FROM lake.main.inference_metered").fetchone()
    assert duplicate_key_code in row["reason"] and "fee_micros" in row["reason"]
    assert (row["error_field"], row["raw"], row["kafka_offset"], fee) == ("data.fee_micros", bad, 1, 100)
