"""ModelRegistry against a real anvil: who may register, set a split, change a payout address, and when.

Every refusal is asserted by its custom error and decoded arguments, never by "it reverted". One anvil for
the module (the session's); each test deploys its own registry, so tests do not share state.
"""

from __future__ import annotations

import itertools

import pytest
from eth_account import Account
from web3 import Web3
from web3.contract import Contract
from web3.logs import DISCARD

from settlement.onchain.registry_ids import HOLDERS, recipient_name, recipient_tuple
from tests.support.anvil import Anvil, anvil  # noqa: F401 - anvil is a fixture
from tests.support.registry_chain import (
    ACCOUNT,
    DATASET,
    MODEL,
    Between,
    account_word,
    deploy_contract,
    id_word,
    payout_signature,
    reverts,
    send,
)

NO_DIGEST = b"\x00" * 32
_ids = itertools.count()


def fresh(prefix: str) -> bytes:
    """An id no other test of this module uses."""
    return id_word(f"{prefix}-{next(_ids)}")


@pytest.fixture
def registry(anvil: Anvil) -> Contract:  # noqa: F811
    return deploy_contract(anvil.w3, "ModelRegistry", anvil.w3.eth.accounts[0])


def now(w3: Web3) -> int:
    return int(w3.eth.get_block("latest")["timestamp"])


def call_time(w3: Web3, notice_s: int = 0) -> Between:
    """The block time (plus `notice_s`) an `eth_call` made now runs at: anvil picks it from its clock."""
    return Between(now(w3) + notice_s, now(w3) + notice_s + 60)


def register(registry: Contract, model_id: bytes, owner: str, governor: str, parents=(), min_ppm: int = 0) -> None:
    call = registry.functions.registerModel(model_id, list(parents), min_ppm, NO_DIGEST, "ipfs://weights", governor)
    send(registry.w3, call, owner)


def solo_policy(account: str) -> list[tuple[int, bytes, int]]:
    return [(ACCOUNT, account_word(account), 1_000_000)]


def test_only_the_governor_sets_a_policy_and_a_change_needs_the_notice(anvil: Anvil, registry: Contract) -> None:  # noqa: F811
    """Pins who and when: the owner, an outsider cannot set a split; the governor's first policy may start now,
    a change must wait NOTICE_SECONDS after its block, and nothing is ever retroactive."""
    w3 = anvil.w3
    owner, governor, outsider, payee = w3.eth.accounts[1:5]
    model = fresh("m")
    register(registry, model, owner, governor)
    start = now(w3) + 10
    for caller in (owner, outsider):
        call = registry.functions.setModelPolicy(model, start, 0, solo_policy(payee))
        reverts(registry, call, caller, "ModelRegistryNotGovernor", caller, governor)
    send(w3, registry.functions.setModelPolicy(model, start, 0, solo_policy(payee)), governor)

    notice = registry.functions.NOTICE_SECONDS().call()
    retroactive = now(w3) - 1
    call = registry.functions.setModelPolicy(model, retroactive, 0, solo_policy(outsider))
    reverts(registry, call, governor, "ModelRegistryPolicyRetroactive", retroactive, call_time(w3))
    soon = now(w3) + notice - 10
    call = registry.functions.setModelPolicy(model, soon, 0, solo_policy(outsider))
    reverts(registry, call, governor, "ModelRegistryNoticeTooShort", soon, call_time(w3, notice))
    later = now(w3) + notice + 60
    receipt = send(w3, registry.functions.setModelPolicy(model, later, 0, solo_policy(outsider)), governor)
    (event,) = registry.events.SplitPolicySet().process_receipt(receipt, errors=DISCARD)
    assert (event.args.subjectKind, event.args.subjectId) == (MODEL, model)


def test_a_policy_may_pay_the_holders_of_a_token_named_by_its_address(anvil: Anvil, registry: Contract) -> None:  # noqa: F811
    """Issue 17: recipient kind Holders (3) names an ERC-20 by its address, in a model's or a dataset's policy,
    after the accounts; a zero or wider-than-an-address id reverts; the indexer reads it as `holders:<token>`."""
    w3 = anvil.w3
    owner, payee, token = w3.eth.accounts[1], w3.eth.accounts[2], w3.eth.accounts[8]
    model, data = fresh("holders"), fresh("holders-data")
    register(registry, model, owner, owner)
    send(w3, registry.functions.registerDataset(data, NO_DIGEST, "ipfs://data", owner), owner)
    start = now(w3) + 10
    holders = (HOLDERS, account_word(token), 600_000)
    for bad in (b"\x00" * 32, b"\x01" * 32):
        shares = [(ACCOUNT, account_word(payee), 400_000), (HOLDERS, bad, 600_000)]
        call = registry.functions.setModelPolicy(model, start, 0, shares)
        reverts(registry, call, owner, "ModelRegistryBadAddress", bad)
    call = registry.functions.setModelPolicy(model, start, 0, [holders, (ACCOUNT, account_word(payee), 400_000)])
    reverts(registry, call, owner, "ModelRegistryNotSorted", 1)
    shares = [(ACCOUNT, account_word(payee), 400_000), holders]
    receipt = send(w3, registry.functions.setModelPolicy(model, start, 0, shares), owner)
    (event,) = registry.events.SplitPolicySet().process_receipt(receipt, errors=DISCARD)
    named = [recipient_name(int(share["kind"]), share["id"]) for share in event.args.shares]
    assert named == [payee, f"holders:{token}"]
    assert recipient_tuple(f"holders:{token}", 600_000) == holders
    send(w3, registry.functions.setDatasetPolicy(data, start, [(HOLDERS, account_word(token), 1_000_000)]), owner)


def test_payout_address_changes_only_by_the_account_or_its_signature(anvil: Anvil, registry: Contract) -> None:  # noqa: F811
    """Pins payout authority: the account itself, or its EIP-712 signature relayed by anyone; a signature by
    another key, a replayed or expired one, reverts with its error; a contract wallet signs by EIP-1271."""
    w3 = anvil.w3
    account, relayer, thief = w3.eth.accounts[5:8]
    assert registry.functions.payoutAddress(account).call() == account
    receipt = send(w3, registry.functions.setPayoutAddress(relayer), account)
    (event,) = registry.events.PayoutAddressSet().process_receipt(receipt, errors=DISCARD)
    assert (event.args.account, event.args.payout) == (account, relayer)
    send(w3, registry.functions.setPayoutAddress(thief), thief)  # anyone else sets only its own
    assert registry.functions.payoutAddress(account).call() == relayer

    key, wrong_key = Account.create(), Account.create()
    deadline = now(w3) + 3_600
    forged = payout_signature(registry, wrong_key, key.address, thief, 0, deadline)
    call = registry.functions.setPayoutAddressBySig(key.address, thief, 0, deadline, forged)
    reverts(registry, call, thief, "ModelRegistryInvalidSignature", key.address)
    signed = payout_signature(registry, key, key.address, relayer, 0, deadline)
    send(w3, registry.functions.setPayoutAddressBySig(key.address, relayer, 0, deadline, signed), thief)
    assert registry.functions.payoutAddress(key.address).call() == relayer
    replay = registry.functions.setPayoutAddressBySig(key.address, relayer, 0, deadline, signed)
    reverts(registry, replay, thief, "InvalidAccountNonce", key.address, 1)
    expired = now(w3) - 1
    late = payout_signature(registry, key, key.address, thief, 1, expired)
    call = registry.functions.setPayoutAddressBySig(key.address, thief, 1, expired, late)
    reverts(registry, call, thief, "ModelRegistrySignatureExpired", expired, call_time(w3))

    wallet = deploy_contract(w3, "TestContractWallet", relayer, key.address)
    by_owner = payout_signature(registry, key, wallet.address, relayer, 0, deadline)
    send(w3, registry.functions.setPayoutAddressBySig(wallet.address, relayer, 0, deadline, by_owner), thief)
    assert registry.functions.payoutAddress(wallet.address).call() == relayer
    by_other = payout_signature(registry, wrong_key, wallet.address, thief, 1, deadline)
    call = registry.functions.setPayoutAddressBySig(wallet.address, thief, 1, deadline, by_other)
    reverts(registry, call, thief, "ModelRegistryInvalidSignature", wallet.address)


def test_lineage_needs_registered_parents_their_minimum_and_a_new_id(anvil: Anvil, registry: Contract) -> None:  # noqa: F811
    """Pins lineage at registration: a missing parent, a share below the parent's license minimum, a model id
    registered before: each reverts with its error; a valid derivative registers with its lineage."""
    w3 = anvil.w3
    owner, squatter = w3.eth.accounts[1], w3.eth.accounts[8]
    base = fresh("base")
    register(registry, base, owner, owner, min_ppm=100_000)
    missing = fresh("never")
    child = fresh("child")

    def attempt(parents):
        return registry.functions.registerModel(child, parents, 0, NO_DIGEST, "", owner)

    reverts(registry, attempt([(missing, 200_000)]), owner, "ModelRegistryParentMissing", missing)
    reverts(
        registry,
        attempt([(base, 99_999)]),
        owner,
        "ModelRegistryShareBelowParentMinimum",
        base,
        100_000,
        99_999,
    )
    send(w3, attempt([(base, 100_000)]), owner)
    assert registry.functions.parentSharePpm(child, base).call() == 100_000
    call = registry.functions.registerModel(child, [], 0, NO_DIGEST, "", squatter)
    reverts(registry, call, squatter, "ModelRegistryModelExists", child)


def test_policies_are_validated_on_chain(anvil: Anvil, registry: Contract) -> None:  # noqa: F811
    """Pins the shape of a split: sum 1,000,000, no self-reference, parents with exactly their lineage share,
    only registered datasets, sorted recipients, at most RECIPIENTS_MAX; a dataset policy names accounts only."""
    w3 = anvil.w3
    owner, payee = w3.eth.accounts[1], w3.eth.accounts[2]
    parent, child, data = fresh("p"), fresh("c"), fresh("d")
    register(registry, parent, owner, owner)
    register(registry, child, owner, owner, parents=[(parent, 300_000)])
    send(w3, registry.functions.registerDataset(data, NO_DIGEST, "ipfs://data", owner), owner)
    start = now(w3) + 100

    def child_policy(shares):
        return registry.functions.setModelPolicy(child, start, 0, shares)

    me = (ACCOUNT, account_word(payee), 700_000)
    reverts(registry, child_policy([me]), owner, "ModelRegistryBadShares", 700_000, 1_000_000)
    reverts(
        registry,
        child_policy([me, (MODEL, parent, 200_000), (MODEL, child, 100_000)]),
        owner,
        "ModelRegistryParentShareMismatch",
        parent,
        300_000,
        200_000,
    )
    reverts(
        registry,
        child_policy([(ACCOUNT, account_word(payee), 1_000_000)]),
        owner,
        "ModelRegistryParentsOmitted",
        1,
        0,
    )
    reverts(registry, child_policy([(MODEL, parent, 300_000), me]), owner, "ModelRegistryNotSorted", 1)
    self_share = (MODEL, child, 300_000)
    reverts(registry, child_policy([me, self_share]), owner, "ModelRegistrySelfReference", child)
    stranger = fresh("nodata")
    reverts(
        registry,
        child_policy([(ACCOUNT, account_word(payee), 600_000), (MODEL, parent, 300_000), (DATASET, stranger, 100_000)]),
        owner,
        "ModelRegistryDatasetMissing",
        stranger,
    )
    many = [(ACCOUNT, (i + 1).to_bytes(32, "big"), 1) for i in range(33)]
    reverts(registry, registry.functions.setModelPolicy(parent, start, 0, many), owner, "ModelRegistryTooMany", 33, 32)
    good = [(ACCOUNT, account_word(payee), 600_000), (MODEL, parent, 300_000), (DATASET, data, 100_000)]
    send(w3, child_policy(good), owner)

    call = registry.functions.setDatasetPolicy(data, start, [(MODEL, parent, 1_000_000)])
    reverts(registry, call, owner, "ModelRegistryRecipientKindNotAllowed", 0, MODEL)
    send(w3, registry.functions.setDatasetPolicy(data, start, [(ACCOUNT, account_word(payee), 1_000_000)]), owner)
    call = registry.functions.setDatasetPolicy(data, start, solo_policy(payee))
    reverts(registry, call, payee, "ModelRegistryNotGovernor", payee, owner)


def test_a_governor_hands_its_role_over_and_keeps_no_power(anvil: Anvil, registry: Contract) -> None:  # noqa: F811
    """Pins moving a model to community governance: after `setModelGovernor` the old governor is refused."""
    w3 = anvil.w3
    owner, timelock = w3.eth.accounts[1], w3.eth.accounts[9]
    model = fresh("handover")
    register(registry, model, owner, owner)
    send(w3, registry.functions.setModelGovernor(model, timelock), owner)
    call = registry.functions.setModelPolicy(model, now(w3) + 10, 0, solo_policy(owner))
    reverts(registry, call, owner, "ModelRegistryNotGovernor", owner, timelock)
    call = registry.functions.setModelGovernor(model, owner)
    reverts(registry, call, owner, "ModelRegistryNotGovernor", owner, timelock)
