"""RoyaltyDistributor against a real anvil, with proofs from settlement.onchain.merkle.

Every revert is asserted by its custom error selector and decoded arguments, never by "it reverted".
All contract tests live in this one module so that they share one anvil process.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from eth_abi import decode
from eth_utils import to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD

from settlement.onchain.contract_artifacts import distributor_artifact
from settlement.onchain.merkle import MerkleTree
from tests.support.anvil import NO_DIGEST, Anvil, Deployment, anvil, deploy  # noqa: F401 - anvil is a fixture

TIMELOCK_SECONDS = 3_600
SETTLER_ROLE = Web3.keccak(text="SETTLER_ROLE")
GUARDIAN_ROLE = Web3.keccak(text="GUARDIAN_ROLE")


def payees(count: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return [to_checksum_address(rnd.randbytes(20)) for _ in range(count)]


def custom_error(contract: Contract, name: str) -> tuple[bytes, list[str]]:
    """The 4-byte selector and argument types of error `name` in the contract's ABI."""
    entry = next(e for e in contract.abi if e["type"] == "error" and e["name"] == name)
    types = [arg["type"] for arg in entry["inputs"]]
    return Web3.keccak(text=f"{name}({','.join(types)})")[:4], types


def assert_reverts(contract: Contract, call: Any, sender: str, name: str, *args: object) -> None:
    """Assert that `call` from `sender` reverts with custom error `name` carrying exactly `args`."""
    assert_custom_error(contract, lambda: call.call({"from": sender}), name, *args)


def assert_custom_error(contract: Contract, attempt: Callable[[], object], name: str, *args: object) -> None:
    """Assert that `attempt()` reverts with custom error `name` (from `contract`'s ABI) carrying `args`."""
    selector, types = custom_error(contract, name)
    with pytest.raises(ContractCustomError) as raised:
        attempt()
    data = raised.value.data
    data = bytes.fromhex(data[2:]) if isinstance(data, str) else data
    assert data[:4] == selector, f"expected {name}, got selector 0x{data[:4].hex()}"

    def normalised(values: Any) -> list[object]:
        return [to_checksum_address(v) if t == "address" else v for t, v in zip(types, values, strict=True)]

    assert normalised(decode(types, data[4:])) == normalised(args)


@pytest.fixture
def chain(anvil: Anvil) -> Callable[[int], Deployment]:  # noqa: F811
    """Deploys a fresh token and distributor with the given timelock."""
    return lambda timelock_seconds: deploy(anvil.w3, timelock_seconds)


def test_two_epochs_pay_each_payee_its_cumulative_amount_then_exactly_the_difference(chain) -> None:
    """Pins the claim flow end to end: epoch 1 pays each leaf, epoch 2 pays only what was added."""
    d = chain(0)
    accounts = payees(6, seed=1)
    first = MerkleTree.build(accounts[:5], [10_000_000, 1, 2_500_000, 7, 999])
    d.fund(sum(first.amount_units(a) for a in accounts[:5]))
    d.propose(1, first)
    for account in accounts[:5]:
        receipt = d.claim(first, account)
        (event,) = d.distributor.events.Claimed().process_receipt(receipt, errors=DISCARD)
        assert (event.args.account, event.args.epoch) == (account, 1)
        assert d.balance(account) == first.amount_units(account)
    assert d.balance(d.distributor.address) == 0
    assert_reverts(
        d.distributor,
        d.distributor.functions.claim(accounts[0], 10_000_000, first.proof(accounts[0])),
        d.outsider,
        "RoyaltyDistributorNothingToClaim",
        accounts[0],
        10_000_000,
    )

    # Epoch 2: two payees earn more, one is new, the rest are unchanged; one payee claims nothing yet.
    amounts = {
        accounts[0]: 10_500_000,
        accounts[1]: 1,
        accounts[2]: 2_500_000,
        accounts[3]: 8,
        accounts[4]: 999,
        accounts[5]: 42,
    }
    second = MerkleTree.from_amounts(amounts)
    total_second = sum(amounts.values())
    d.fund(total_second - d.distributor.functions.totalClaimed().call())
    d.propose(2, second)
    first_amounts = {account: first.amount_units(account) for account in accounts[:5]}
    for account in (accounts[0], accounts[3], accounts[5]):
        before = d.balance(account)
        receipt = d.claim(second, account)
        (event,) = d.distributor.events.Claimed().process_receipt(receipt, errors=DISCARD)
        assert event.args.amount == d.balance(account) - before == amounts[account] - first_amounts.get(account, 0)
    assert_reverts(
        d.distributor,
        d.distributor.functions.claim(accounts[1], 1, second.proof(accounts[1])),
        d.outsider,
        "RoyaltyDistributorNothingToClaim",
        accounts[1],
        1,
    )
    assert d.distributor.functions.claimed(accounts[0]).call() == 10_500_000
    assert d.balance(d.distributor.address) == total_second - d.distributor.functions.totalClaimed().call()


def test_only_the_settler_proposes_and_only_the_guardian_revokes(chain) -> None:
    """Pins the roles: proposing or revoking from another account reverts with OpenZeppelin's error."""
    d = chain(TIMELOCK_SECONDS)
    tree = MerkleTree.build(payees(2, seed=2), [5, 6])
    d.fund(11)
    for sender in (d.admin, d.guardian, d.outsider):
        assert_reverts(
            d.distributor,
            d.distributor.functions.proposeRoot(1, tree.root, 11, NO_DIGEST),
            sender,
            "AccessControlUnauthorizedAccount",
            sender,
            SETTLER_ROLE,
        )
    d.propose(1, tree)
    for sender in (d.admin, d.settler, d.outsider):
        assert_reverts(
            d.distributor,
            d.distributor.functions.revokeRoot(tree.root),
            sender,
            "AccessControlUnauthorizedAccount",
            sender,
            GUARDIAN_ROLE,
        )


def test_claim_waits_for_the_timelock(anvil: Anvil, chain) -> None:  # noqa: F811
    """Pins the timelock: a claim before it names the epoch and its activation time, after it pays."""
    d = chain(TIMELOCK_SECONDS)
    accounts = payees(3, seed=3)
    tree = MerkleTree.build(accounts, [100, 200, 300])
    d.fund(600)
    receipt = d.propose(1, tree)
    (proposed,) = d.distributor.events.RootProposed().process_receipt(receipt, errors=DISCARD)
    active_at = proposed.args.activeAtSeconds
    assert active_at == d.w3.eth.get_block(receipt["blockNumber"])["timestamp"] + TIMELOCK_SECONDS
    assert d.distributor.functions.pendingRoot().call()[:2] == [1, tree.root]
    assert_reverts(
        d.distributor,
        d.distributor.functions.claim(accounts[0], 100, tree.proof(accounts[0])),
        d.outsider,
        "RoyaltyDistributorRootNotActive",
        1,
        active_at,
    )
    anvil.advance_time(TIMELOCK_SECONDS)
    d.claim(tree, accounts[0])
    assert d.balance(accounts[0]) == 100
    assert d.distributor.functions.activeRoot().call()[:2] == [1, tree.root]


def test_claims_use_the_active_root_while_the_next_one_waits(anvil: Anvil, chain) -> None:  # noqa: F811
    """Pins the handover: the last active root keeps paying during the next root's timelock, not after."""
    d = chain(TIMELOCK_SECONDS)
    accounts = payees(2, seed=4)
    first = MerkleTree.build(accounts, [100, 200])
    d.fund(300)
    d.propose(1, first)
    anvil.advance_time(TIMELOCK_SECONDS)
    second = MerkleTree.build(accounts, [150, 260])
    d.fund(110)
    d.propose(2, second)
    assert d.distributor.functions.latestEpoch().call() == 2
    d.claim(first, accounts[0])
    assert d.balance(accounts[0]) == 100
    (_, _, _, _, active_at) = d.distributor.functions.pendingRoot().call()
    assert_reverts(
        d.distributor,
        d.distributor.functions.claim(accounts[0], 150, second.proof(accounts[0])),
        d.outsider,
        "RoyaltyDistributorRootNotActive",
        2,
        active_at,
    )
    assert_reverts(
        d.distributor,
        d.distributor.functions.proposeRoot(3, second.root, 410, NO_DIGEST),
        d.settler,
        "RoyaltyDistributorRootPending",
        2,
        active_at,
    )

    anvil.advance_time(TIMELOCK_SECONDS)
    assert_reverts(
        d.distributor,
        d.distributor.functions.claim(accounts[1], 200, first.proof(accounts[1])),
        d.outsider,
        "RoyaltyDistributorInvalidProof",
        accounts[1],
        200,
    )
    d.claim(second, accounts[0])
    d.claim(second, accounts[1])
    assert [d.balance(a) for a in accounts] == [150, 260]


def test_a_revoked_root_is_never_claimable_and_its_epoch_can_be_proposed_again(anvil: Anvil, chain) -> None:  # noqa: F811
    """Pins revocation: claims against a revoked root name it; the epoch is free for a corrected root."""
    d = chain(TIMELOCK_SECONDS)
    accounts = payees(2, seed=5)
    bad = MerkleTree.build(accounts, [1_000, 1])
    d.fund(1_001)
    d.propose(1, bad)
    receipt = d.send(d.distributor.functions.revokeRoot(bad.root), d.guardian)
    (revoked,) = d.distributor.events.RootRevoked().process_receipt(receipt, errors=DISCARD)
    assert (revoked.args.epoch, revoked.args.root, revoked.args.guardian) == (1, bad.root, d.guardian)
    anvil.advance_time(TIMELOCK_SECONDS)
    assert_reverts(
        d.distributor,
        d.distributor.functions.claim(accounts[0], 1_000, bad.proof(accounts[0])),
        d.outsider,
        "RoyaltyDistributorRootRevoked",
        bad.root,
    )

    fixed = MerkleTree.build(accounts, [500, 501])
    d.propose(1, fixed)
    anvil.advance_time(TIMELOCK_SECONDS)
    assert_reverts(
        d.distributor,
        d.distributor.functions.revokeRoot(fixed.root),
        d.guardian,
        "RoyaltyDistributorNotPending",
        fixed.root,
    )
    d.claim(fixed, accounts[1])
    assert d.balance(accounts[1]) == 501


def test_wrong_proof_and_inflated_amount_revert_as_invalid_proof(chain) -> None:
    """Pins proof checking: another leaf's proof, a truncated proof and an inflated amount all revert."""
    d = chain(0)
    accounts = payees(4, seed=6)
    tree = MerkleTree.build(accounts, [10, 20, 30, 40])
    d.fund(100)
    claim = d.distributor.functions.claim
    assert_reverts(
        d.distributor,
        claim(accounts[0], 10, tree.proof(accounts[0])),
        d.outsider,
        "RoyaltyDistributorNoActiveRoot",
    )
    d.propose(1, tree)
    for account, amount, proof in [
        (accounts[0], 10, tree.proof(accounts[1])),
        (accounts[0], 10, tree.proof(accounts[0])[:-1]),
        (accounts[0], 11, tree.proof(accounts[0])),
        (accounts[1], 10, tree.proof(accounts[0])),
    ]:
        assert_reverts(
            d.distributor,
            claim(account, amount, proof),
            d.outsider,
            "RoyaltyDistributorInvalidProof",
            account,
            amount,
        )
    assert d.balance(d.distributor.address) == 100


def test_epochs_must_strictly_increase(chain) -> None:
    """Pins epoch ordering: proposing the active epoch again, or an older one, reverts with both values."""
    d = chain(0)
    tree = MerkleTree.build(payees(1, seed=7), [5])
    d.fund(5)
    d.propose(2, tree)
    for stale in (2, 1):
        assert_reverts(
            d.distributor,
            d.distributor.functions.proposeRoot(stale, tree.root, 5, NO_DIGEST),
            d.settler,
            "RoyaltyDistributorEpochNotIncreasing",
            2,
            stale,
        )
    d.propose(3, tree)


def test_underfunded_proposal_reverts(chain) -> None:
    """Pins the solvency check: the balance must cover the new total minus what was already claimed."""
    d = chain(0)
    accounts = payees(2, seed=8)
    tree = MerkleTree.build(accounts, [60, 40])
    d.fund(99)
    assert_reverts(
        d.distributor,
        d.distributor.functions.proposeRoot(1, tree.root, 100, NO_DIGEST),
        d.settler,
        "RoyaltyDistributorUnderfunded",
        100,
        99,
    )
    d.fund(1)
    d.propose(1, tree)
    d.claim(tree, accounts[0])
    # 60 of 100 claimed, 40 left: a total of 150 needs 90 on hand.
    grown = MerkleTree.build(accounts, [60, 90])
    assert_reverts(
        d.distributor,
        d.distributor.functions.proposeRoot(2, grown.root, 150, NO_DIGEST),
        d.settler,
        "RoyaltyDistributorUnderfunded",
        90,
        40,
    )
    assert_reverts(
        d.distributor,
        d.distributor.functions.proposeRoot(2, grown.root, 59, NO_DIGEST),
        d.settler,
        "RoyaltyDistributorTotalDecreasing",
        100,
        59,
    )


def test_claims_cannot_exceed_the_total_the_root_declared(chain) -> None:
    """Pins the cap on a forged tree: its leaves cannot pay out more than its declared (funded) total."""
    d = chain(0)
    accounts = payees(2, seed=9)
    tree = MerkleTree.build(accounts, [80, 80])
    d.fund(160)
    d.propose(1, tree, total_units=100)
    d.claim(tree, accounts[0])
    assert_reverts(
        d.distributor,
        d.distributor.functions.claim(accounts[1], 80, tree.proof(accounts[1])),
        d.outsider,
        "RoyaltyDistributorRootTotalExceeded",
        100,
        160,
    )


def test_while_a_root_waits_the_active_one_is_capped_at_its_own_total_and_a_revocation_keeps_the_books(
    anvil: Anvil,  # noqa: F811
    chain,
) -> None:
    """Pins the packed claim state (what the latest root still owes, its epoch and its step from the previous
    one): claims during a timelock are capped at the active root's total, not the waiting one's, and name the
    active epoch; revoking the waiting root brings `totalClaimed`, the latest total and the surplus back."""
    d = chain(TIMELOCK_SECONDS)
    accounts = payees(2, seed=12)
    forged = MerkleTree.build(accounts, [80, 80])  # leaves above its declared total of 100
    d.fund(1_000)
    d.propose(3, forged, total_units=100)
    anvil.advance_time(TIMELOCK_SECONDS)
    waiting = MerkleTree.build(accounts, [150, 150])
    d.propose(7, waiting)
    (claimed,) = d.distributor.events.Claimed().process_receipt(d.claim(forged, accounts[0]), errors=DISCARD)
    assert (claimed.args.epoch, claimed.args.amount) == (3, 80)
    over = d.distributor.functions.claim(accounts[1], 80, forged.proof(accounts[1]))
    assert_reverts(d.distributor, over, d.outsider, "RoyaltyDistributorRootTotalExceeded", 100, 160)
    views = d.distributor.functions
    assert (views.totalClaimed().call(), views.latestTotalCumulative().call(), views.surplusUnits().call()) == (
        80,
        300,
        920 - 220,
    )

    d.send(d.distributor.functions.revokeRoot(waiting.root), d.guardian)
    assert (views.totalClaimed().call(), views.latestTotalCumulative().call(), views.surplusUnits().call()) == (
        80,
        100,
        920 - 20,
    )
    assert views.latestEpoch().call() == 3
    assert views.activeRoot().call()[:3] == [3, forged.root, 100]
    assert_reverts(d.distributor, over, d.outsider, "RoyaltyDistributorRootTotalExceeded", 100, 160)

    corrected = MerkleTree.build(accounts, [150, 149])
    d.propose(5, corrected)
    anvil.advance_time(TIMELOCK_SECONDS)
    (claimed,) = d.distributor.events.Claimed().process_receipt(d.claim(corrected, accounts[1]), errors=DISCARD)
    assert (claimed.args.epoch, claimed.args.amount) == (5, 149)
    d.claim(corrected, accounts[0])
    assert [d.balance(a) for a in accounts] == [150, 149]
    assert (views.totalClaimed().call(), views.surplusUnits().call()) == (299, 1_000 - 299)


def test_a_lower_cumulative_amount_than_claimed_reverts(chain) -> None:
    """Pins monotonic claims on-chain: a later root that lowers an account's amount cannot be claimed."""
    d = chain(0)
    accounts = payees(2, seed=10)
    first = MerkleTree.build(accounts, [50, 1])
    d.fund(51)
    d.propose(1, first)
    d.claim(first, accounts[0])
    lowered = MerkleTree.build(accounts, [40, 1])
    d.propose(2, lowered, total_units=51)
    assert_reverts(
        d.distributor,
        d.distributor.functions.claim(accounts[0], 40, lowered.proof(accounts[0])),
        d.outsider,
        "RoyaltyDistributorCumulativeBelowClaimed",
        accounts[0],
        40,
        50,
    )


def test_constructor_rejects_a_zero_token_a_zero_admin_and_an_overlong_timelock(anvil: Anvil) -> None:  # noqa: F811
    """Pins deployment checks: each bad constructor argument reverts with its own error and value."""
    w3 = anvil.w3
    admin = w3.eth.accounts[0]
    build = distributor_artifact()
    factory = w3.eth.contract(abi=build.abi, bytecode=build.bytecode)
    token = deploy(w3, 0).token.address
    zero = "0x" + "00" * 20
    for args, name, values in [
        ((zero, 0, 0, admin, admin, [admin], admin, 1, zero), "RoyaltyDistributorInvalidToken", (zero,)),
        ((token, 0, 0, zero, admin, [admin], admin, 1, zero), "AccessControlInvalidDefaultAdmin", (zero,)),
        (
            (token, 30 * 86_400 + 1, 0, admin, admin, [admin], admin, 1, zero),
            "RoyaltyDistributorTimelockTooLong",
            (30 * 86_400 + 1, 30 * 86_400),
        ),
    ]:
        assert_custom_error(
            factory, lambda a=args: factory.constructor(*a).estimate_gas({"from": admin}), name, *values
        )
