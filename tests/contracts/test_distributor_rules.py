"""RoyaltyDistributor's roles and limits against a real anvil: the attacks of issue 16 replayed, each refused
by its custom error with its values, and the stolen settler key moving no token.

Accounts: 0 admin, 1 settler, 2 and 5 guardians, 3 outsider (the relayer of claims), 4 treasury.
"""

from __future__ import annotations

from typing import Any

import pytest
from web3 import Web3
from web3.logs import DISCARD

from settlement.onchain.contract_artifacts import distributor_artifact, load_artifact
from settlement.onchain.merkle import MerkleTree
from tests.contracts.test_royalty_distributor import assert_custom_error, assert_reverts, payees
from tests.support.anvil import (  # noqa: F401 - anvil is a fixture
    GROWTH_UNLIMITED,
    NO_DIGEST,
    ZERO_ADDRESS,
    Anvil,
    Deployment,
    anvil,
    deploy,
)

TIMELOCK_SECONDS = 3_600
DEFAULT_ADMIN_ROLE = b"\x00" * 32
SETTLER_ROLE = Web3.keccak(text="SETTLER_ROLE")
GUARDIAN_ROLE = Web3.keccak(text="GUARDIAN_ROLE")
EPOCH_STEP_MAX = 10_000
TIMELOCK_SECONDS_MIN = 3_600
GROWTH_CAP_UNITS = 1_000_000


@pytest.fixture
def chain_of(anvil: Anvil):  # noqa: F811
    """Deploys a fresh token and distributor with the given timelock (and `deploy`'s keyword arguments)."""
    return lambda timelock_seconds, **kwargs: deploy(anvil.w3, timelock_seconds, **kwargs)


def _treasury_funded(d: Deployment, units: int) -> str:
    """Account 4 as the treasury, holding and approving `units` for the distributor."""
    treasury = d.w3.eth.accounts[4]
    d.send(d.distributor.functions.setTreasury(treasury), d.admin)
    d.send(d.token.functions.mint(treasury, units), d.admin)
    d.send(d.token.functions.approve(d.distributor.address, units), treasury)
    return treasury


def test_a_stolen_settler_key_moves_no_token(anvil: Anvil) -> None:  # noqa: F811
    """The attack: with the settler's key the attacker tries to take the guardian's role, to propose a
    draining root above the growth cap, to propose one within it (revoked by a guardian, then proposed
    again), to sweep, and to pull the treasury's tokens; every step reverts or is revoked, the attacker
    ends with no token and the distributor and treasury hold exactly what they held."""
    d = deploy(anvil.w3, TIMELOCK_SECONDS, max_epoch_growth_units=GROWTH_CAP_UNITS)
    attacker = d.settler
    honest = MerkleTree.build(payees(3, seed=21), [300_000, 200_000, 100_000])
    treasury = _treasury_funded(d, 5_400_000)
    d.send(d.distributor.functions.fund(600_000), attacker)  # funding only moves treasury -> distributor
    d.propose(1, honest)
    anvil.advance_time(TIMELOCK_SECONDS)
    held = (d.balance(d.distributor.address), d.balance(treasury))

    for call, role in [
        (d.distributor.functions.revokeRole(GUARDIAN_ROLE, d.guardian), DEFAULT_ADMIN_ROLE),
        (d.distributor.functions.grantRole(GUARDIAN_ROLE, attacker), DEFAULT_ADMIN_ROLE),
        (d.distributor.functions.sweep(d.token.address, attacker, 1), DEFAULT_ADMIN_ROLE),
        (d.distributor.functions.setTreasury(attacker), DEFAULT_ADMIN_ROLE),
        (d.distributor.functions.setMaxEpochGrowthUnits(GROWTH_UNLIMITED), DEFAULT_ADMIN_ROLE),
        (d.distributor.functions.revokeRoot(honest.root), GUARDIAN_ROLE),
    ]:
        assert_reverts(d.distributor, call, attacker, "AccessControlUnauthorizedAccount", attacker, role)
    d.send(d.distributor.functions.fund(4_800_000), attacker)
    # Draining everything the distributor holds needs a root adding more than the cap.
    drain = MerkleTree.build([attacker], [5_400_000])
    assert_reverts(
        d.distributor,
        d.distributor.functions.proposeRoot(2, drain.root, 600_000 + 5_400_000, NO_DIGEST),
        attacker,
        "RoyaltyDistributorGrowthTooLarge",
        5_400_000,
        GROWTH_CAP_UNITS,
    )
    within = MerkleTree.build([attacker], [600_000 + GROWTH_CAP_UNITS])
    d.send(d.distributor.functions.proposeRoot(2, within.root, 600_000 + GROWTH_CAP_UNITS, NO_DIGEST), attacker)
    assert_reverts(
        d.distributor,
        d.distributor.functions.claim(attacker, 600_000 + GROWTH_CAP_UNITS, within.proof(attacker)),
        attacker,
        "RoyaltyDistributorRootNotActive",
        2,
        d.distributor.functions.pendingRoot().call()[4],
    )
    d.send(d.distributor.functions.revokeRoot(within.root), d.guardian)
    assert_reverts(
        d.distributor,
        d.distributor.functions.proposeRoot(2, within.root, 600_000 + GROWTH_CAP_UNITS, NO_DIGEST),
        attacker,
        "RoyaltyDistributorRootWasRevoked",
        within.root,
    )
    anvil.advance_time(TIMELOCK_SECONDS)
    assert_reverts(
        d.distributor,
        d.distributor.functions.claim(attacker, 600_000 + GROWTH_CAP_UNITS, within.proof(attacker)),
        attacker,
        "RoyaltyDistributorRootRevoked",
        within.root,
    )
    assert d.balance(attacker) == 0
    assert (d.balance(d.distributor.address), d.balance(treasury)) == (held[0] + 4_800_000, held[1] - 4_800_000)
    assert d.distributor.functions.activeRoot().call()[:2] == [1, honest.root]


def test_epochs_rise_by_at_most_the_step_so_epoch_2_64_minus_1_cannot_brick_the_contract(chain_of) -> None:
    """The attack: a proposal of epoch 2^64-1 would leave no later epoch; it reverts with the step, and
    the largest step allowed is accepted."""
    d = chain_of(0)
    tree = MerkleTree.build(payees(1, seed=22), [5])
    d.fund(5)
    for epoch in (2**64 - 1, EPOCH_STEP_MAX + 1):
        assert_reverts(
            d.distributor,
            d.distributor.functions.proposeRoot(epoch, tree.root, 5, NO_DIGEST),
            d.settler,
            "RoyaltyDistributorEpochStepTooLarge",
            0,
            epoch,
            EPOCH_STEP_MAX,
        )
    d.propose(EPOCH_STEP_MAX, tree)
    d.propose(EPOCH_STEP_MAX + 1, tree)
    assert d.distributor.functions.latestEpoch().call() == EPOCH_STEP_MAX + 1


def test_totals_never_decrease_and_growth_is_capped_by_the_admin(chain_of) -> None:
    """Pins the totals: a lower total reverts with both, growth above the admin's cap reverts with both,
    and only the admin moves the cap."""
    d = chain_of(0, max_epoch_growth_units=100)
    accounts = payees(2, seed=23)
    d.fund(10_000)
    d.propose(1, MerkleTree.build(accounts, [60, 40]))
    grown = MerkleTree.build(accounts, [60, 141])
    assert_reverts(
        d.distributor,
        d.distributor.functions.proposeRoot(2, grown.root, 201, NO_DIGEST),
        d.settler,
        "RoyaltyDistributorGrowthTooLarge",
        101,
        100,
    )
    assert_reverts(
        d.distributor,
        d.distributor.functions.proposeRoot(2, grown.root, 99, NO_DIGEST),
        d.settler,
        "RoyaltyDistributorTotalDecreasing",
        100,
        99,
    )
    receipt = d.send(d.distributor.functions.setMaxEpochGrowthUnits(101), d.admin)
    (event,) = d.distributor.events.MaxEpochGrowthSet().process_receipt(receipt, errors=DISCARD)
    assert event.args.maxEpochGrowthUnits == 101 == d.distributor.functions.maxEpochGrowthUnits().call()
    d.propose(2, grown)
    assert d.distributor.functions.latestTotalCumulative().call() == 201


def test_a_short_timelock_is_refused_off_a_local_chain(anvil: Anvil) -> None:  # noqa: F811
    """The attack: a timelock of 0 leaves no time to revoke. Off chain ids 31337 and the in-process one the
    constructor reverts below the minimum; on anvil's own id 0 is allowed (tests, demos)."""
    w3 = anvil.w3
    admin, settler, guardian = w3.eth.accounts[:3]
    build = distributor_artifact()
    factory = w3.eth.contract(abi=build.abi, bytecode=build.bytecode)
    token = deploy(w3, 0).token.address
    args = [token, 0, 0, admin, settler, [guardian], admin, GROWTH_UNLIMITED, ZERO_ADDRESS]
    factory.constructor(*args).estimate_gas({"from": admin})
    anvil.rpc("anvil_setChainId", [1])
    try:
        assert_custom_error(
            factory,
            lambda: factory.constructor(*args).estimate_gas({"from": admin}),
            "RoyaltyDistributorTimelockTooShort",
            0,
            TIMELOCK_SECONDS_MIN,
        )
        args[1] = TIMELOCK_SECONDS_MIN
        factory.constructor(*args).estimate_gas({"from": admin})
    finally:
        anvil.rpc("anvil_setChainId", [31337])


def test_admin_transfer_is_two_step_and_delayed_and_guardians_are_several(anvil: Anvil) -> None:  # noqa: F811
    """Pins AccessControlDefaultAdminRules: the admin role cannot be granted directly; a transfer is begun,
    cannot be accepted before the delay, and is accepted after it. Either of two guardians revokes."""
    w3 = anvil.w3
    second_guardian = w3.eth.accounts[5]
    d = deploy(w3, TIMELOCK_SECONDS, admin_delay_seconds=86_400, guardians=[w3.eth.accounts[2], second_guardian])
    new_admin = w3.eth.accounts[6]
    assert_reverts(
        d.distributor,
        d.distributor.functions.grantRole(DEFAULT_ADMIN_ROLE, new_admin),
        d.admin,
        "AccessControlEnforcedDefaultAdminRules",
    )
    d.send(d.distributor.functions.beginDefaultAdminTransfer(new_admin), d.admin)
    _, schedule = d.distributor.functions.pendingDefaultAdmin().call()
    assert_reverts(
        d.distributor,
        d.distributor.functions.acceptDefaultAdminTransfer(),
        new_admin,
        "AccessControlEnforcedDefaultAdminDelay",
        schedule,
    )
    anvil.advance_time(86_401)
    d.send(d.distributor.functions.acceptDefaultAdminTransfer(), new_admin)
    assert d.distributor.functions.defaultAdmin().call() == new_admin

    tree = MerkleTree.build(payees(2, seed=24), [1, 2])
    d.fund(3)
    for guardian in (second_guardian, d.guardian):
        d.propose(int(d.distributor.functions.latestEpoch().call()) + 1, tree, total_units=3)
        d.send(d.distributor.functions.revokeRoot(tree.root), guardian)
        tree = MerkleTree.build(payees(2, seed=25), [1, 2])


def _fee_world(anvil: Anvil) -> tuple[Deployment, Any]:  # noqa: F811
    """A distributor paying FeeToken (1% kept on every transfer)."""
    w3 = anvil.w3
    admin, settler, guardian = w3.eth.accounts[:3]
    fee_build, build = load_artifact("FeeToken"), distributor_artifact()
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.contract(abi=fee_build.abi, bytecode=fee_build.bytecode).constructor().transact({"from": admin})
    )
    token = w3.eth.contract(address=receipt["contractAddress"], abi=fee_build.abi)
    factory = w3.eth.contract(abi=build.abi, bytecode=build.bytecode)
    args = (token.address, 0, 0, admin, settler, [guardian], admin, GROWTH_UNLIMITED, ZERO_ADDRESS)
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor(*args).transact({"from": admin}))
    distributor = w3.eth.contract(address=receipt["contractAddress"], abi=build.abi)
    return Deployment(w3, token, distributor, admin, settler, guardian, w3.eth.accounts[3]), token


def test_a_fee_on_transfer_token_is_refused_for_funding_and_claims(anvil: Anvil) -> None:  # noqa: F811
    """The attack: a 1% fee token made `claimed` exceed what arrived. Funding through it reverts with the
    amount said and the amount received; a claim paying with it reverts the same way, so nothing is
    recorded as claimed."""
    d, token = _fee_world(anvil)
    d.send(token.functions.mint(d.admin, 10_000), d.admin)
    d.send(token.functions.approve(d.distributor.address, 10_000), d.admin)
    assert_reverts(
        d.distributor,
        d.distributor.functions.fund(10_000),
        d.settler,
        "RoyaltyDistributorTransferMismatch",
        token.address,
        10_000,
        9_900,
    )
    accounts = payees(2, seed=26)
    tree = MerkleTree.build(accounts, [1_000, 2_000])
    d.send(token.functions.mint(d.distributor.address, 3_000), d.admin)  # minting has no fee
    d.propose(1, tree)
    assert_reverts(
        d.distributor,
        d.distributor.functions.claim(accounts[0], 1_000, tree.proof(accounts[0])),
        d.outsider,
        "RoyaltyDistributorTransferMismatch",
        token.address,
        1_000,
        990,
    )
    assert d.distributor.functions.claimed(accounts[0]).call() == 0


def test_fund_pulls_only_what_the_treasury_approved(chain_of) -> None:
    """Pins treasury funding: without an allowance fund reverts (OpenZeppelin's error); with one it moves the
    units treasury -> distributor and emits Funded; without a treasury it names the fix."""
    d = chain_of(0)
    treasury = d.w3.eth.accounts[4]
    d.send(d.distributor.functions.setTreasury(treasury), d.admin)
    d.send(d.token.functions.mint(treasury, 500), d.admin)
    assert_custom_error(  # the token's error, bubbled up
        d.token,
        lambda: d.distributor.functions.fund(500).call({"from": d.settler}),
        "ERC20InsufficientAllowance",
        d.distributor.address,
        0,
        500,
    )
    d.send(d.token.functions.approve(d.distributor.address, 500), treasury)
    receipt = d.send(d.distributor.functions.fund(500), d.settler)
    (event,) = d.distributor.events.Funded().process_receipt(receipt, errors=DISCARD)
    assert (event.args.treasury, event.args.amount) == (treasury, 500)
    assert (d.balance(d.distributor.address), d.balance(treasury)) == (500, 0)
    d.send(d.distributor.functions.setTreasury(ZERO_ADDRESS), d.admin)
    assert_reverts(d.distributor, d.distributor.functions.fund(1), d.settler, "RoyaltyDistributorNoTreasury")


def test_sweep_takes_only_the_surplus_above_what_the_roots_owe(anvil: Anvil, chain_of) -> None:  # noqa: F811
    """Pins the sweep: the admin may take the balance above latest total - claimed (a waiting root's total
    counts), never a unit more; another token sent by mistake is swept whole."""
    d = chain_of(TIMELOCK_SECONDS)
    accounts = payees(2, seed=27)
    d.fund(1_000)
    d.propose(1, MerkleTree.build(accounts, [300, 200]))
    anvil.advance_time(TIMELOCK_SECONDS)
    d.propose(2, MerkleTree.build(accounts, [400, 300]))  # waiting: owes 700
    assert d.distributor.functions.surplusUnits().call() == 300
    assert_reverts(
        d.distributor,
        d.distributor.functions.sweep(d.token.address, d.admin, 301),
        d.admin,
        "RoyaltyDistributorSweepExceedsSurplus",
        301,
        300,
    )
    receipt = d.send(d.distributor.functions.sweep(d.token.address, d.admin, 300), d.admin)
    (event,) = d.distributor.events.Swept().process_receipt(receipt, errors=DISCARD)
    assert (event.args.asset, event.args.to, event.args.amount) == (d.token.address, d.admin, 300)
    assert d.balance(d.distributor.address) == 700
    other = deploy(d.w3, 0).token
    d.send(other.functions.mint(d.distributor.address, 55), d.admin)
    d.send(d.distributor.functions.sweep(other.address, d.admin, 55), d.admin)
    assert other.functions.balanceOf(d.distributor.address).call() == 0


def test_claim_many_pays_each_account_or_none(chain_of) -> None:
    """Pins claimMany: one transaction pays every account its difference; a bad proof among them reverts all."""
    d = chain_of(0)
    accounts = payees(4, seed=28)
    tree = MerkleTree.build(accounts, [10, 20, 30, 40])
    d.fund(100)
    d.propose(1, tree)
    bad = [accounts[0], accounts[1]]
    assert_reverts(
        d.distributor,
        d.distributor.functions.claimMany(bad, [10, 21], [tree.proof(a) for a in bad]),
        d.outsider,
        "RoyaltyDistributorInvalidProof",
        accounts[1],
        21,
    )
    assert_reverts(
        d.distributor,
        d.distributor.functions.claimMany(bad, [10], [tree.proof(a) for a in bad]),
        d.outsider,
        "RoyaltyDistributorLengthMismatch",
        2,
        1,
        2,
    )
    amounts = [tree.amount_units(a) for a in accounts]
    receipt = d.send(
        d.distributor.functions.claimMany(accounts, amounts, [tree.proof(a) for a in accounts]), d.outsider
    )
    events = d.distributor.events.Claimed().process_receipt(receipt, errors=DISCARD)
    assert [(e.args.account, e.args.amount) for e in events] == list(zip(accounts, amounts, strict=True))
    assert [d.balance(a) for a in accounts] == amounts
    assert d.distributor.functions.totalClaimed().call() == 100


def test_a_successor_records_its_predecessor_and_starts_at_its_last_epoch(anvil: Anvil, chain_of) -> None:  # noqa: F811
    """Pins the migration's on-chain part: a distributor deployed with a predecessor refuses while the old one
    has a root in its timelock, and otherwise records it and its last epoch, from which its own epochs rise."""
    old = chain_of(TIMELOCK_SECONDS)
    tree = MerkleTree.build(payees(2, seed=29), [5, 6])
    old.fund(11)
    old.propose(7, tree)
    w3 = anvil.w3
    admin, settler, guardian = w3.eth.accounts[:3]
    build = distributor_artifact()
    factory = w3.eth.contract(abi=build.abi, bytecode=build.bytecode)
    args = [old.token.address, 0, 0, admin, settler, [guardian], admin, GROWTH_UNLIMITED, old.distributor.address]
    assert_custom_error(
        factory,
        lambda: factory.constructor(*args).estimate_gas({"from": admin}),
        "RoyaltyDistributorPredecessorRootPending",
        old.distributor.address,
        7,
    )
    anvil.advance_time(TIMELOCK_SECONDS)
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor(*args).transact({"from": admin}))
    new = w3.eth.contract(address=receipt["contractAddress"], abi=build.abi)
    assert (new.functions.predecessor().call(), new.functions.predecessorEpoch().call()) == (
        old.distributor.address,
        7,
    )
    assert new.functions.latestEpoch().call() == 7
    assert_reverts(
        new,
        new.functions.proposeRoot(7, tree.root, 11, NO_DIGEST),
        settler,
        "RoyaltyDistributorEpochNotIncreasing",
        7,
        7,
    )
