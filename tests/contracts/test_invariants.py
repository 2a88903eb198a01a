"""RoyaltyDistributor's invariants as property tests: hypothesis drives a real anvil.

A stateful machine funds the distributor, proposes roots (from the settler and from other accounts), revokes
them (from the guardian and from others), moves the chain's clock across the timelock, and submits claims
for several accounts against every root it has seen, with valid proofs, inflated amounts, other accounts'
proofs and truncated proofs. A small Python model of the contract predicts every outcome: the exact amount
paid, or the exact custom error with its arguments. After every step the chain is read back and checked:

- total paid (`totalClaimed`, and the sum of the payees' balances) never exceeds total funded, and the
  distributor holds exactly funded − paid;
- each account's claimed total never exceeds its cumulative amount in the active root;
- claims under the active root never exceed the total it declared;
- `latestEpoch()` and `activeRoot()` agree with the model;
- only the settler proposes and only the guardian revokes (others revert with
  `AccessControlUnauthorizedAccount(sender, role)`).

Every example starts from one `evm_snapshot` taken after deployment and is rolled back with `evm_revert`.
The clock moves in steps of 4,000 s against a 10,000 s timelock, so whether a root is active never hinges
on the second a block happens to be mined in (the nearest boundary is 2,000 s away).

A second test pays with `MaliciousToken`, whose transfer hook re-enters `claim`: the re-entrant call reverts
with `ReentrancyGuardReentrantCall` and nothing beyond each leaf's amount is ever paid.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_utils import to_checksum_address
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD

from settlement.onchain.chain import decode_revert
from settlement.onchain.contract_artifacts import distributor_artifact, load_artifact
from settlement.onchain.merkle import MerkleTree, leaf_hash, process_proof
from tests.support.anvil import (  # noqa: F401 - anvil is a fixture
    GROWTH_UNLIMITED,
    NO_DIGEST,
    ZERO_ADDRESS,
    Anvil,
    Deployment,
    anvil,
    deploy,
)

TIMELOCK_SECONDS = 10_000
CLOCK_STEPS_S = [4_000, 12_000]  # sums are multiples of 4,000: never within 2,000 s of the timelock
SETTLER_ROLE = Web3.keccak(text="SETTLER_ROLE")
GUARDIAN_ROLE = Web3.keccak(text="GUARDIAN_ROLE")
DEFAULT_ADMIN_ROLE = b"\x00" * 32
# The admin's growth cap at deployment: below the largest proposal the machine draws (4 x 1,000,000), so
# GrowthTooLarge is reached now and then without blocking most proposals; the `set_growth_cap` rule moves it.
GROWTH_CAP_UNITS = 3_500_000
PAYEES = [to_checksum_address(f"0x{i:02x}" + "ab" * 19) for i in (0x11, 0x22, 0x33, 0x44)]
GAS = 600_000  # sent with a fixed gas limit, so a reverting call is mined (and changes nothing)
# CI's depth: 20 examples of up to 30 steps (CI's "ci" profile derandomizes it; most examples start with an
# active root, so the claim, revoke and proposal paths are all reached, which the test checks); the nightly run
# takes NIGHTLY_EXAMPLES.
MAX_EXAMPLES = 20
NIGHTLY_EXAMPLES = 300
STEPS_PER_EXAMPLE = 30


outcomes: Counter[str] = Counter()  # every (function, outcome) the machine saw, across examples


def revert_of(attempt: Callable[[], object]) -> tuple[str, tuple] | None:
    """The custom error (name, decoded args) `attempt()` reverts with, or None if it does not revert."""
    try:
        attempt()
    except ContractCustomError as error:
        name, args = decode_revert(error.data)
        return name, tuple(to_checksum_address(a) if isinstance(a, str) and Web3.is_address(a) else a for a in args)
    return None


@dataclass
class Proposal:
    epoch: int
    tree: MerkleTree
    total: int
    proposed_at: int  # model clock (seconds advanced since the example began)
    active_at: int  # the chain's activeAtSeconds, from the RootProposed event

    def amount(self, account: str) -> int:
        return self.tree.amount_units(account) if account in PAYEES else 0


@dataclass
class Model:
    """The distributor as the contract's source describes it, with time counted in the model's clock."""

    now: int = 0
    funded: int = 0
    swept: int = 0
    total_claimed: int = 0
    growth_cap: int = GROWTH_CAP_UNITS
    claimed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PAYEES, 0))
    active: Proposal | None = None  # the raw slots, as stored; effective() applies the clock
    pending: Proposal | None = None
    revoked: set[bytes] = field(default_factory=set)
    seen: list[Proposal] = field(default_factory=list)

    def effective(self) -> tuple[Proposal | None, Proposal | None]:
        """(active, waiting) as claims see them: a waiting root past its timelock is the active one."""
        if self.pending is not None and self.now - self.pending.proposed_at >= TIMELOCK_SECONDS:
            return self.pending, None
        return self.active, self.pending

    def latest_epoch(self) -> int:
        slot = self.pending or self.active
        return slot.epoch if slot else 0

    def latest_total(self) -> int:
        slot = self.pending or self.active
        return slot.total if slot else 0

    def held(self) -> int:
        return self.funded - self.total_claimed - self.swept


class DistributorMachine(RuleBasedStateMachine):
    """Random sequences of funding, proposals, revocations, clock moves and claims, checked against `Model`."""

    def __init__(self, node: Anvil, d: Deployment) -> None:
        super().__init__()
        self.node, self.d = node, d
        self.snapshot = node.rpc("evm_snapshot", [])
        self.model = Model()
        self.latest_total_seen = 0

    def teardown(self) -> None:
        assert self.node.rpc("evm_revert", [self.snapshot]) is True

    # --- helpers ---------------------------------------------------------------------------------------

    def _send(self, call: Any, sender: str) -> Any:
        return self.node.w3.eth.wait_for_transaction_receipt(call.transact({"from": sender, "gas": GAS}))

    def _expect(self, call: Any, sender: str, error: tuple[str, tuple] | None) -> Any:
        """Check the predicted outcome of `call` from `sender` (an exact custom error, or success), then send it."""
        assert revert_of(lambda: call.call({"from": sender})) == error
        outcomes[f"{call.fn_name}: {error[0] if error else 'ok'}"] += 1
        receipt = self._send(call, sender)
        assert receipt["status"] == (0 if error else 1)
        return receipt

    # --- rules -----------------------------------------------------------------------------------------

    @initialize(
        units=st.sampled_from([0, 4_000_000, 12_000_000]),
        first_root=st.sampled_from([True, True, False]),
        increments=st.lists(st.integers(0, 800_000), min_size=len(PAYEES), max_size=len(PAYEES)),
    )
    def fund_first(self, units: int, first_root: bool, increments: list[int]) -> None:
        """Most examples start funded (0: from nothing) and with a first root proposed by the settler and past
        its timelock, so claims, revocations and later proposals meet an active root from the first step (CI's
        derandomized run otherwise reached one paying claim in 60 examples)."""
        if units:
            self.fund(units)
        if first_root:
            self.propose(0, 1, increments, 0)
            self.advance_time(CLOCK_STEPS_S[-1])

    @rule(units=st.integers(1, 5_000_000))
    def fund(self, units: int) -> None:
        """Anyone funds by a plain transfer; here the token's owner mints to the distributor."""
        self._send(self.d.token.functions.mint(self.d.distributor.address, units), self.d.admin)
        self.model.funded += units

    @rule(units=st.integers(1, 5_000_000), sender_index=st.sampled_from([0, 0, 0, 1]))
    def fund_from_treasury(self, units: int, sender_index: int) -> None:
        """The settler pulls units from the treasury (the admin here, which approved them); no one else may."""
        d = self.d
        sender = [d.settler, d.settler, d.settler, d.outsider][sender_index]
        self._send(d.token.functions.mint(d.admin, units), d.admin)
        self._send(d.token.functions.approve(d.distributor.address, units), d.admin)
        error = None if sender == d.settler else ("AccessControlUnauthorizedAccount", (sender, SETTLER_ROLE))
        self._expect(d.distributor.functions.fund(units), sender, error)
        if error is None:
            self.model.funded += units

    @rule(cap=st.sampled_from([2_000_000, GROWTH_CAP_UNITS, 10**12]), sender_index=st.sampled_from([0, 0, 1, 2]))
    def set_growth_cap(self, cap: int, sender_index: int) -> None:
        """The admin (or another account) sets the most one proposal may add."""
        d = self.d
        sender = [d.admin, d.admin, d.settler, d.guardian][sender_index]
        error = None if sender == d.admin else ("AccessControlUnauthorizedAccount", (sender, DEFAULT_ADMIN_ROLE))
        self._expect(d.distributor.functions.setMaxEpochGrowthUnits(cap), sender, error)
        if error is None:
            self.model.growth_cap = cap

    @rule(pick=st.integers(0, 10**6), sender_index=st.sampled_from([0, 0, 0, 1, 2]), over=st.booleans())
    def sweep(self, pick: int, sender_index: int, over: bool) -> None:
        """The admin (or another account) sweeps part of the surplus above what the latest root owes, or more."""
        m, d = self.model, self.d
        sender = [d.admin, d.admin, d.admin, d.settler, d.guardian][sender_index]
        surplus = max(0, m.held() - (m.latest_total() - m.total_claimed))
        amount = surplus + 1 + pick % 1_000 if over else pick % (surplus + 1)
        if sender != d.admin:
            error = ("AccessControlUnauthorizedAccount", (sender, DEFAULT_ADMIN_ROLE))
        elif amount > surplus:
            error = ("RoyaltyDistributorSweepExceedsSurplus", (amount, surplus))
        else:
            error = None
        self._expect(d.distributor.functions.sweep(d.token.address, d.guardian, amount), sender, error)
        if error is None:
            m.swept += amount

    @rule(
        sender_index=st.sampled_from([0, 0, 0, 0, 0, 1, 2, 3]),
        epoch_step=st.sampled_from([1, 1, 1, 1, 1, 2, 0, -1]),
        increments=st.lists(st.integers(0, 1_000_000), min_size=len(PAYEES), max_size=len(PAYEES)),
        total_delta=st.sampled_from([0, 0, 0, 0, 0, 0, 3, -1_000_000]),
    )
    def propose(self, sender_index: int, epoch_step: int, increments: list[int], total_delta: int) -> None:
        """The settler (or another account) proposes a root whose amounts never decrease from the active one's."""
        m, d = self.model, self.d
        sender = [d.settler, d.admin, d.guardian, d.outsider][sender_index]
        active, waiting = m.effective()
        base = active.epoch if active else 0
        epoch = max(0, base + epoch_step)
        amounts = [(active.amount(a) if active else 0) + inc for a, inc in zip(PAYEES, increments, strict=True)]
        tree = MerkleTree.build(PAYEES, amounts)
        total = max(0, sum(amounts) + total_delta)  # a negative delta declares less than the leaves (a bad tree)
        balance = m.held()
        latest_total = active.total if active else 0
        if sender != d.settler:
            error = ("AccessControlUnauthorizedAccount", (sender, SETTLER_ROLE))
        elif waiting is not None:
            error = ("RoyaltyDistributorRootPending", (waiting.epoch, waiting.active_at))
        elif epoch <= base:
            error = ("RoyaltyDistributorEpochNotIncreasing", (base, epoch))
        elif tree.root in m.revoked:
            error = ("RoyaltyDistributorRootWasRevoked", (tree.root,))
        elif total < latest_total:
            error = ("RoyaltyDistributorTotalDecreasing", (latest_total, total))
        elif total - latest_total > m.growth_cap:
            error = ("RoyaltyDistributorGrowthTooLarge", (total - latest_total, m.growth_cap))
        elif balance < total - m.total_claimed:
            error = ("RoyaltyDistributorUnderfunded", (total - m.total_claimed, balance))
        else:
            error = None
        receipt = self._expect(d.distributor.functions.proposeRoot(epoch, tree.root, total, NO_DIGEST), sender, error)
        if error is None:
            (event,) = d.distributor.events.RootProposed().process_receipt(receipt, errors=DISCARD)
            proposal = Proposal(epoch, tree, total, m.now, event.args.activeAtSeconds)
            m.active, m.pending = active, proposal
            m.seen.append(proposal)

    @precondition(lambda self: self.model.seen)
    @rule(sender_index=st.sampled_from([0, 0, 0, 1, 2, 3]), pick=st.integers(0, 10**6))
    def revoke(self, sender_index: int, pick: int) -> None:
        """The guardian (or another account) revokes the waiting root, or some other root it has seen."""
        m, d = self.model, self.d
        sender = [d.guardian, d.admin, d.settler, d.outsider][sender_index]
        _, waiting = m.effective()
        others = [p.tree.root for p in m.seen] + [b"\x07" * 32]
        root = waiting.tree.root if waiting and pick % 2 == 0 else others[pick % len(others)]
        if sender != d.guardian:
            error = ("AccessControlUnauthorizedAccount", (sender, GUARDIAN_ROLE))
        elif waiting is None or root != waiting.tree.root:
            error = ("RoyaltyDistributorNotPending", (root,))
        else:
            error = None
        self._expect(d.distributor.functions.revokeRoot(root), sender, error)
        if error is None:
            m.pending = None
            m.revoked.add(root)

    @rule(seconds=st.sampled_from(CLOCK_STEPS_S))
    def advance_time(self, seconds: int) -> None:
        """The chain's clock moves past (or not yet past) a waiting root's timelock."""
        self.node.advance_time(seconds)
        self.model.now += seconds

    @precondition(lambda self: self.model.effective()[0] is not None)
    @rule(account_index=st.integers(0, len(PAYEES) - 1))
    def claim_honestly(self, account_index: int) -> None:
        """A payee claims with its leaf of the active root (what `royalty claim` submits)."""
        self.claim(account_index, 0, "valid", 0)

    @precondition(lambda self: self.model.seen)
    @rule(
        account_index=st.integers(0, len(PAYEES) - 1),
        pick=st.integers(0, 10**6),
        mode=st.sampled_from(["valid", "valid", "valid", "inflated", "other_proof", "truncated", "deflated"]),
        submitter_index=st.integers(0, 3),
    )
    def claim(self, account_index: int, pick: int, mode: str, submitter_index: int) -> None:
        """Anyone submits a claim for an account against one of the roots seen, honest or tampered with."""
        m, d = self.model, self.d
        account = PAYEES[account_index]
        active, waiting = m.effective()
        candidates = [p for p in (active, active, waiting) if p] + m.seen
        tree = candidates[pick % len(candidates)].tree
        amount, proof = tree.amount_units(account), tree.proof(account)
        if mode == "inflated":
            amount += 1 + pick % 1_000
        elif mode == "deflated":
            amount = max(0, amount - 1 - pick % 1_000)
        elif mode == "other_proof":
            proof = tree.proof(PAYEES[(account_index + 1) % len(PAYEES)])
        elif mode == "truncated":
            proof = proof[:-1]
        proven = process_proof(leaf_hash(account, amount), proof)  # what the contract computes
        already = m.claimed[account]
        error: tuple[str, tuple] | None = None
        if active is None or proven != active.tree.root:
            if waiting is not None and proven == waiting.tree.root:
                error = ("RoyaltyDistributorRootNotActive", (waiting.epoch, waiting.active_at))
            elif proven in m.revoked:
                error = ("RoyaltyDistributorRootRevoked", (proven,))
            elif active is None:
                error = ("RoyaltyDistributorNoActiveRoot", ())
            else:
                error = ("RoyaltyDistributorInvalidProof", (account, amount))
        elif amount < already:
            error = ("RoyaltyDistributorCumulativeBelowClaimed", (account, amount, already))
        elif amount == already:
            error = ("RoyaltyDistributorNothingToClaim", (account, amount))
        elif m.total_claimed + amount - already > active.total:
            error = ("RoyaltyDistributorRootTotalExceeded", (active.total, m.total_claimed + amount - already))
        submitter = [d.outsider, d.admin, d.settler, d.guardian][submitter_index]
        before = d.balance(account)
        receipt = self._expect(d.distributor.functions.claim(account, amount, proof), submitter, error)
        if error is None:
            (event,) = d.distributor.events.Claimed().process_receipt(receipt, errors=DISCARD)
            assert event.args.amount == amount - already == d.balance(account) - before
            assert (event.args.epoch, event.args.cumulativeAmount) == (active.epoch, amount)
            m.claimed[account] = amount
            m.total_claimed += amount - already

    # --- invariants, checked after every step ----------------------------------------------------------

    @invariant()
    def paid_never_exceeds_funded_and_claims_stay_within_the_active_root(self) -> None:
        m, d = self.model, self.d
        functions = d.distributor.functions
        with self.node.w3.batch_requests() as batch:
            batch.add(functions.totalClaimed())
            batch.add(d.token.functions.balanceOf(d.distributor.address))
            batch.add(functions.latestEpoch())
            batch.add(functions.activeRoot())
            batch.add(functions.latestTotalCumulative())
            for account in PAYEES:
                batch.add(functions.claimed(account))
            for account in PAYEES:
                batch.add(d.token.functions.balanceOf(account))
            total_claimed, held, latest_epoch, active_root, latest_total, *per_account = batch.execute()
        claimed, balances = per_account[: len(PAYEES)], per_account[len(PAYEES) :]
        active, _ = m.effective()
        assert total_claimed == m.total_claimed == sum(balances) == sum(claimed)
        assert total_claimed + m.swept <= m.funded and held == m.held()
        # The active (claimable) cumulative total never decreases; a waiting one is never below it.
        active_total = active_root[2]
        assert active_total == (active.total if active else 0) >= self.latest_total_seen
        assert latest_total == m.latest_total() >= active_total
        self.latest_total_seen = active_total
        for account, claimed_units in zip(PAYEES, claimed, strict=True):
            assert claimed_units == m.claimed[account] <= (active.amount(account) if active else 0)
        assert total_claimed <= (active.total if active else 0)
        assert latest_epoch == m.latest_epoch()
        assert bytes(active_root[1]) == (active.tree.root if active else b"\x00" * 32)


@pytest.fixture(scope="module")
def invariant_world(anvil: Anvil) -> Deployment:  # noqa: F811
    """One token and distributor (timelock 10,000 s) for every example; each example reverts to this state."""
    return deploy(anvil.w3, TIMELOCK_SECONDS, max_epoch_growth_units=GROWTH_CAP_UNITS)


def _run_machine(node: Anvil, world: Deployment, examples: int) -> None:
    outcomes.clear()
    run_state_machine_as_test(
        lambda: DistributorMachine(node, world),
        settings=settings(max_examples=examples, stateful_step_count=STEPS_PER_EXAMPLE),
    )


@pytest.mark.nightly
def test_distributor_invariants_hold_for_many_more_sequences(
    anvil: Anvil,  # noqa: F811
    invariant_world: Deployment,
) -> None:
    """The state machine below at the nightly depth."""
    _run_machine(anvil, invariant_world, NIGHTLY_EXAMPLES)


def test_distributor_invariants_hold_for_any_sequence_of_actions(
    anvil: Anvil,  # noqa: F811
    invariant_world: Deployment,
) -> None:
    """Proves, for random sequences of fund (plain and from the treasury) / propose / revoke / advance time /
    claim (valid and invalid, several accounts and epochs, any sender) / growth cap / sweep: every outcome is
    the model's, paid + swept ≤ funded, claimed ≤ the active cumulative amount, cumulative totals never
    decrease, only the settler proposes and funds, only the guardian revokes, only the admin sets the cap
    and sweeps (and never below what the roots owe)."""
    _run_machine(anvil, invariant_world, MAX_EXAMPLES)
    # The run really went through the paths the invariants are about (about 40 paying claims per run here).
    exercised = ["claim: ok", "proposeRoot: ok", "revokeRoot: ok", "claim: RoyaltyDistributorInvalidProof"]
    exercised += ["proposeRoot: AccessControlUnauthorizedAccount", "revokeRoot: AccessControlUnauthorizedAccount"]
    assert all(outcomes[name] for name in exercised), sorted(outcomes.items())


# --- reentrancy ------------------------------------------------------------------------------------------


def _malicious_distributor(node: Anvil) -> tuple[Contract, Contract, str]:
    """A MaliciousToken and a distributor (timelock 0) paying it; returns (token, distributor, submitter)."""
    w3 = node.w3
    admin, settler, guardian, outsider = w3.eth.accounts[:4]
    token_build, distributor_build = load_artifact("MaliciousToken"), distributor_artifact()
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.contract(abi=token_build.abi, bytecode=token_build.bytecode).constructor().transact({"from": admin})
    )
    token = w3.eth.contract(address=receipt["contractAddress"], abi=token_build.abi)
    factory = w3.eth.contract(abi=distributor_build.abi, bytecode=distributor_build.bytecode)
    receipt = w3.eth.wait_for_transaction_receipt(
        factory.constructor(
            token.address, 0, 0, admin, settler, [guardian], admin, GROWTH_UNLIMITED, ZERO_ADDRESS
        ).transact({"from": admin})
    )
    distributor = w3.eth.contract(address=receipt["contractAddress"], abi=distributor_build.abi)
    tree = MerkleTree.build(PAYEES, [1_000, 2_000, 3_000, 4_000])
    w3.eth.wait_for_transaction_receipt(
        token.functions.mint(distributor.address, tree.total_amount_units).transact({"from": admin})
    )
    w3.eth.wait_for_transaction_receipt(
        distributor.functions.proposeRoot(1, tree.root, tree.total_amount_units, NO_DIGEST).transact({"from": settler})
    )
    return token, distributor, outsider


@pytest.mark.parametrize("reenter_as", ["same account", "another account"])
def test_a_token_reentering_claim_from_its_transfer_hook_is_refused_and_pays_nothing_extra(
    anvil: Anvil,  # noqa: F811
    reenter_as: str,
) -> None:
    """A payout token whose transfer re-enters claim() (for the same leaf, or another account's valid leaf):
    the inner call reverts with ReentrancyGuardReentrantCall (the outer claim pays exactly its leaf); when the
    token lets that revert bubble, the whole claim reverts and nothing is paid; disarmed, claims pay exactly."""
    token, distributor, submitter = _malicious_distributor(anvil)
    w3 = anvil.w3
    tree = MerkleTree.build(PAYEES, [1_000, 2_000, 3_000, 4_000])
    victim, other = PAYEES[0], PAYEES[1]
    target = victim if reenter_as == "same account" else other
    reentrant = ("ReentrancyGuardReentrantCall", ())

    def arm(swallow: bool, target_contract: str = distributor.address) -> None:
        call = token.functions.arm(target_contract, target, tree.amount_units(target), tree.proof(target), swallow)
        w3.eth.wait_for_transaction_receipt(call.transact({"from": submitter}))

    def claim(account: str) -> Any:
        call = distributor.functions.claim(account, tree.amount_units(account), tree.proof(account))
        return w3.eth.wait_for_transaction_receipt(call.transact({"from": submitter, "gas": GAS}))

    arm(swallow=True)
    assert claim(victim)["status"] == 1
    assert token.functions.reentryReverted().call() and not token.functions.reentrySucceeded().call()
    assert decode_revert(token.functions.reentryRevertData().call()) == reentrant
    assert token.functions.balanceOf(victim).call() == tree.amount_units(victim)
    assert token.functions.balanceOf(other).call() == 0
    assert distributor.functions.totalClaimed().call() == tree.amount_units(victim)

    arm(swallow=False)
    third = PAYEES[2]
    call = distributor.functions.claim(third, tree.amount_units(third), tree.proof(third))
    assert revert_of(lambda: call.call({"from": submitter})) == reentrant
    assert claim(third)["status"] == 0
    assert token.functions.balanceOf(third).call() == 0 and distributor.functions.claimed(third).call() == 0

    arm(swallow=False, target_contract="0x" + "00" * 20)  # disarmed: no transfer comes from address zero
    paid_before = distributor.functions.totalClaimed().call()
    for account in PAYEES[1:]:
        assert claim(account)["status"] == 1
        assert token.functions.balanceOf(account).call() == tree.amount_units(account)
    assert distributor.functions.totalClaimed().call() - paid_before == sum(tree.amount_units(a) for a in PAYEES[1:])
    assert token.functions.balanceOf(distributor.address).call() == 0
    assert claim(victim)["status"] == 0  # nothing left to claim: paid exactly once
