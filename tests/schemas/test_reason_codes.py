"""Every dead letter's stable `reason_code`: what each rejection path stores, and the derivation for older rows.

The `dead_letters` view derives a code from the reason text for rows stored without one (ledger format < 6);
`reason_code_of` is the same derivation in Python. Both must agree, and must give every reason the decoder,
the ledger and the settlement write the very code stored with it.
"""

import json
import random
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.sample import SampleTraffic, conflicting_duplicate, invalid_message
from ingest.service import reject_foreign_assets
from ledger.query import analyst_view_statements
from ledger.tables import create_statements
from schemas import BatchDecoder
from schemas.limits import message_bytes_max
from schemas.native_plan import native_available
from schemas.reason_codes import ReasonCode, reason_code_of, reason_rules, whole_message_rules
from tests.support.hostile import hostile_message

_started = datetime(2026, 11, 24, tzinfo=UTC)
decoders = {
    "python": BatchDecoder(use_native=False, clock=lambda: _started),
    **({"native": BatchDecoder(clock=lambda: _started)} if native_available() else {}),
}
_valid = next(iter(SampleTraffic().metered(1)))
_event = json.loads(_valid)


def _with(**changes: object) -> bytes:
    event = json.loads(_valid)
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = event
        for part in parents:
            target = target[part]
        if value is _absent:
            del target[last]
        else:
            target[last] = value
    return json.dumps(event).encode()


_absent = object()
_future = (_started + timedelta(days=2)).isoformat().replace("+00:00", "Z")

# (what, message, the code its dead letter stores): one per rejection path of the decoder.
rejection_paths: list[tuple[str, bytes | None, ReasonCode]] = [
    ("tombstone", None, ReasonCode.missing_value),
    ("not UTF-8", b"\xff\xfe not utf-8", ReasonCode.invalid_utf8),
    ("not JSON", b"{not json", ReasonCode.invalid_json),
    ("trailing garbage", _valid + b"}", ReasonCode.invalid_json),
    ("truncated", _valid[:40], ReasonCode.truncated_json),
    ("empty", b"", ReasonCode.truncated_json),
    ("an array", b"[1, 2]", ReasonCode.not_an_object),
    ("a number", b"7", ReasonCode.not_an_object),
    ("too large", b" " * (message_bytes_max + 1), ReasonCode.message_too_large),
    ("repeated key", _valid[:-1] + b',"id":"x"}', ReasonCode.duplicate_key),
    ("unknown type", _with(type="ai.inference.metred.v1"), ReasonCode.unknown_event_type),
    ("no type", _with(type=_absent), ReasonCode.field_missing),
    ("no fee", _with(data__fee_micros=_absent), ReasonCode.field_missing),
    ("no id", _with(id=_absent), ReasonCode.field_missing),
    ("unknown data field", _with(data__unexpected=1), ReasonCode.unknown_field),
    ("unknown envelope field", _with(extra=1), ReasonCode.unknown_field),
    ("negative fee", _with(data__fee_micros=-5), ReasonCode.field_invalid),
    ("fee as text", _with(data__fee_micros="100"), ReasonCode.field_invalid),
    ("time without zone", _with(time="2026-11-23T10:00:00"), ReasonCode.field_invalid),
    ("control character", _with(id="ev\u0001"), ReasonCode.field_invalid),
    ("time ahead of the clock", _with(time=_future), ReasonCode.time_in_future),
]


def sql_codes(rows: list[tuple[str, str | None]]) -> list[str]:
    """The `dead_letters` view's code for each (reason, error_field) stored without a code, as on an old ledger."""
    connection = duckdb.connect()
    connection.execute("ATTACH ':memory:' AS lake")
    for statement in create_statements("lake", ["dead_letter"]):
        connection.execute(statement)
    connection.executemany(
        "INSERT INTO lake.main.dead_letter (kafka_topic, kafka_partition, kafka_offset, ingest_batch_id, received_at, "
        "reason, error_field, raw, raw_size_bytes, raw_sha256) VALUES ('t', 0, ?, 'b', now(), ?, ?, '', 0, '')",
        [[offset, reason, field] for offset, (reason, field) in enumerate(rows)],
    )
    (view,) = [s for s in analyst_view_statements() if "VIEW dead_letters AS" in s]
    connection.execute(view.rstrip(";"))
    codes = connection.execute("SELECT reason_code FROM dead_letters ORDER BY kafka_offset").fetchall()
    return [code for (code,) in codes]


@pytest.mark.parametrize("decoder_name", sorted(decoders))
@pytest.mark.parametrize(("what", "value", "code"), rejection_paths, ids=[path[0] for path in rejection_paths])
def test_each_rejection_path_stores_its_code(
    decoder_name: str, what: str, value: bytes | None, code: ReasonCode
) -> None:
    """The decoder (native and Python paths) and `explain` give each kind of fault its code; the text derives it too."""
    decoder = decoders[decoder_name]
    (rejection,) = decoder.decode([value]).rejections
    error = rejection.error
    assert error.code == code, str(error)
    assert decoder.explain(value).code == code
    assert reason_code_of(str(error), error.field) == code, str(error)


def test_the_sql_derivation_gives_every_rejection_path_its_code() -> None:
    errors = [decoders["python"].decode([value]).rejections[0].error for _, value, _ in rejection_paths]
    assert sql_codes([(str(e), e.field) for e in errors]) == [code for _, _, code in rejection_paths]


def test_the_other_writers_reasons_derive_their_code() -> None:
    """Foreign assets (ingest), conflicting duplicates (ledger) and unresolved reversals (settlement)."""
    decoded = reject_foreign_assets(decoders["python"].decode([_valid]), "EUR")
    (foreign,) = decoded.rejections
    assert foreign.error.code == ReasonCode.asset_not_accepted
    texts = [
        (str(foreign.error), foreign.error.field, ReasonCode.asset_not_accepted),
        ("conflicting duplicate: event id `e-1` of this source is already in the ledger with different content", "id",
         ReasonCode.conflicting_duplicate),
        ("conflicting duplicate: event id `x` is earlier in the same batch with different content", "id",
         ReasonCode.conflicting_duplicate),  # format 1's wording
        ("settlement epoch 3: reversal of unknown event `e` of source `//s`: no metered event with that source and "
         "id in the ledger", "data.original_event_id", ReasonCode.reversal_unresolved),
        ("settlement epoch 12: reversal of already reversed event `e` of source `//s`", "data.original_event_id",
         ReasonCode.reversal_repeated),
        ("Input should be an object", None, ReasonCode.not_an_object),  # format 1's wording for `[1, 2]`
        ("field `data`: Input should be an object", "data", ReasonCode.field_invalid),
        ("something no version ever wrote", None, ReasonCode.unclassified),
    ]
    assert [reason_code_of(reason, field) for reason, field, _ in texts] == [code for *_, code in texts]
    assert sql_codes([(reason, field) for reason, field, _ in texts]) == [code for *_, code in texts]


_hostile_rng = random.Random(14)
_traffic = list(SampleTraffic(seed=5).metered(300))
_sample_invalid = [invalid_message(random.Random(i), _traffic[i]) for i in range(120)]
_corpus = [hostile_message(_hostile_rng) for _ in range(600)] + _sample_invalid + [None]


@pytest.mark.parametrize("decoder_name", sorted(decoders))
def test_every_hostile_rejection_stores_a_known_code_that_its_text_derives(decoder_name: str) -> None:
    """600 fuzzed messages and the sample generator's invalid ones: each rejection has a code other than
    `unclassified`, and both derivations (Python and the view's SQL) give the stored code from the text."""
    rejections = decoders[decoder_name].decode(_corpus).rejections
    assert len(rejections) > 300
    stored = [r.error.code for r in rejections]
    assert all(isinstance(code, ReasonCode) and code != ReasonCode.unclassified for code in stored)
    assert [reason_code_of(str(r.error), r.error.field) for r in rejections] == stored
    assert sql_codes([(str(r.error), r.error.field) for r in rejections]) == stored
    sample_codes = {r.error.code for r in decoders[decoder_name].decode(_sample_invalid).rejections}
    assert sample_codes == {
        ReasonCode.truncated_json, ReasonCode.field_invalid, ReasonCode.unknown_event_type,
        ReasonCode.invalid_utf8, ReasonCode.unknown_field,
    }


def test_the_conflicting_duplicate_generator_is_not_a_decoder_rejection() -> None:
    """(The ledger, not the decoder, finds conflicts: the generator's conflict decodes as valid.)"""
    assert decoders["python"].decode([conflicting_duplicate(_valid)]).rejections == []


_prefixes = [
    pattern.lstrip("^").replace("[0-9]+", "7") for pattern, _ in whole_message_rules + reason_rules
] + ["", "field `x`: "]
_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_prefixes), _text, st.one_of(st.none(), _text)), min_size=1, max_size=40))
def test_the_python_and_sql_derivations_agree_on_any_text(items: list[tuple[str, str, str | None]]) -> None:
    """Reason texts made of each rule's wording, hostile text (backticks, `duplicate_key:` inside an id) and any
    field, stored with or without the "field `F`: " prefix: the view and `reason_code_of` agree."""
    rows = []
    for index, (prefix, tail, field) in enumerate(items):
        message = prefix + tail
        rows.append((f"field `{field}`: {message}" if field is not None and index % 2 else message, field))
    assert sql_codes(rows) == [reason_code_of(reason, field) for reason, field in rows]


def test_every_code_is_documented_for_analysts() -> None:
    from tests.conftest import repo_root

    text = (repo_root / "docs" / "analytics.md").read_text()
    assert [code for code in ReasonCode if f"`{code}`" not in text] == []
