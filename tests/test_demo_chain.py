"""The demo's chain with a past (royalty.demo_chain) and its timeline (royalty.demo_history), without the demo."""

import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from royalty.demo_chain import HistoryChain
from royalty.demo_history import Timeline, day_s, history_s, traffic_end_before_now_s
from royalty.exceptions import DemoChainError
from settlement.onchain.contract_artifacts import registry_artifact
from settlement.onchain.registry_ids import id_word
from settlement.onchain.registry_ops import policy_call

pytest.importorskip("eth_tester")


def test_blocks_carry_the_demos_times_and_the_registry_judges_a_policy_by_them() -> None:
    """A block is stamped with the time the demo gives, days back, and its transactions run at that time: the
    registry refuses a policy dated before its block (the demo says which transaction), accepts one dated at it,
    and a block earlier than the last is refused before anything is sent."""
    genesis = int(time.time()) - history_s
    history = HistoryChain(genesis)
    build = registry_artifact()
    registry = history.deploy(build.abi, build.bytecode, (), genesis + 60, "deploy ModelRegistry")
    w3 = history.chain.w3
    assert w3.eth.get_block("latest")["timestamp"] == genesis + 60
    history.begin(genesis + 120)
    owner = history.accounts[0].address
    history.send(registry.functions.registerModel(id_word("m"), [], 0, bytes(32), "", owner), "register m")
    early = datetime.fromtimestamp(genesis + 119, UTC)
    history.send(policy_call(registry, "m", early, {owner: 1_000_000}), "a policy dated before its block")
    with pytest.raises(DemoChainError, match="a policy dated before its block"):
        history.mine()
    history.begin(genesis + 180)
    history.send(policy_call(registry, "m", datetime.fromtimestamp(genesis + 180, UTC), {owner: 1_000_000}), "ok")
    block = history.mine()
    assert w3.eth.get_block(block)["timestamp"] == genesis + 180
    with pytest.raises(DemoChainError, match="not be later than the last one"):
        history.begin(genesis + 170)
    live = history.live()
    assert live.w3.eth.get_block("latest")["timestamp"] >= genesis + history_s


@given(events=st.integers(2, 1_000_000), first_ppm=st.integers(1, 999_999))
def test_every_sample_call_lies_before_now_and_the_first_epoch_ends_between_its_calls(
    events: int, first_ppm: int
) -> None:
    """The sample's call i lies in [start + i * step, start + (i + 1) * step): the last before now less the margin
    (ingest refuses times ahead of its clock), and the first epoch's registry block not before any of its calls
    (close-epoch refuses a registry block earlier than the epoch's latest event), within a second of them."""
    now = 1_800_000_000
    first_events = max(1, events * first_ppm // 1_000_000)
    timeline = Timeline.plan(now, events, first_events)
    step_us = 86_400_000_000 // timeline.events_per_day
    start_us = timeline.traffic_start * 1_000_000
    assert start_us + events * step_us <= (now - traffic_end_before_now_s) * 1_000_000
    end_us = timeline.epoch_one_end * 1_000_000
    boundary_us = timeline.epoch_two_start_us
    assert start_us + first_events * step_us == boundary_us <= end_us < boundary_us + 1_000_000
    assert timeline.genesis == now - history_s and history_s >= 4 * day_s
