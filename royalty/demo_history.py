"""The demo's on-chain story over several days (issue 21): what the registry and a holder token see, block by block.

The in-process chain starts `history_s` before now (`royalty.demo_chain`). Its first blocks deploy a ModelRegistry
and an OpenZeppelin ERC-20 ("Model Share"), register the sample's models and set their first policies; the
sample's traffic then runs from `traffic_after_genesis_s` after the genesis until shortly before now. On the way:

- `changed_model`'s policy changes a day in, effective two days later (the registry's notice), mid-history;
- `holder_model`'s largest contributor share goes to the token's holders (`holders:<token>`), who mint, buy and
  sell across the days;
- the account that `moved_contributor` stands for (a key the demo holds) sets a new payout address after the
  first epoch's registry block, so the second epoch pays the new address and the first paid the old one.

`first_days` mines every block up to the first epoch's registry block; `last_days` the rest, then hands the chain
over to live use (blocks at the wall clock) for the distributor, the settlement and the claims.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from eth_account.signers.local import LocalAccount
from web3.contract import Contract

from ingest.sample import SampleShape, SampleTraffic
from royalty.demo_chain import HistoryChain
from royalty.exceptions import DemoChainError
from schemas.fields import holders_recipient_prefix
from settlement.onchain import Chain, id_word, policy_call, registry_artifact, token_artifact

day_s = 86_400
history_s = 4 * day_s
traffic_after_genesis_s = 3_600
# The last sample call is this long before the demo starts: never in the future when ingested.
traffic_end_before_now_s = 600
# ModelRegistry.NOTICE_SECONDS: a policy change applies no earlier than this after its block.
policy_notice_s = 2 * day_s
changed_model = "model-0000"
holder_model = "model-0001"
token_unit = 10**18


@dataclass(frozen=True)
class Timeline:
    """When things happen, in unix seconds."""

    genesis: int
    traffic_start: int
    events_per_day: int
    epoch_one_end: int  # the first epoch's registry block: not before its last call, within a second of it
    epoch_two_start_us: int  # no call of the first epoch is this late, none of the second earlier (microseconds)

    @classmethod
    def plan(cls, now: int, events: int, epoch_one_events: int) -> "Timeline":
        genesis = now - history_s
        start = genesis + traffic_after_genesis_s
        span_s = now - traffic_end_before_now_s - start
        events_per_day = max(1, -(-events * day_s // span_s))  # rounded up: the last call stays before the end
        step_us = 86_400_000_000 // events_per_day
        # The sample's call i lies in [start + i * step, start + (i + 1) * step): every call of the first epoch is
        # before this (rounded up to the second), the registry block it closes with.
        epoch_one_end = start - (-(epoch_one_events * step_us) // 1_000_000)
        return cls(genesis, start, events_per_day, epoch_one_end, start * 1_000_000 + epoch_one_events * step_us)

    @property
    def timing(self) -> tuple[datetime, int]:
        """The sample's (first call's time, calls a day)."""
        return datetime.fromtimestamp(self.traffic_start, UTC), self.events_per_day


@dataclass
class DemoHistory:
    """The demo's chain with its registry and holder token, and the accounts its story uses."""

    timeline: Timeline
    history: HistoryChain
    registry: Contract
    token: Contract
    moved_account: LocalAccount  # a contributor that changes its payout address after the first epoch
    new_payout: str
    holders: list[LocalAccount]

    @property
    def chain(self) -> Chain:
        return self.history.chain


def _sample_registry(models: int, contributors: int, seed: int) -> list[dict]:
    traffic = SampleTraffic(SampleShape(models=models, contributors=contributors, provider_addresses=True), seed=seed)
    return [json.loads(message) for message in traffic.registry()]


def first_days(
    timeline: Timeline, models: int, contributors: int, seed: int, progress: Callable[[int], None]
) -> DemoHistory:
    """Mine the blocks up to the first epoch's registry block (`timeline.epoch_one_end`)."""
    history = HistoryChain(timeline.genesis)
    owner, moved, new_payout = history.accounts[0], history.accounts[1], history.accounts[2]
    holders = history.accounts[3:7]
    registry_build, token_build = registry_artifact(), token_artifact()
    registry = history.deploy(
        registry_build.abi, registry_build.bytecode, (), timeline.genesis + 60, "deploy ModelRegistry"
    )
    token = history.deploy(
        token_build.abi,
        token_build.bytecode,
        ("Model Share", "MSH", 18, owner.address),
        timeline.genesis + 120,
        "deploy the holder token",
    )
    records = _sample_registry(models, contributors, seed)
    addresses = {
        r["data"]["contributor_id"]: r["data"]["payout_address"]
        for r in records
        if r["type"] == "ai.contributor.registered.v1"
    }
    policies = {r["data"]["model_id"]: r["data"] for r in records if r["type"] == "ai.split-policy.set.v1"}
    addresses[_largest_contributor(policies[changed_model])] = moved.address
    holder_share = _largest_contributor(policies[holder_model])

    history.begin(timeline.genesis + 180)
    for record in records:
        if record["type"] == "ai.model.registered.v1":
            parents = {p["model_id"]: p["share_ppm"] for p in record["data"]["parents"]}
            words = sorted((id_word(parent), share_ppm) for parent, share_ppm in parents.items())
            model_id = record["data"]["model_id"]
            call = registry.functions.registerModel(id_word(model_id), words, 0, bytes(32), "", owner.address)
            history.send(call, f"register model {model_id}")
    for holder, units in zip(holders[:3], (1_000, 600, 400), strict=True):
        history.send(token.functions.mint(holder.address, units * token_unit), f"mint to {holder.address}")
    history.mine()
    progress(models // 2)

    first_policy_at = timeline.genesis + 240
    history.begin(first_policy_at)
    for done, (model_id, policy) in enumerate(policies.items()):
        shares = {
            (
                f"{holders_recipient_prefix}{token.address}"
                if name == holder_share and model_id == holder_model
                else addresses.get(name, name)
            ): share_ppm
            for name, share_ppm in ((s["recipient"], s["share_ppm"]) for s in policy["shares"])
        }
        effective = datetime.fromtimestamp(first_policy_at, UTC)
        call = policy_call(registry, model_id, effective, shares, policy["compute_share_ppm"])
        history.send(call, f"set the first policy of {model_id}")
        progress(models // 2 + (done + 1) // 2)
    history.mine()

    # A day in: `changed_model` moves its contributors' shares round by one and its compute share, from two days
    # on (mid-history, in the second epoch); a holder sells part of the tokens.
    history.begin(timeline.genesis + day_s)
    changed = policies[changed_model]
    names = [addresses.get(s["recipient"], s["recipient"]) for s in changed["shares"]]
    values = [s["share_ppm"] for s in changed["shares"]]
    shares = dict(zip(names, values[1:] + values[:1], strict=True))
    compute_ppm = 200_000 if changed["compute_share_ppm"] != 200_000 else 100_000
    effective = datetime.fromtimestamp(timeline.genesis + day_s + policy_notice_s, UTC)
    history.send(policy_call(registry, changed_model, effective, shares, compute_ppm), f"change {changed_model}")
    history.send(token.functions.transfer(holders[3].address, 300 * token_unit), "transfer", holders[0])
    history.mine()

    history.begin(max(timeline.epoch_one_end, history.time + 1))
    history.send(token.functions.transfer(holders[0].address, 200 * token_unit), "transfer", holders[1])
    history.mine()
    return DemoHistory(timeline, history, registry, token, moved, new_payout.address, holders)


def last_days(demo: DemoHistory, now: int) -> Chain:
    """Mine the second epoch's blocks (the payout address change, more trades), then go live at the wall clock."""
    history, token, holders = demo.history, demo.token, demo.holders
    history.begin(history.time + 3_600)
    call = demo.registry.functions.setPayoutAddress(demo.new_payout)
    history.send(call, "set a new payout address", demo.moved_account)
    history.send(token.functions.transfer(holders[3].address, 400 * token_unit), "transfer", holders[2])
    history.mine()
    history.begin(max(demo.timeline.genesis + 3 * day_s + 3_600, history.time + 1))
    history.send(token.functions.transfer(holders[1].address, 100 * token_unit), "transfer", holders[3])
    history.mine()
    if history.time >= now:
        raise DemoChainError(f"the demo's history reaches {history.time}, not before now ({now})")
    return history.live()


def _largest_contributor(policy: dict) -> str:
    accounts = [s for s in policy["shares"] if not s["recipient"].startswith("model:")]
    return max(accounts, key=lambda s: (s["share_ppm"], s["recipient"]))["recipient"]
