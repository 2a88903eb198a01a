"""The operator (Kafka) registry, made safe (issue 15): the attacks replayed through a real DuckLake ledger.

Each attack is sent as an attacker would (their own CloudEvents source, any `time` they like, arriving after
the legitimate records) and must change no payout: the payables equal those of the same ledger without it,
and the attacking record is a dead letter with its reason code. Before, ownership was not checked and the
registry was ordered by the producer's `time`.
"""

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from eth_utils import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import Ledger
from schemas import BatchDecoder
from settlement import close_epoch
from settlement.engine.authority import (
    RegistryRules,
    contributor_type,
    judge,
    model_type,
    policy_type,
    position_columns,
)
from tests.conftest import royalty_command
from tests.ledger.helpers import batch_of

registry_source, attacker, gateway = "//registry.example", "//attacker.example", "//gateway.example"
start = datetime(2026, 1, 1, tzinfo=UTC)
alice, bob, mallory = (to_checksum_address("0x" + byte * 20) for byte in ("a1", "b2", "ee"))
# A decoder whose clock is far ahead: ingest refuses a `time` ahead of its clock, but a file backfill or
# a ledger from before that check may hold such a record; settlement must not trust it either.
far_future_decoder = BatchDecoder(clock=lambda: datetime(9999, 12, 31, 23, 0, tzinfo=UTC))


def _time(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _event(event_type: str, event_id: str, source: str, data: dict, at: datetime = start) -> bytes:
    envelope = {"specversion": "1.0", "id": event_id, "source": source, "type": event_type, "time": _time(at)}
    return json.dumps({**envelope, "data": data}).encode()


def _contributor(event_id: str, source: str, contributor_id: str, address: str, at: datetime = start) -> bytes:
    return _event(contributor_type, event_id, source, {"contributor_id": contributor_id, "payout_address": address}, at)


def _model(event_id: str, source: str, model_id: str, parents: list | None = None, at: datetime = start) -> bytes:
    return _event(model_type, event_id, source, {"model_id": model_id, "parents": parents or []}, at)


def _policy(
    event_id: str, source: str, model_id: str, shares: dict[str, int], effective_from: datetime = start
) -> bytes:
    data = {
        "model_id": model_id,
        "effective_from": _time(effective_from),
        "compute_share_ppm": 0,
        "shares": [{"recipient": r, "share_ppm": s} for r, s in shares.items()],
    }
    return _event(policy_type, event_id, source, data)


def _metered(index: int, model_id: str = "m", at: datetime = start + timedelta(days=30)) -> bytes:
    data = {
        "model_id": model_id, "request_id": f"req-{index}", "payer": "org-1", "compute_provider": "gpu-1",
        "input_tokens": 10, "output_tokens": 10, "fee_micros": 1_000_000, "asset": "USDC",
    }  # fmt: skip
    return _event("ai.inference.metered.v1", f"ev-{model_id}-{index}", gateway, data, at + timedelta(seconds=index))


legit_registry = [
    _contributor("reg-alice", registry_source, "alice", alice),
    _contributor("reg-bob", registry_source, "bob", bob),
    _contributor("reg-mallory", attacker, "mallory", mallory),  # the attacker may register its own id
    _model("reg-m", registry_source, "m"),
    _policy("pol-m", registry_source, "m", {"alice": 600_000, "bob": 400_000}),
]
events = [_metered(i) for i in range(4)]


class Feed:
    """Appends as ingest would: each call one batch (one snapshot) on a partition, offsets continuing."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.next_offset: dict[int, int] = {}

    def send(self, values: list[bytes], partition: int = 0, decoder: BatchDecoder | None = None) -> None:
        first = self.next_offset.get(partition, 0)
        extra = {"decoder": decoder} if decoder is not None else {}
        self.ledger.append(*batch_of(values, partition=partition, first_offset=first, **extra))
        self.next_offset[partition] = first + len(values)


def _payouts(ledger: Ledger) -> dict[str, tuple[int, str | None]]:
    """recipient -> (cumulative earned, payout address of the last epoch)."""
    rows = ledger.connection.execute(
        "SELECT recipient, arg_max(cumulative_micros, epoch), arg_max(payout_address, epoch) "
        "FROM lake.main.settlement_payable GROUP BY recipient ORDER BY recipient"
    ).fetchall()
    return {recipient: (cumulative, address) for recipient, cumulative, address in rows}


def _dead_letters(ledger: Ledger) -> list[tuple[str, str]]:
    return ledger.connection.execute(
        "SELECT event_id, reason_code FROM lake.main.dead_letter ORDER BY event_id"
    ).fetchall()


def _run(tmp_path: Path, name: str, batches: list[tuple[list[bytes], dict]], rules: RegistryRules | None = None):
    with Ledger.open(tmp_path / name) as ledger:
        feed = Feed(ledger)
        for values, options in batches:
            feed.send(values, **options)
        summary = close_epoch(ledger, rules=rules)
        return _payouts(ledger), _dead_letters(ledger), summary


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The payouts of the legitimate registry and events alone (no attack)."""
    payouts, dead, _ = _run(tmp_path_factory.mktemp("baseline"), "l", [(legit_registry, {}), (events, {})])
    assert dead == []
    assert payouts == {"alice": (2_400_000, alice), "bob": (1_600_000, bob)}
    return payouts


def test_a_payout_address_dated_9999_from_another_source_changes_no_payout(tmp_path: Path, baseline: dict) -> None:
    """Attack 1: a `ContributorRegistered` for alice dated 9999-12-31 re-pointed her payouts for good."""
    attack = [_contributor("evil-alice", attacker, "alice", mallory, datetime(9999, 12, 31, tzinfo=UTC))]
    payouts, dead, _ = _run(
        tmp_path, "attacked", [(legit_registry, {}), (attack, {"decoder": far_future_decoder}), (events, {})]
    )
    assert payouts == baseline
    assert dead == [("evil-alice", "unauthorized_source")]


def test_a_payout_address_change_takes_effect_by_arrival_not_by_its_time(tmp_path: Path) -> None:
    """Even from the owning source, the producer's `time` decides nothing: the change that arrived last is in
    force, so a 9999-dated change is overridden by the next one (before, the 9999 one won for good)."""
    carol = to_checksum_address("0x" + "c3" * 20)
    changes = [
        ([_contributor("alice-9999", registry_source, "alice", mallory, datetime(9999, 12, 31, tzinfo=UTC))],
         {"decoder": far_future_decoder}),
        ([_contributor("alice-fix", registry_source, "alice", carol, start + timedelta(days=2))], {}),
    ]  # fmt: skip
    payouts, dead, _ = _run(tmp_path, "l", [(legit_registry, {}), *changes, (events, {})])
    assert dead == []
    assert payouts["alice"] == (2_400_000, carol)


def test_a_policy_from_another_source_sending_everything_to_the_attacker_changes_no_payout(
    tmp_path: Path, baseline: dict
) -> None:
    """Attack 2: a `SplitPolicySet` sent 100% of a legitimate model to the attacker."""
    attack = [
        _policy("evil-pol-1", attacker, "m", {"mallory": 1_000_000}),
        _policy("evil-pol-2", attacker, "m", {"mallory": 1_000_000}, start + timedelta(days=1)),
    ]
    payouts, dead, summary = _run(tmp_path, "attacked", [(legit_registry, {}), (attack, {}), (events, {})])
    assert payouts == baseline
    assert dead == [("evil-pol-1", "unauthorized_source"), ("evil-pol-2", "unauthorized_source")]
    assert any("evil-pol-1" in problem and "unauthorized_source" in problem for problem in summary.problems)


def test_a_backdated_model_registration_squats_no_model_id(tmp_path: Path, baseline: dict) -> None:
    """Attack 3: a `ModelRegistered` dated before the real one, naming a parent that does not exist, took over
    the model (the earliest `time` won) and its fees sat in suspense forever."""
    ghost_parent = [{"model_id": "ghost", "share_ppm": 1}]
    attack = [_model("squat-m", attacker, "m", ghost_parent, datetime(2020, 1, 1, tzinfo=UTC))]
    payouts, dead, summary = _run(tmp_path, "attacked", [(legit_registry, {}), (attack, {}), (events, {})])
    assert payouts == baseline
    assert dead == [("squat-m", "model_already_registered")]
    assert summary.suspended_micros == 0


def test_a_new_model_id_is_registered_only_by_a_listed_source_when_the_type_is_closed(tmp_path: Path) -> None:
    """With `registry_sources` listing the registry's source for ModelRegistered, an attacker registering a model
    id first (and its policy) owns nothing: the registry's later registration is the first accepted one."""
    rules = RegistryRules(registry_sources={model_type: (registry_source,)})
    first = [_model("squat-n", attacker, "n"), _policy("evil-pol-n", attacker, "n", {"mallory": 1_000_000})]
    late = [_model("reg-n", registry_source, "n"), _policy("pol-n", registry_source, "n", {"bob": 1_000_000})]
    payouts, dead, _ = _run(
        tmp_path, "l", [(legit_registry, {}), (first, {}), (late, {}), ([_metered(0, "n")], {})], rules
    )
    assert dead == [("evil-pol-n", "unauthorized_source"), ("squat-n", "unauthorized_source")]
    assert payouts == {"bob": (1_000_000, bob)}


def test_a_policy_for_a_never_registered_model_is_not_paid(tmp_path: Path, baseline: dict) -> None:
    """Attack 4: a policy for a model nobody registered was paid. Its fees now wait in suspense, said so."""
    attack = [_policy("pol-ghost", attacker, "ghost", {"mallory": 1_000_000})]
    ghost_events = [_metered(i, "ghost") for i in range(3)]
    payouts, dead, summary = _run(
        tmp_path, "attacked", [(legit_registry, {}), (attack, {}), (events + ghost_events, {})]
    )
    assert payouts == baseline
    assert dead == []  # not judged until the model is registered
    assert summary.suspended_micros == 3_000_000
    assert any("pol-ghost" in problem and "no accepted registration" in problem for problem in summary.problems)


def test_registry_records_apply_by_effective_from_whatever_their_arrival_order(tmp_path: Path, baseline: dict) -> None:
    """A backfill: the policy arrives first on one partition, the events next, the model's registration and the
    contributors last on another; every unsettled event is split by the policy in force at its time."""
    contributors, (model, policy) = legit_registry[:3], legit_registry[3:]
    batches = [([policy], {"partition": 1}), (events, {}), ([model, *contributors], {"partition": 2})]
    payouts, dead, _ = _run(tmp_path, "backfill", batches)
    assert dead == []
    assert payouts == baseline


def test_a_settled_epoch_is_never_re_split_by_a_retroactive_policy(tmp_path: Path) -> None:
    """The owner's new policy, effective from before epoch 1's events, splits only events not yet settled."""
    with Ledger.open(tmp_path / "l") as ledger:
        feed = Feed(ledger)
        feed.send(legit_registry)
        feed.send(events)
        close_epoch(ledger)
        epoch_1 = _payouts(ledger)
        feed.send([_policy("pol-m-2", registry_source, "m", {"bob": 1_000_000})])
        feed.send([_metered(10)])
        close_epoch(ledger)
        epoch_rows = ledger.connection.execute(
            "SELECT recipient, amount_micros FROM lake.main.settlement_payable WHERE epoch = 1 ORDER BY 1"
        ).fetchall()
        after = _payouts(ledger)
    assert epoch_rows == [("alice", 2_400_000), ("bob", 1_600_000)]
    assert after == {"alice": epoch_1["alice"], "bob": (1_600_000 + 1_000_000, bob)}


def test_policy_notice_refuses_a_change_sooner_than_the_notice_but_not_a_models_first(
    tmp_path: Path, baseline: dict
) -> None:
    """`policy_notice_s`: the first policy may be historical (a backfill), a later change must take effect at
    least the notice after it arrived (the ledger's commit time, which no producer sets)."""
    rules = RegistryRules(policy_notice_s=3_600)
    now = datetime.now(UTC)
    changes = [
        _policy("pol-soon", registry_source, "m", {"bob": 1_000_000}, now),
        _policy("pol-later", registry_source, "m", {"alice": 1_000_000}, now + timedelta(hours=2)),
    ]
    payouts, dead, _ = _run(tmp_path, "l", [(legit_registry, {}), (changes, {}), (events, {})], rules)
    assert dead == [("pol-soon", "policy_notice")]
    assert payouts == baseline  # events precede both changes' effective times


def test_a_records_judgment_is_final_whatever_the_settings_say_later(tmp_path: Path) -> None:
    """Refused in epoch 1, a record stays refused (one dead letter) after the operator lists its source."""
    attack = [_policy("evil-pol", attacker, "m", {"mallory": 1_000_000})]
    with Ledger.open(tmp_path / "l") as ledger:
        feed = Feed(ledger)
        feed.send(legit_registry + attack)
        feed.send(events)
        close_epoch(ledger)
        feed.send([_metered(10)])
        close_epoch(ledger, rules=RegistryRules(registry_sources={policy_type: (attacker,)}))
        payouts, dead = _payouts(ledger), _dead_letters(ledger)
    assert dead == [("evil-pol", "unauthorized_source")]
    assert "mallory" not in payouts and payouts["alice"][0] == 3_000_000


_row_schema = {
    "event_id": pl.String, "source": pl.String, "event_time": pl.Datetime("us", "UTC"), "kafka_topic": pl.String,
    "kafka_partition": pl.Int32, "kafka_offset": pl.Int64, "ingest_batch_id": pl.String, "known_snapshot": pl.Int64,
}  # fmt: skip
_sources = [registry_source, attacker, "//third.example"]


@st.composite
def _registries(draw) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Registry rows on two partitions from three sources, arriving over up to four snapshots."""
    offsets = {0: 0, 1: 0}
    rows: dict[str, list[dict]] = {"models": [], "policies": [], "contributors": []}
    for index in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(sorted(rows)))
        partition = draw(st.integers(0, 1))
        row = {
            "event_id": f"r{index}", "source": draw(st.sampled_from(_sources)), "event_time": start,
            "kafka_topic": "t", "kafka_partition": partition, "kafka_offset": offsets[partition],
            "ingest_batch_id": "b", "known_snapshot": draw(st.integers(1, 4)),
        }  # fmt: skip
        offsets[partition] += 1
        key = draw(st.sampled_from(["x", "y"]))
        if kind == "models":
            row.update(model_id=key, parents=[])
        elif kind == "contributors":
            row.update(contributor_id=key, payout_address=draw(st.sampled_from([alice, bob, mallory])))
        else:
            shares = [{"recipient": "c", "share_ppm": 1}]
            row.update(model_id=key, effective_from=start, compute_share_ppm=0, shares=shares)
        rows[kind].append(row)
    extra = {
        "models": {
            "model_id": pl.String, "parents": pl.List(pl.Struct({"model_id": pl.String, "share_ppm": pl.Int64})),
        },
        "contributors": {"contributor_id": pl.String, "payout_address": pl.String},
        "policies": {
            "model_id": pl.String, "effective_from": pl.Datetime("us", "UTC"), "compute_share_ppm": pl.Int64,
            "shares": pl.List(pl.Struct({"recipient": pl.String, "share_ppm": pl.Int64})),
        },
    }  # fmt: skip
    frames = {kind: pl.DataFrame(rows[kind], schema={**_row_schema, **extra[kind]}) for kind in rows}
    return frames["models"], frames["policies"], frames["contributors"]


def _outcome(judgment) -> tuple:
    return (
        sorted(judgment.models["event_id"].to_list()),
        sorted(judgment.policies["event_id"].to_list()),
        judgment.addresses.rows(),
        sorted((r["event_id"], r["reason_code"]) for r in judgment.refused),
    )


@settings(max_examples=60, deadline=None)
@given(_registries(), st.randoms(use_true_random=False), st.sampled_from([RegistryRules(), RegistryRules(
    registry_sources={model_type: (registry_source,), policy_type: ("//third.example",)})]))  # fmt: skip
def test_judgment_depends_on_arrival_only_and_accepts_only_the_owner(registry, random, rules) -> None:
    """Whatever the order rows are read in, the judgment is the same; every accepted policy and payout change
    comes from the source of its id's first accepted registration (or a listed source); a model has one."""
    models, policies, contributors = registry
    judged = judge(models, policies, contributors, rules)
    shuffled = [frame.sample(fraction=1.0, shuffle=True, seed=random.randint(0, 2**16)) for frame in registry]
    assert _outcome(judge(*shuffled, rules)) == _outcome(judged)
    assert judged.models["model_id"].is_unique().all()
    owners = dict(judged.models.select("model_id", "source").iter_rows())
    for row in judged.policies.iter_rows(named=True):
        assert row["source"] == owners[row["model_id"]] or rules.listed(policy_type, row["source"])
    refused = {tuple(r[c] for c in position_columns) for r in judged.refused}
    accepted = pl.concat([judged.models.select(position_columns), judged.policies.select(position_columns)])
    assert refused.isdisjoint(set(accepted.iter_rows()))


def test_royalty_close_epoch_applies_the_registry_settings(tmp_path: Path) -> None:
    """The CLI reads `registry_sources` (here from the environment): a source listed for policies may set any
    model's; without the setting, the same ledger refuses it (the other tests)."""
    with Ledger.open(tmp_path / "l") as ledger:
        feed = Feed(ledger)
        feed.send([*legit_registry, _policy("gov-pol", attacker, "m", {"mallory": 1_000_000}, start + timedelta(1))])
        feed.send(events)
    environment = {**os.environ, "ROYALTY_REGISTRY_SOURCES": json.dumps({policy_type: [attacker]})}
    result = subprocess.run(
        royalty_command("close-epoch", "--lake", str(tmp_path / "l")),
        capture_output=True, text=True, timeout=300, env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    with Ledger.open_read_only(tmp_path / "l") as reader:
        assert _payouts(reader) == {"mallory": (4_000_000, mallory)}
