// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {AccessControlDefaultAdminRules} from
    "@openzeppelin/contracts/access/extensions/AccessControlDefaultAdminRules.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {MerkleProofLib} from "solady/src/utils/MerkleProofLib.sol";
import {SafeTransferLib} from "solady/src/utils/SafeTransferLib.sol";

/// @notice What a predecessor distributor must answer for a migration to start from it.
interface IRoyaltyDistributorPredecessor {
    function latestEpoch() external view returns (uint64);
    function pendingRoot() external view returns (uint64, bytes32, uint256, bytes32, uint64);
}

/**
 * @title RoyaltyDistributor
 * @notice Pays one ERC-20 token to royalty contributors against cumulative Merkle roots.
 *
 * Each epoch the settler proposes one root over `(address account, uint256 cumulativeAmount)` leaves,
 * hashed as OpenZeppelin's StandardMerkleTree does. A leaf holds everything the account has earned
 * (on this contract), and the contract keeps what each account has claimed, so one claim collects every
 * epoch so far and a claim against a later root pays exactly the difference.
 *
 * A proposed root waits `timelockSeconds` (at least `TIMELOCK_SECONDS_MIN` off local chains) before it
 * can be claimed against; until then any guardian can revoke it, and a revoked root can never be proposed
 * again. While a root waits, claims keep working against the last active root. A proposal must raise the
 * epoch by 1 to `EPOCH_STEP_MAX`, must not lower `totalCumulative`, and may add at most
 * `maxEpochGrowthUnits` (set by the admin) to it, so one stolen settler key can neither brick the contract
 * nor propose more than one bounded, revocable increment.
 *
 * Roles: the default admin (transferred in two delayed steps, OpenZeppelin's
 * `AccessControlDefaultAdminRules`) grants roles, sets the treasury and the growth cap and sweeps surplus;
 * the settler proposes and pulls funding from the treasury; guardians revoke. The settler holds no funds:
 * `fund` moves tokens only from the treasury (which approved this contract) into this contract.
 *
 * Tokens must deliver what a transfer says: funding and claims check the balance delta, so a
 * fee-on-transfer or rebasing token reverts with `RoyaltyDistributorTransferMismatch` instead of breaking
 * the accounting.
 *
 * Storage is laid out for the claim path, which reads three slots (the state, the active root's hash and the
 * account's claimed amount) and writes two: the state slot holds what the latest root still owes
 * (`headroomUnits` = its total − `totalClaimed`, the per-root cap on claims), its epoch, its activation time
 * and which of two root records is the latest. While the latest root waits, a claim against the previous one
 * also reads how much the latest root added (`latestGrowthUnits`, packed with the growth cap).
 */
contract RoyaltyDistributor is AccessControlDefaultAdminRules, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice The role allowed to propose roots and to pull funding from the treasury.
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");
    /// @notice The role allowed to revoke a root during its timelock (several accounts may hold it).
    bytes32 public constant GUARDIAN_ROLE = keccak256("GUARDIAN_ROLE");
    /// @notice The longest timelock: past a month, claims would be frozen for longer than any operator means.
    uint64 public constant TIMELOCK_SECONDS_MAX = 30 days;
    /// @notice The shortest timelock off local chains: time for a guardian to see a bad root and revoke it.
    uint64 public constant TIMELOCK_SECONDS_MIN = 1 hours;
    /// @notice The most a proposal may raise the epoch by (epochs settled late are skipped on-chain).
    uint64 public constant EPOCH_STEP_MAX = 10_000;
    /// @notice anvil's and hardhat's chain id: a local chain, where a short timelock is allowed.
    uint256 public constant LOCAL_CHAIN_ID = 31337;
    /// @notice eth-tester's chain id (the in-process chain): also local.
    uint256 public constant EMBEDDED_CHAIN_ID = 131277322940537;
    /// @dev The root hash of the record standing for "no root yet": no proof hashes to it (it is no keccak
    /// output anyone can find), and being non-zero, the second proposal overwrites it at the price of a
    /// changed slot rather than a slot written from zero.
    bytes32 private constant NO_ROOT = bytes32(uint256(1));
    /// @dev Where `State`'s fields after `headroomUnits` (bits 0-127) start in its storage word.
    uint256 private constant _ACTIVE_AT_SHIFT = 128;
    uint256 private constant _EPOCH_SHIFT = 168;
    uint256 private constant _EPOCH_STEP_SHIFT = 232;
    uint256 private constant _INDEX_SHIFT = 248;

    struct State {
        uint128 headroomUnits; // the latest root's totalCumulative − totalClaimed
        uint40 latestActiveAtSeconds; // 1 before the first proposal ("no root yet" counts as active)
        uint64 latestEpoch;
        uint16 latestEpochStep; // latest epoch − the previous record's (≤ EPOCH_STEP_MAX), read while it waits
        uint8 latestIndex; // which of the two root records holds the latest proposal
    }

    struct RootMeta {
        uint128 totalCumulative;
        uint64 epoch;
        uint64 activeAtSeconds; // record 1 before the first proposal: 0
    }

    struct Growth {
        uint128 maxEpochGrowthUnits;
        uint128 latestGrowthUnits; // the latest root's totalCumulative − the previous record's
    }

    /// @notice The token paid out.
    IERC20 public immutable token;
    /// @notice Seconds between a proposal and the moment its root can be claimed against.
    uint64 public immutable timelockSeconds;
    /// @notice The distributor this one took over from (zero if none): it keeps paying what its last root owes.
    address public immutable predecessor;
    /// @notice The predecessor's last epoch; leaves here count only what was earned after it.
    uint64 public immutable predecessorEpoch;

    /// @notice Units of `token` each account has claimed so far, over all epochs.
    mapping(address account => uint256) public claimed;
    /// @notice Roots a guardian revoked: never claimable, never proposable again.
    mapping(bytes32 root => bool) public revokedRoots;

    State private _state;
    bytes32[2] private _rootHashes;
    RootMeta[2] private _rootMeta;
    Growth private _growth;
    address private _treasury;

    /// @notice A root was proposed for `epoch`; it becomes claimable at `activeAtSeconds`.
    event RootProposed(
        uint64 indexed epoch,
        bytes32 indexed root,
        uint256 totalCumulative,
        bytes32 ledgerDigest,
        uint64 activeAtSeconds
    );
    /// @notice `guardian` revoked the root waiting for `epoch`.
    event RootRevoked(uint64 indexed epoch, bytes32 indexed root, address indexed guardian);
    /// @notice `account` received `amount` units, bringing its claimed total to `cumulativeAmount`.
    event Claimed(address indexed account, uint64 indexed epoch, uint256 amount, uint256 cumulativeAmount);
    /// @notice `amount` units came from `treasury` into this contract.
    event Funded(address indexed treasury, uint256 amount);
    /// @notice The admin moved `amount` of `asset` above what the roots owe to `to`.
    event Swept(address indexed asset, address indexed to, uint256 amount);
    /// @notice The admin set the treasury `fund` pulls from.
    event TreasurySet(address treasury);
    /// @notice The admin set the most one proposal may add to `totalCumulative`.
    event MaxEpochGrowthSet(uint128 maxEpochGrowthUnits);

    /// @notice The token address is zero.
    error RoyaltyDistributorInvalidToken(address token);
    /// @notice The timelock is longer than `TIMELOCK_SECONDS_MAX`.
    error RoyaltyDistributorTimelockTooLong(uint64 timelockSeconds, uint64 timelockSecondsMax);
    /// @notice The timelock is shorter than `TIMELOCK_SECONDS_MIN` on a chain that is not local.
    error RoyaltyDistributorTimelockTooShort(uint64 timelockSeconds, uint64 timelockSecondsMin);
    /// @notice The predecessor still has a root in its timelock: wait until it is active (or revoked).
    error RoyaltyDistributorPredecessorRootPending(address predecessor, uint64 epoch);
    /// @notice A proposed epoch is not greater than the latest one still standing (active or waiting).
    error RoyaltyDistributorEpochNotIncreasing(uint64 last, uint64 given);
    /// @notice A proposed epoch is more than `stepMax` past the latest one.
    error RoyaltyDistributorEpochStepTooLarge(uint64 last, uint64 given, uint64 stepMax);
    /// @notice A proposed root is zero.
    error RoyaltyDistributorZeroRoot();
    /// @notice A guardian revoked this root once; it cannot be proposed again.
    error RoyaltyDistributorRootWasRevoked(bytes32 root);
    /// @notice A root for `epoch` is still in its timelock until `activeAtSeconds`; wait or revoke it.
    error RoyaltyDistributorRootPending(uint64 epoch, uint64 activeAtSeconds);
    /// @notice A proposed total is below the latest root's: cumulative totals never decrease.
    error RoyaltyDistributorTotalDecreasing(uint256 latestTotal, uint256 totalCumulative);
    /// @notice A proposal would add more than the admin's `maxEpochGrowthUnits`.
    error RoyaltyDistributorGrowthTooLarge(uint256 growth, uint256 maxEpochGrowthUnits);
    /// @notice A total does not fit the 128 bits it is stored in.
    error RoyaltyDistributorTotalTooLarge(uint256 totalCumulative);
    /// @notice The balance does not cover what the proposed root would let accounts claim.
    error RoyaltyDistributorUnderfunded(uint256 required, uint256 balance);
    /// @notice `root` is not the root waiting in its timelock, so there is nothing to revoke.
    error RoyaltyDistributorNotPending(bytes32 root);
    /// @notice No root has become claimable yet.
    error RoyaltyDistributorNoActiveRoot();
    /// @notice The proof is for the root of `epoch`, claimable only from `activeAtSeconds`.
    error RoyaltyDistributorRootNotActive(uint64 epoch, uint64 activeAtSeconds);
    /// @notice The proof is for `root`, which a guardian revoked.
    error RoyaltyDistributorRootRevoked(bytes32 root);
    /// @notice `(account, cumulativeAmount)` with this proof is not a leaf of the active root.
    error RoyaltyDistributorInvalidProof(address account, uint256 cumulativeAmount);
    /// @notice The proven cumulative amount is below what `account` has already claimed.
    error RoyaltyDistributorCumulativeBelowClaimed(address account, uint256 cumulativeAmount, uint256 alreadyClaimed);
    /// @notice `account` has already claimed all of `cumulativeAmount`.
    error RoyaltyDistributorNothingToClaim(address account, uint256 cumulativeAmount);
    /// @notice Claims would exceed the total the active root declared (and was funded for).
    error RoyaltyDistributorRootTotalExceeded(uint256 totalCumulative, uint256 totalClaimedAfter);
    /// @notice A token transfer moved `received` units where it said `expected` (fee-on-transfer, rebasing).
    error RoyaltyDistributorTransferMismatch(address token, uint256 expected, uint256 received);
    /// @notice No treasury is set: the admin sets one with `setTreasury`.
    error RoyaltyDistributorNoTreasury();
    /// @notice A sweep of `amount` exceeds the `surplus` above what the roots owe.
    error RoyaltyDistributorSweepExceedsSurplus(uint256 amount, uint256 surplus);
    /// @notice `claimMany` got arrays of different lengths.
    error RoyaltyDistributorLengthMismatch(uint256 accounts, uint256 amounts, uint256 proofs);

    /**
     * @notice Deploys a distributor of `token_` whose roots wait `timelockSeconds_` before claims.
     * @param adminDelaySeconds the delay of a default-admin transfer (two steps: begin, then accept).
     * @param settler granted SETTLER_ROLE unless zero (grant it later then).
     * @param guardians each granted GUARDIAN_ROLE.
     * @param treasury_ where `fund` pulls tokens from (zero: set it later with `setTreasury`).
     * @param maxEpochGrowthUnits_ the most one proposal may add to `totalCumulative`.
     * @param predecessor_ a distributor this one takes over from (zero: none); its latest epoch, which must
     * be active, is where this one's epochs start.
     */
    constructor(
        IERC20 token_,
        uint64 timelockSeconds_,
        uint48 adminDelaySeconds,
        address admin,
        address settler,
        address[] memory guardians,
        address treasury_,
        uint128 maxEpochGrowthUnits_,
        address predecessor_
    ) AccessControlDefaultAdminRules(adminDelaySeconds, admin) {
        if (address(token_) == address(0)) revert RoyaltyDistributorInvalidToken(address(token_));
        if (timelockSeconds_ > TIMELOCK_SECONDS_MAX) {
            revert RoyaltyDistributorTimelockTooLong(timelockSeconds_, TIMELOCK_SECONDS_MAX);
        }
        if (timelockSeconds_ < TIMELOCK_SECONDS_MIN && block.chainid != LOCAL_CHAIN_ID && block.chainid != EMBEDDED_CHAIN_ID)
        {
            revert RoyaltyDistributorTimelockTooShort(timelockSeconds_, TIMELOCK_SECONDS_MIN);
        }
        token = token_;
        timelockSeconds = timelockSeconds_;
        uint64 startEpoch;
        if (predecessor_ != address(0)) {
            IRoyaltyDistributorPredecessor old = IRoyaltyDistributorPredecessor(predecessor_);
            (uint64 pendingEpoch,,,,) = old.pendingRoot();
            if (pendingEpoch != 0) revert RoyaltyDistributorPredecessorRootPending(predecessor_, pendingEpoch);
            startEpoch = old.latestEpoch();
        }
        predecessor = predecessor_;
        predecessorEpoch = startEpoch;
        // Record 0 stands for "no root yet": active since time 1, paying nothing, with a root no proof reaches.
        _rootHashes[0] = NO_ROOT;
        _rootMeta[0] = RootMeta(0, startEpoch, 1);
        _state = State(0, 1, startEpoch, 0, 0);
        if (settler != address(0)) _grantRole(SETTLER_ROLE, settler);
        for (uint256 i = 0; i < guardians.length; ++i) {
            _grantRole(GUARDIAN_ROLE, guardians[i]);
        }
        _treasury = treasury_;
        _growth.maxEpochGrowthUnits = maxEpochGrowthUnits_;
        emit TreasurySet(treasury_);
        emit MaxEpochGrowthSet(maxEpochGrowthUnits_);
    }

    // --- settler ---------------------------------------------------------------------------------

    /**
     * @notice Proposes `root` for `epoch`; it becomes claimable after the timelock.
     * @param epoch must exceed the latest epoch still standing by 1 to `EPOCH_STEP_MAX`.
     * @param totalCumulative the sum of every leaf's cumulative amount: at least the latest root's, at most
     * `maxEpochGrowthUnits` more, and the balance must cover it minus `totalClaimed`.
     * @param ledgerDigest the digest of the ledger snapshot the root was computed from (in the event only).
     */
    function proposeRoot(uint64 epoch, bytes32 root, uint256 totalCumulative, bytes32 ledgerDigest)
        external
        onlyRole(SETTLER_ROLE)
    {
        if (root == bytes32(0)) revert RoyaltyDistributorZeroRoot();
        State memory s = _state;
        if (s.latestActiveAtSeconds > block.timestamp) {
            revert RoyaltyDistributorRootPending(s.latestEpoch, s.latestActiveAtSeconds);
        }
        if (epoch <= s.latestEpoch) revert RoyaltyDistributorEpochNotIncreasing(s.latestEpoch, epoch);
        if (epoch - s.latestEpoch > EPOCH_STEP_MAX) {
            revert RoyaltyDistributorEpochStepTooLarge(s.latestEpoch, epoch, EPOCH_STEP_MAX);
        }
        if (revokedRoots[root]) revert RoyaltyDistributorRootWasRevoked(root);
        uint256 latestTotal = _rootMeta[s.latestIndex].totalCumulative;
        uint128 growthMax = _growth.maxEpochGrowthUnits;
        _checkTotal(latestTotal, totalCumulative, growthMax);
        // What the new root owes: its total minus what was claimed (claimed <= latest total <= this total).
        uint256 required = totalCumulative - (latestTotal - s.headroomUnits);
        uint256 balance = token.balanceOf(address(this));
        if (balance < required) revert RoyaltyDistributorUnderfunded(required, balance);

        uint40 activeAtSeconds = SafeCast.toUint40(block.timestamp + timelockSeconds);
        uint8 next = s.latestIndex ^ 1;
        _rootHashes[next] = root;
        _rootMeta[next] = RootMeta(uint128(totalCumulative), epoch, activeAtSeconds);
        _growth = Growth(growthMax, uint128(totalCumulative - latestTotal));
        _state = State(uint128(required), activeAtSeconds, epoch, uint16(epoch - s.latestEpoch), next);
        emit RootProposed(epoch, root, totalCumulative, ledgerDigest, activeAtSeconds);
    }

    /**
     * @notice Pulls `amount` units from the treasury (which approved this contract) into this contract.
     */
    function fund(uint256 amount) external onlyRole(SETTLER_ROLE) {
        address from = _treasury;
        if (from == address(0)) revert RoyaltyDistributorNoTreasury();
        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(from, address(this), amount);
        _requireDelivered(token.balanceOf(address(this)) - before, amount);
        emit Funded(from, amount);
    }

    // --- guardians -------------------------------------------------------------------------------

    /**
     * @notice Revokes `root`, which must be waiting in its timelock; the active root stays in force and
     * `root` can never be proposed again (its epoch can, with another root).
     */
    function revokeRoot(bytes32 root) external onlyRole(GUARDIAN_ROLE) {
        State memory s = _state;
        if (s.latestActiveAtSeconds <= block.timestamp || _rootHashes[s.latestIndex] != root) {
            revert RoyaltyDistributorNotPending(root);
        }
        uint8 previous = s.latestIndex ^ 1;
        RootMeta memory before = _rootMeta[previous];
        uint128 headroom = s.headroomUnits - _growth.latestGrowthUnits; // what the previous root still owes
        // The previous root was active when this one was proposed: it stays so (its step is never read).
        _state = State(headroom, uint40(before.activeAtSeconds), before.epoch, 0, previous);
        revokedRoots[root] = true;
        emit RootRevoked(s.latestEpoch, root, msg.sender);
    }

    // --- admin -----------------------------------------------------------------------------------

    /// @notice Sets the account `fund` pulls from; it must approve this contract.
    function setTreasury(address treasury_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _treasury = treasury_;
        emit TreasurySet(treasury_);
    }

    /// @notice Sets the most one proposal may add to `totalCumulative`.
    function setMaxEpochGrowthUnits(uint128 maxEpochGrowthUnits_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _growth.maxEpochGrowthUnits = maxEpochGrowthUnits_;
        emit MaxEpochGrowthSet(maxEpochGrowthUnits_);
    }

    /**
     * @notice Sends `amount` of `asset` to `to`: for the paid token, only what the balance holds above what
     * the latest root owes (`totalCumulative − totalClaimed`); any other token entirely.
     */
    function sweep(IERC20 asset, address to, uint256 amount) external onlyRole(DEFAULT_ADMIN_ROLE) nonReentrant {
        if (address(asset) == address(token)) {
            uint256 surplus = surplusUnits();
            if (amount > surplus) revert RoyaltyDistributorSweepExceedsSurplus(amount, surplus);
        }
        asset.safeTransfer(to, amount);
        emit Swept(address(asset), to, amount);
    }

    // --- claims ----------------------------------------------------------------------------------

    /**
     * @notice Pays `account` its `cumulativeAmount` minus what it has already claimed; anyone may submit
     * it, the tokens always go to `account`.
     * @param proof the sibling hashes from the leaf `(account, cumulativeAmount)` to the active root.
     * @return amount the units paid now.
     */
    function claim(address account, uint256 cumulativeAmount, bytes32[] calldata proof)
        external
        nonReentrant
        returns (uint256 amount)
    {
        uint256 word = _stateWord();
        (uint256 index, uint256 headroom, uint64 epoch) = _active(word);
        amount = _settleClaim(_rootHashes[index], account, cumulativeAmount, proof);
        if (amount > headroom) _revertTotalExceeded(index, amount);
        _setHeadroomLower(word, amount);
        emit Claimed(account, epoch, amount, cumulativeAmount);
        _payOut(account, amount);
    }

    /**
     * @notice `claim` for several accounts in one transaction (for relayers); all or nothing.
     * @return paid the units paid to each account.
     */
    function claimMany(address[] calldata accounts, uint256[] calldata cumulativeAmounts, bytes32[][] calldata proofs)
        external
        nonReentrant
        returns (uint256[] memory paid)
    {
        if (accounts.length != cumulativeAmounts.length || accounts.length != proofs.length) {
            revert RoyaltyDistributorLengthMismatch(accounts.length, cumulativeAmounts.length, proofs.length);
        }
        uint256 word = _stateWord();
        (uint256 index, uint256 headroom, uint64 epoch) = _active(word);
        uint256 paidTotal;
        (paid, paidTotal) = _settleClaims(index, epoch, accounts, cumulativeAmounts, proofs);
        if (paidTotal > headroom) _revertTotalExceeded(index, paidTotal);
        _setHeadroomLower(word, paidTotal);
        for (uint256 i = 0; i < accounts.length; ++i) {
            _payOut(accounts[i], paid[i]);
        }
    }

    // --- views -----------------------------------------------------------------------------------

    /// @notice The root claims are checked against now (zeros before the first one is claimable).
    function activeRoot()
        external
        view
        returns (uint64 epoch, bytes32 root, uint256 totalCumulative, bytes32 ledgerDigest, uint64 activeAtSeconds)
    {
        uint256 index = _activeIndex(_state);
        bytes32 active = _rootHashes[index];
        if (active == NO_ROOT || active == bytes32(0)) return (0, bytes32(0), 0, bytes32(0), 0);
        RootMeta memory m = _rootMeta[index];
        return (m.epoch, active, m.totalCumulative, bytes32(0), m.activeAtSeconds);
    }

    /// @notice The root waiting in its timelock (zeros when none is waiting). The ledger digest is in the
    /// `RootProposed` event only (returned as zero here).
    function pendingRoot()
        external
        view
        returns (uint64 epoch, bytes32 root, uint256 totalCumulative, bytes32 ledgerDigest, uint64 activeAtSeconds)
    {
        State memory s = _state;
        if (s.latestActiveAtSeconds > block.timestamp) {
            RootMeta memory m = _rootMeta[s.latestIndex];
            return (m.epoch, _rootHashes[s.latestIndex], m.totalCumulative, bytes32(0), m.activeAtSeconds);
        }
    }

    /// @notice The epoch of the latest root still standing, active or waiting; the next proposal must exceed it.
    function latestEpoch() external view returns (uint64) {
        return _state.latestEpoch;
    }

    /// @notice The latest root's total, active or waiting: what the roots owe, with `totalClaimed`.
    function latestTotalCumulative() public view returns (uint256) {
        return _rootMeta[_state.latestIndex].totalCumulative;
    }

    /// @notice Units of `token` claimed so far by all accounts together.
    function totalClaimed() external view returns (uint256) {
        return latestTotalCumulative() - _state.headroomUnits;
    }

    /// @notice The balance above what the latest root still owes (`totalCumulative − totalClaimed`).
    function surplusUnits() public view returns (uint256) {
        uint256 owed = _state.headroomUnits;
        uint256 balance = token.balanceOf(address(this));
        return balance > owed ? balance - owed : 0;
    }

    /// @notice The account `fund` pulls from.
    function treasury() external view returns (address) {
        return _treasury;
    }

    /// @notice The most one proposal may add to `totalCumulative`.
    function maxEpochGrowthUnits() external view returns (uint256) {
        return _growth.maxEpochGrowthUnits;
    }

    // --- internals -------------------------------------------------------------------------------

    /// @dev The latest record while its timelock has passed, else the one before it.
    function _activeIndex(State memory s) private view returns (uint256) {
        return s.latestActiveAtSeconds <= block.timestamp ? s.latestIndex : s.latestIndex ^ 1;
    }

    /// @dev `_state` as its raw storage word, for the claim path (the fields are read with the shifts below).
    function _stateWord() private view returns (uint256 word) {
        assembly ("memory-safe") {
            word := sload(_state.slot)
        }
    }

    /// @dev Stores `word` with its headroom (the low 128 bits, `State`'s first field) lowered by `amount`, which
    /// the caller checked is at most the active root's headroom, itself at most the latest's: no borrow.
    function _setHeadroomLower(uint256 word, uint256 amount) private {
        assembly ("memory-safe") {
            sstore(_state.slot, sub(word, amount))
        }
    }

    /// @dev From `_state`'s word: the root claims are checked against now, what it still owes, and its epoch.
    /// The latest while its timelock has passed, else the previous one, which owes the latest's headroom minus
    /// what the latest added. Solidity packs `State`'s fields from the lowest bits up, in declaration order.
    function _active(uint256 word) private view returns (uint256 index, uint256 headroom, uint64 epoch) {
        index = word >> _INDEX_SHIFT;
        headroom = uint128(word);
        epoch = uint64(word >> _EPOCH_SHIFT);
        if (uint40(word >> _ACTIVE_AT_SHIFT) > block.timestamp) {
            index ^= 1;
            headroom -= _growth.latestGrowthUnits;
            epoch -= uint16(word >> _EPOCH_STEP_SHIFT);
        }
    }

    /// @dev Only on the failure path: reverts naming the active root's total and what claims would reach.
    function _revertTotalExceeded(uint256 index, uint256 amount) private view {
        State memory s = _state;
        uint256 claimedBefore = _rootMeta[s.latestIndex].totalCumulative - s.headroomUnits;
        revert RoyaltyDistributorRootTotalExceeded(_rootMeta[index].totalCumulative, claimedBefore + amount);
    }

    function _checkTotal(uint256 latestTotal, uint256 totalCumulative, uint256 growthMax) private pure {
        if (totalCumulative < latestTotal) revert RoyaltyDistributorTotalDecreasing(latestTotal, totalCumulative);
        if (totalCumulative > type(uint128).max) revert RoyaltyDistributorTotalTooLarge(totalCumulative);
        if (totalCumulative - latestTotal > growthMax) {
            revert RoyaltyDistributorGrowthTooLarge(totalCumulative - latestTotal, growthMax);
        }
    }

    /// @dev Checks the leaf against `root` and records the claim; returns the units to pay.
    function _settleClaim(
        bytes32 root,
        address account,
        uint256 cumulativeAmount,
        bytes32[] calldata proof
    ) private returns (uint256 amount) {
        bytes32 leaf;
        assembly ("memory-safe") {
            // keccak256(bytes.concat(keccak256(abi.encode(account, cumulativeAmount)))) in scratch space
            mstore(0x00, account)
            mstore(0x20, cumulativeAmount)
            mstore(0x00, keccak256(0x00, 0x40))
            leaf := keccak256(0x00, 0x20)
        }
        if (!MerkleProofLib.verifyCalldata(proof, root, leaf)) {
            _revertForUnprovenRoot(MerkleProof.processProofCalldata(proof, leaf), account, cumulativeAmount);
        }
        uint256 alreadyClaimed = claimed[account];
        if (cumulativeAmount <= alreadyClaimed) {
            if (cumulativeAmount == alreadyClaimed) revert RoyaltyDistributorNothingToClaim(account, cumulativeAmount);
            revert RoyaltyDistributorCumulativeBelowClaimed(account, cumulativeAmount, alreadyClaimed);
        }
        unchecked {
            amount = cumulativeAmount - alreadyClaimed; // > 0: checked just above
        }
        claimed[account] = cumulativeAmount;
    }

    /// @dev `_settleClaim` for each account against the root at `index`; returns what each is paid and the sum.
    function _settleClaims(
        uint256 index,
        uint64 epoch,
        address[] calldata accounts,
        uint256[] calldata cumulativeAmounts,
        bytes32[][] calldata proofs
    ) private returns (uint256[] memory paid, uint256 paidTotal) {
        bytes32 root = _rootHashes[index];
        paid = new uint256[](accounts.length);
        for (uint256 i = 0; i < accounts.length; ++i) {
            paid[i] = _settleClaim(root, accounts[i], cumulativeAmounts[i], proofs[i]);
            paidTotal += paid[i];
            emit Claimed(accounts[i], epoch, paid[i], cumulativeAmounts[i]);
        }
    }

    /// @dev Transfers and checks that `account` received exactly `amount`.
    function _payOut(address account, uint256 amount) private {
        // OpenZeppelin's transfer bubbles the token's revert reason up; Solady's balance reads skip the
        // extcodesize check a high-level call makes.
        address paid = address(token);
        uint256 before = SafeTransferLib.balanceOf(paid, account);
        token.safeTransfer(account, amount);
        _requireDelivered(SafeTransferLib.balanceOf(paid, account) - before, amount);
    }

    function _requireDelivered(uint256 received, uint256 expected) private view {
        if (received != expected) revert RoyaltyDistributorTransferMismatch(address(token), expected, received);
    }

    /// @dev Only on the failure path: names the root the proof was for, so a claimant knows whether to wait,
    /// to stop, or to fetch a fresh proof.
    function _revertForUnprovenRoot(bytes32 proven, address account, uint256 cumulativeAmount) private view {
        State memory s = _state;
        if (s.latestActiveAtSeconds > block.timestamp && proven == _rootHashes[s.latestIndex]) {
            revert RoyaltyDistributorRootNotActive(s.latestEpoch, s.latestActiveAtSeconds);
        }
        if (revokedRoots[proven]) revert RoyaltyDistributorRootRevoked(proven);
        bytes32 active = _rootHashes[_activeIndex(s)];
        if (active == NO_ROOT || active == bytes32(0)) revert RoyaltyDistributorNoActiveRoot();
        revert RoyaltyDistributorInvalidProof(account, cumulativeAmount);
    }
}
