// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/**
 * @title RoyaltyDistributor
 * @notice Pays one ERC-20 token to royalty contributors against cumulative Merkle roots.
 *
 * Each epoch the settler proposes one root over `(address account, uint256 cumulativeAmount)` leaves,
 * hashed as OpenZeppelin's StandardMerkleTree does. A leaf holds everything the account has earned
 * since the first epoch, and the contract keeps what each account has claimed, so one claim collects
 * every epoch so far and a claim against a later root pays exactly the difference.
 *
 * A proposed root waits `timelockSeconds` before it can be claimed against; until then a guardian can
 * revoke it, so a stolen settler key cannot drain the contract. While a root waits, claims keep working
 * against the last active root. Only one root waits at a time: proposing while one is still in its
 * timelock reverts, and once its timelock has passed the waiting root becomes the active one.
 *
 * Funding is a plain ERC-20 transfer to this contract before proposing: a proposal reverts unless the
 * balance covers `totalCumulative` minus everything claimed so far.
 */
contract RoyaltyDistributor is AccessControl, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice The role allowed to propose roots.
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");
    /// @notice The role allowed to revoke a root during its timelock.
    bytes32 public constant GUARDIAN_ROLE = keccak256("GUARDIAN_ROLE");
    /// @notice The longest timelock the constructor accepts: past a month, claims would be frozen
    /// for longer than any operator could mean.
    uint64 public constant TIMELOCK_SECONDS_MAX = 30 days;

    struct Root {
        bytes32 root;
        bytes32 ledgerDigest;
        uint256 totalCumulative;
        uint64 epoch;
        // When the root becomes claimable; 0 marks an empty slot (block timestamps are never 0).
        uint64 activeAtSeconds;
    }

    /// @notice The token paid out.
    IERC20 public immutable token;
    /// @notice Seconds between a proposal and the moment its root can be claimed against.
    uint64 public immutable timelockSeconds;

    /// @notice Units of `token` each account has claimed so far, over all epochs.
    mapping(address account => uint256) public claimed;
    /// @notice Units of `token` claimed so far by all accounts together.
    uint256 public totalClaimed;
    /// @notice Roots a guardian revoked; a claim proving against one reverts with its own error.
    mapping(bytes32 root => bool) public revokedRoots;

    Root private _active;
    Root private _pending;

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

    /// @notice The token address is zero.
    error RoyaltyDistributorInvalidToken(address token);
    /// @notice The admin address is zero.
    error RoyaltyDistributorInvalidAdmin(address admin);
    /// @notice The timelock is longer than `TIMELOCK_SECONDS_MAX`.
    error RoyaltyDistributorTimelockTooLong(uint64 timelockSeconds, uint64 timelockSecondsMax);
    /// @notice A proposed epoch is not greater than the latest one still standing (active or waiting).
    error RoyaltyDistributorEpochNotIncreasing(uint64 last, uint64 given);
    /// @notice A proposed root is zero.
    error RoyaltyDistributorZeroRoot();
    /// @notice A root for `epoch` is still in its timelock until `activeAtSeconds`; wait or revoke it.
    error RoyaltyDistributorRootPending(uint64 epoch, uint64 activeAtSeconds);
    /// @notice A proposed total is below what accounts have already claimed, so the tree is wrong.
    error RoyaltyDistributorTotalBelowClaimed(uint256 totalCumulative, uint256 totalClaimed);
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

    /**
     * @notice Deploys a distributor of `token_` whose roots wait `timelockSeconds_` before claims.
     * @param settler granted SETTLER_ROLE unless zero (grant it later then).
     * @param guardian granted GUARDIAN_ROLE unless zero (grant it later then).
     */
    constructor(IERC20 token_, uint64 timelockSeconds_, address admin, address settler, address guardian) {
        if (address(token_) == address(0)) revert RoyaltyDistributorInvalidToken(address(token_));
        if (admin == address(0)) revert RoyaltyDistributorInvalidAdmin(admin);
        if (timelockSeconds_ > TIMELOCK_SECONDS_MAX) {
            revert RoyaltyDistributorTimelockTooLong(timelockSeconds_, TIMELOCK_SECONDS_MAX);
        }
        token = token_;
        timelockSeconds = timelockSeconds_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        if (settler != address(0)) _grantRole(SETTLER_ROLE, settler);
        if (guardian != address(0)) _grantRole(GUARDIAN_ROLE, guardian);
    }

    /**
     * @notice Proposes `root` for `epoch`; it becomes claimable after the timelock.
     * @param epoch must exceed the epoch of the active root and of any root waiting in its timelock
     * (a revoked epoch may be proposed again).
     * @param totalCumulative the sum of every leaf's cumulative amount; the contract's balance must
     * cover it minus `totalClaimed`.
     * @param ledgerDigest the digest of the ledger snapshot the root was computed from, for audits.
     */
    function proposeRoot(uint64 epoch, bytes32 root, uint256 totalCumulative, bytes32 ledgerDigest)
        external
        onlyRole(SETTLER_ROLE)
    {
        if (root == bytes32(0)) revert RoyaltyDistributorZeroRoot();
        _promotePendingIfDue();
        if (_pending.activeAtSeconds != 0) {
            revert RoyaltyDistributorRootPending(_pending.epoch, _pending.activeAtSeconds);
        }
        if (epoch <= _active.epoch) revert RoyaltyDistributorEpochNotIncreasing(_active.epoch, epoch);
        uint256 claimedSoFar = totalClaimed;
        if (totalCumulative < claimedSoFar) {
            revert RoyaltyDistributorTotalBelowClaimed(totalCumulative, claimedSoFar);
        }
        uint256 required;
        unchecked {
            // Cannot underflow: checked just above.
            required = totalCumulative - claimedSoFar;
        }
        uint256 balance = token.balanceOf(address(this));
        if (balance < required) revert RoyaltyDistributorUnderfunded(required, balance);

        uint64 activeAtSeconds = uint64(block.timestamp) + timelockSeconds;
        _pending = Root({
            root: root,
            ledgerDigest: ledgerDigest,
            totalCumulative: totalCumulative,
            epoch: epoch,
            activeAtSeconds: activeAtSeconds
        });
        emit RootProposed(epoch, root, totalCumulative, ledgerDigest, activeAtSeconds);
    }

    /**
     * @notice Revokes `root`, which must be waiting in its timelock; the active root stays in force
     * and the revoked root's epoch may be proposed again.
     */
    function revokeRoot(bytes32 root) external onlyRole(GUARDIAN_ROLE) {
        Root memory pending = _pending;
        if (pending.activeAtSeconds == 0 || pending.root != root || pending.activeAtSeconds <= block.timestamp) {
            revert RoyaltyDistributorNotPending(root);
        }
        delete _pending;
        revokedRoots[root] = true;
        emit RootRevoked(pending.epoch, root, msg.sender);
    }

    /**
     * @notice Pays `account` its `cumulativeAmount` minus what it has already claimed; anyone may
     * submit it, the tokens always go to `account`.
     * @param proof the sibling hashes from the leaf `(account, cumulativeAmount)` to the active root.
     * @return amount the units paid now.
     */
    function claim(address account, uint256 cumulativeAmount, bytes32[] calldata proof)
        external
        nonReentrant
        returns (uint256 amount)
    {
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(account, cumulativeAmount))));
        bytes32 proven = MerkleProof.processProofCalldata(proof, leaf);
        Root storage active = _activeRootStorage();
        if (proven != active.root || active.activeAtSeconds == 0) {
            _revertForUnprovenRoot(proven, account, cumulativeAmount, active.activeAtSeconds != 0);
        }

        uint256 alreadyClaimed = claimed[account];
        if (cumulativeAmount < alreadyClaimed) {
            revert RoyaltyDistributorCumulativeBelowClaimed(account, cumulativeAmount, alreadyClaimed);
        }
        if (cumulativeAmount == alreadyClaimed) revert RoyaltyDistributorNothingToClaim(account, cumulativeAmount);
        unchecked {
            // Cannot underflow: cumulativeAmount > alreadyClaimed was checked just above.
            amount = cumulativeAmount - alreadyClaimed;
        }
        uint256 totalClaimedAfter = totalClaimed + amount;
        if (totalClaimedAfter > active.totalCumulative) {
            revert RoyaltyDistributorRootTotalExceeded(active.totalCumulative, totalClaimedAfter);
        }
        claimed[account] = cumulativeAmount;
        totalClaimed = totalClaimedAfter;
        emit Claimed(account, active.epoch, amount, cumulativeAmount);
        token.safeTransfer(account, amount);
    }

    /**
     * @notice The root claims are checked against now (zeros before the first one is claimable).
     */
    function activeRoot()
        external
        view
        returns (uint64 epoch, bytes32 root, uint256 totalCumulative, bytes32 ledgerDigest, uint64 activeAtSeconds)
    {
        return _unpack(_activeRootStorage());
    }

    /**
     * @notice The root waiting in its timelock (zeros when none is waiting).
     */
    function pendingRoot()
        external
        view
        returns (uint64 epoch, bytes32 root, uint256 totalCumulative, bytes32 ledgerDigest, uint64 activeAtSeconds)
    {
        if (_pending.activeAtSeconds > block.timestamp) return _unpack(_pending);
    }

    /**
     * @notice The epoch of the latest root still standing, active or waiting; the next proposal must
     * exceed it.
     */
    function latestEpoch() external view returns (uint64) {
        return _pending.activeAtSeconds != 0 ? _pending.epoch : _active.epoch;
    }

    /// @dev A waiting root whose timelock has passed is the active one even before it is moved.
    function _activeRootStorage() private view returns (Root storage) {
        uint64 pendingActiveAt = _pending.activeAtSeconds;
        if (pendingActiveAt != 0 && pendingActiveAt <= block.timestamp) return _pending;
        return _active;
    }

    function _promotePendingIfDue() private {
        uint64 pendingActiveAt = _pending.activeAtSeconds;
        if (pendingActiveAt != 0 && pendingActiveAt <= block.timestamp) {
            _active = _pending;
            delete _pending;
        }
    }

    /// @dev Only on the failure path: names the root the proof was for, so a claimant knows whether
    /// to wait, to stop, or to fetch a fresh proof.
    function _revertForUnprovenRoot(bytes32 proven, address account, uint256 cumulativeAmount, bool anyActive)
        private
        view
    {
        if (_pending.activeAtSeconds > block.timestamp && proven == _pending.root) {
            revert RoyaltyDistributorRootNotActive(_pending.epoch, _pending.activeAtSeconds);
        }
        if (revokedRoots[proven]) revert RoyaltyDistributorRootRevoked(proven);
        if (!anyActive) revert RoyaltyDistributorNoActiveRoot();
        revert RoyaltyDistributorInvalidProof(account, cumulativeAmount);
    }

    function _unpack(Root storage r)
        private
        view
        returns (uint64 epoch, bytes32 root, uint256 totalCumulative, bytes32 ledgerDigest, uint64 activeAtSeconds)
    {
        return (r.epoch, r.root, r.totalCumulative, r.ledgerDigest, r.activeAtSeconds);
    }
}
