// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";

/**
 * @title ModelRegistry
 * @notice Who is paid for a community-owned model: its lineage, its split policy, and where each account is paid.
 *
 * - Accounts are addresses. An account alone sets its payout address, by sending `setPayoutAddress` itself or
 *   by an EIP-712 signature anyone relays (`setPayoutAddressBySig`; EIP-1271 for contract wallets such as a Safe).
 * - A model is registered once, by its owner, with an immutable lineage: every parent already registered, each
 *   with a share in ppm of the model's revenue at least the parent's `minDerivativeSharePpm`. It names its
 *   weights (digest and URI) and a governor: an EOA, a Safe, or a Governor + TimelockController.
 * - A dataset is registered the same way (content digest and URI, a governor).
 * - Only a model's (or dataset's) governor sets its split policy, effective no earlier than `NOTICE_SECONDS`
 *   after the block that sets it (a model's or dataset's first policy only never before that block). A model
 *   policy names accounts, each of the model's parents with exactly its lineage share, registered datasets and
 *   the holders of ERC-20 tokens (the indexer pays them by time-weighted balance); a dataset policy names
 *   accounts and token holders only. Shares sum to `PPM_TOTAL`, in at most `RECIPIENTS_MAX` recipients,
 *   sorted by (kind, id) strictly ascending (so none repeats).
 *
 * Ids are `bytes32`: an identifier of at most 32 ASCII characters, left-aligned and zero-padded, as off-chain
 * records name it. Nothing is ever deleted or overwritten except a payout address and a governor, which the
 * account or governor itself changes; the indexer (`royalty sync-registry`) rebuilds the state from the events.
 */
contract ModelRegistry is EIP712, Nonces {
    /// @notice What a recipient of a split names.
    enum RecipientKind {
        Account, // an address, as `bytes32(uint256(uint160(account)))`
        Model, // a parent model id: its lineage share goes up the DAG
        Dataset, // a dataset id: split again by the dataset's policy
        Holders // the holders of an ERC-20, as `bytes32(uint256(uint160(token)))`: paid by time-weighted balance
    }

    /// @notice One parent of a model and the share of the model's revenue it is due.
    struct Parent {
        bytes32 modelId;
        uint32 sharePpm;
    }

    /// @notice One recipient of a split policy.
    struct Share {
        RecipientKind kind;
        bytes32 id;
        uint32 sharePpm;
    }

    /// @notice A registered model or dataset.
    struct Record {
        address owner;
        address governor;
        uint32 minDerivativeSharePpm; // models only: the least share a derivative must give this model
        uint32 parentCount; // models only
        bool hasPolicy;
    }

    /// @notice Shares are parts per million of the whole.
    uint32 public constant PPM_TOTAL = 1_000_000;
    /// @notice The least time between the block that sets a policy and the policy's `effectiveFrom` (2 days):
    /// long enough for every payee to see a passed vote before it applies.
    uint64 public constant NOTICE_SECONDS = 2 days;
    /// @notice The most recipients a policy names: bounds the gas of a policy and of the off-chain split.
    uint256 public constant RECIPIENTS_MAX = 32;
    /// @notice The most parents a model names (the off-chain producer contract's bound).
    uint256 public constant PARENTS_MAX = 32;

    bytes32 private constant _SET_PAYOUT_TYPEHASH =
        keccak256("SetPayoutAddress(address account,address payout,uint256 nonce,uint256 deadline)");

    mapping(bytes32 modelId => Record) private _models;
    mapping(bytes32 datasetId => Record) private _datasets;
    mapping(bytes32 modelId => mapping(bytes32 parentId => uint32 sharePpm)) private _parentSharePpm;
    mapping(address account => address payout) private _payoutAddress;

    /// @notice A model was registered with its lineage, weights and governor.
    event ModelRegistered(
        bytes32 indexed modelId,
        address indexed owner,
        address indexed governor,
        Parent[] parents,
        uint32 minDerivativeSharePpm,
        bytes32 weightsDigest,
        string weightsUri
    );
    /// @notice A dataset was registered with its content and governor.
    event DatasetRegistered(
        bytes32 indexed datasetId, address indexed owner, address indexed governor, bytes32 contentDigest, string contentUri
    );
    /// @notice A governor set the split of a model's (or dataset's) revenue from `effectiveFrom` on.
    event SplitPolicySet(
        RecipientKind indexed subjectKind,
        bytes32 indexed subjectId,
        uint64 indexed effectiveFrom,
        uint32 computeSharePpm,
        Share[] shares
    );
    /// @notice An account's payouts go to `payout` from this block on.
    event PayoutAddressSet(address indexed account, address indexed payout);
    /// @notice A model's (or dataset's) governor handed its role to `governor`.
    event GovernorChanged(RecipientKind indexed subjectKind, bytes32 indexed subjectId, address indexed governor);

    /// @notice The id is zero (ids are non-empty identifiers).
    error ModelRegistryEmptyId();
    /// @notice A model with this id is already registered.
    error ModelRegistryModelExists(bytes32 modelId);
    /// @notice A dataset with this id is already registered.
    error ModelRegistryDatasetExists(bytes32 datasetId);
    /// @notice No model with this id is registered.
    error ModelRegistryModelMissing(bytes32 modelId);
    /// @notice No dataset with this id is registered.
    error ModelRegistryDatasetMissing(bytes32 datasetId);
    /// @notice A lineage names a parent that is not registered.
    error ModelRegistryParentMissing(bytes32 parentId);
    /// @notice A lineage gives a parent less than the parent's license requires.
    error ModelRegistryShareBelowParentMinimum(bytes32 parentId, uint32 minimumPpm, uint32 givenPpm);
    /// @notice Too many parents or recipients.
    error ModelRegistryTooMany(uint256 count, uint256 max);
    /// @notice Parents or recipients are not in strictly ascending order (a repeat, or unsorted) at `index`.
    error ModelRegistryNotSorted(uint256 index);
    /// @notice A share is zero, or the shares (or parents' shares) add up to the wrong total.
    error ModelRegistryBadShares(uint256 totalPpm, uint256 expectedPpm);
    /// @notice A ppm figure exceeds `PPM_TOTAL`.
    error ModelRegistryPpmTooLarge(uint256 givenPpm);
    /// @notice Only the governor may do this.
    error ModelRegistryNotGovernor(address caller, address governor);
    /// @notice `effectiveFrom` lies before the block that sets the policy.
    error ModelRegistryPolicyRetroactive(uint64 effectiveFrom, uint256 blockTimestamp);
    /// @notice `effectiveFrom` lies less than `NOTICE_SECONDS` after the block that changes the policy.
    error ModelRegistryNoticeTooShort(uint64 effectiveFrom, uint256 earliestEffectiveFrom);
    /// @notice A policy names its own model or dataset.
    error ModelRegistrySelfReference(bytes32 subjectId);
    /// @notice A model policy names a model that is not one of its parents, or a parent with another share.
    error ModelRegistryParentShareMismatch(bytes32 modelId, uint32 lineagePpm, uint32 givenPpm);
    /// @notice A model policy leaves out some of the model's parents.
    error ModelRegistryParentsOmitted(uint256 parentCount, uint256 namedCount);
    /// @notice A dataset policy names something other than an account.
    error ModelRegistryRecipientKindNotAllowed(uint256 index, RecipientKind kind);
    /// @notice An address is zero, or an account id is not a 20-byte address.
    error ModelRegistryBadAddress(bytes32 value);
    /// @notice The signature's deadline has passed.
    error ModelRegistrySignatureExpired(uint256 deadline, uint256 blockTimestamp);
    /// @notice The signature is not the account's (an EOA's ECDSA or a contract wallet's EIP-1271 answer).
    error ModelRegistryInvalidSignature(address account);

    constructor() EIP712("ModelRegistry", "1") {}

    // ---------------------------------------------------------------- accounts

    /// @notice Send your payouts to `payout` from this block on (your own address sends them to you again).
    function setPayoutAddress(address payout) external {
        _setPayout(msg.sender, payout);
    }

    /**
     * @notice Set `account`'s payout address with its EIP-712 signature of
     * `SetPayoutAddress(account, payout, nonce, deadline)`; anyone may relay it. `nonce` is `nonces(account)`.
     * A contract wallet (a Safe) signs by EIP-1271.
     */
    function setPayoutAddressBySig(address account, address payout, uint256 nonce, uint256 deadline, bytes calldata signature)
        external
    {
        if (block.timestamp > deadline) revert ModelRegistrySignatureExpired(deadline, block.timestamp);
        bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(_SET_PAYOUT_TYPEHASH, account, payout, nonce, deadline)));
        if (!SignatureChecker.isValidSignatureNow(account, digest, signature)) {
            revert ModelRegistryInvalidSignature(account);
        }
        _useCheckedNonce(account, nonce);
        _setPayout(account, payout);
    }

    /// @notice Where `account` is paid: its payout address, or itself when it never set one.
    function payoutAddress(address account) external view returns (address) {
        address payout = _payoutAddress[account];
        return payout == address(0) ? account : payout;
    }

    /// @notice The EIP-712 domain separator that `setPayoutAddressBySig` signatures are made over.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ---------------------------------------------------------------- models and datasets

    /**
     * @notice Register model `modelId`, owned by the sender, with its lineage (parents sorted by id, each
     * registered, each share at least the parent's `minDerivativeSharePpm`, the shares at most `PPM_TOTAL`),
     * its weights, its governor, and the least share a derivative of it must give it.
     */
    function registerModel(
        bytes32 modelId,
        Parent[] calldata parents,
        uint32 minDerivativeSharePpm,
        bytes32 weightsDigest,
        string calldata weightsUri,
        address governor
    ) external {
        if (modelId == bytes32(0)) revert ModelRegistryEmptyId();
        if (_models[modelId].owner != address(0)) revert ModelRegistryModelExists(modelId);
        if (governor == address(0)) revert ModelRegistryBadAddress(bytes32(0));
        if (minDerivativeSharePpm > PPM_TOTAL) revert ModelRegistryPpmTooLarge(minDerivativeSharePpm);
        if (parents.length > PARENTS_MAX) revert ModelRegistryTooMany(parents.length, PARENTS_MAX);
        uint256 totalPpm = 0;
        for (uint256 i = 0; i < parents.length; ++i) {
            Parent calldata parent = parents[i];
            if (i > 0 && parents[i - 1].modelId >= parent.modelId) revert ModelRegistryNotSorted(i);
            Record storage record = _models[parent.modelId];
            if (record.owner == address(0)) revert ModelRegistryParentMissing(parent.modelId);
            if (parent.sharePpm == 0 || parent.sharePpm < record.minDerivativeSharePpm) {
                revert ModelRegistryShareBelowParentMinimum(parent.modelId, record.minDerivativeSharePpm, parent.sharePpm);
            }
            totalPpm += parent.sharePpm;
            _parentSharePpm[modelId][parent.modelId] = parent.sharePpm;
        }
        if (totalPpm > PPM_TOTAL) revert ModelRegistryBadShares(totalPpm, PPM_TOTAL);
        // parents.length <= PARENTS_MAX (32) fits a uint32.
        _models[modelId] = Record(msg.sender, governor, minDerivativeSharePpm, uint32(parents.length), false);
        emit ModelRegistered(modelId, msg.sender, governor, parents, minDerivativeSharePpm, weightsDigest, weightsUri);
    }

    /// @notice Register dataset `datasetId`, owned by the sender, with its content and its governor.
    function registerDataset(bytes32 datasetId, bytes32 contentDigest, string calldata contentUri, address governor)
        external
    {
        if (datasetId == bytes32(0)) revert ModelRegistryEmptyId();
        if (_datasets[datasetId].owner != address(0)) revert ModelRegistryDatasetExists(datasetId);
        if (governor == address(0)) revert ModelRegistryBadAddress(bytes32(0));
        _datasets[datasetId] = Record(msg.sender, governor, 0, 0, false);
        emit DatasetRegistered(datasetId, msg.sender, governor, contentDigest, contentUri);
    }

    /**
     * @notice Split model `modelId`'s revenue from `effectiveFrom` on (governor only): `computeSharePpm` to the
     * compute provider of each call, the rest by `shares` (sorted by kind then id; each parent with exactly
     * its lineage share; datasets registered). `effectiveFrom` is at least `NOTICE_SECONDS` after this block,
     * except for the model's first policy, which may start at this block.
     */
    function setModelPolicy(bytes32 modelId, uint64 effectiveFrom, uint32 computeSharePpm, Share[] calldata shares)
        external
    {
        Record storage record = _models[modelId];
        if (record.owner == address(0)) revert ModelRegistryModelMissing(modelId);
        _checkTiming(record, effectiveFrom);
        if (computeSharePpm > PPM_TOTAL) revert ModelRegistryPpmTooLarge(computeSharePpm);
        _checkShares(RecipientKind.Model, modelId, record.parentCount, shares);
        record.hasPolicy = true;
        emit SplitPolicySet(RecipientKind.Model, modelId, effectiveFrom, computeSharePpm, shares);
    }

    /// @notice Split dataset `datasetId`'s revenue among accounts from `effectiveFrom` on (governor only),
    /// with the same notice as a model's policy.
    function setDatasetPolicy(bytes32 datasetId, uint64 effectiveFrom, Share[] calldata shares) external {
        Record storage record = _datasets[datasetId];
        if (record.owner == address(0)) revert ModelRegistryDatasetMissing(datasetId);
        _checkTiming(record, effectiveFrom);
        _checkShares(RecipientKind.Dataset, datasetId, 0, shares);
        record.hasPolicy = true;
        emit SplitPolicySet(RecipientKind.Dataset, datasetId, effectiveFrom, 0, shares);
    }

    /// @notice Hand model `modelId`'s governor role to `governor` (governor only): e.g. from an EOA to a timelock.
    function setModelGovernor(bytes32 modelId, address governor) external {
        Record storage record = _models[modelId];
        if (record.owner == address(0)) revert ModelRegistryModelMissing(modelId);
        _setGovernor(record, RecipientKind.Model, modelId, governor);
    }

    /// @notice Hand dataset `datasetId`'s governor role to `governor` (governor only).
    function setDatasetGovernor(bytes32 datasetId, address governor) external {
        Record storage record = _datasets[datasetId];
        if (record.owner == address(0)) revert ModelRegistryDatasetMissing(datasetId);
        _setGovernor(record, RecipientKind.Dataset, datasetId, governor);
    }

    /// @notice The registration of model `modelId` (owner zero: not registered).
    function model(bytes32 modelId) external view returns (Record memory) {
        return _models[modelId];
    }

    /// @notice The registration of dataset `datasetId` (owner zero: not registered).
    function dataset(bytes32 datasetId) external view returns (Record memory) {
        return _datasets[datasetId];
    }

    /// @notice The share of model `modelId`'s revenue its parent `parentId` is due (0: not a parent).
    function parentSharePpm(bytes32 modelId, bytes32 parentId) external view returns (uint32) {
        return _parentSharePpm[modelId][parentId];
    }

    // ---------------------------------------------------------------- rules

    function _setPayout(address account, address payout) private {
        if (payout == address(0)) revert ModelRegistryBadAddress(bytes32(0));
        _payoutAddress[account] = payout;
        emit PayoutAddressSet(account, payout);
    }

    function _setGovernor(Record storage record, RecipientKind kind, bytes32 id, address governor) private {
        if (msg.sender != record.governor) revert ModelRegistryNotGovernor(msg.sender, record.governor);
        if (governor == address(0)) revert ModelRegistryBadAddress(bytes32(0));
        record.governor = governor;
        emit GovernorChanged(kind, id, governor);
    }

    function _checkTiming(Record storage record, uint64 effectiveFrom) private view {
        if (msg.sender != record.governor) revert ModelRegistryNotGovernor(msg.sender, record.governor);
        if (effectiveFrom < block.timestamp) revert ModelRegistryPolicyRetroactive(effectiveFrom, block.timestamp);
        // A first policy changes nobody's split: until it applies, fees wait in suspense.
        if (record.hasPolicy && effectiveFrom < block.timestamp + NOTICE_SECONDS) {
            revert ModelRegistryNoticeTooShort(effectiveFrom, block.timestamp + NOTICE_SECONDS);
        }
    }

    function _checkShares(RecipientKind subjectKind, bytes32 subjectId, uint256 parentCount, Share[] calldata shares)
        private
        view
    {
        if (shares.length == 0) revert ModelRegistryBadShares(0, PPM_TOTAL);
        if (shares.length > RECIPIENTS_MAX) revert ModelRegistryTooMany(shares.length, RECIPIENTS_MAX);
        uint256 totalPpm = 0;
        uint256 parentsNamed = 0;
        for (uint256 i = 0; i < shares.length; ++i) {
            Share calldata share = shares[i];
            if (i > 0 && !_ascending(shares[i - 1], share)) revert ModelRegistryNotSorted(i);
            if (share.sharePpm == 0) revert ModelRegistryBadShares(0, PPM_TOTAL);
            totalPpm += share.sharePpm;
            if (share.kind == subjectKind && share.id == subjectId) revert ModelRegistrySelfReference(subjectId);
            if (share.kind == RecipientKind.Account || share.kind == RecipientKind.Holders) {
                if (share.id == bytes32(0) || uint256(share.id) >> 160 != 0) revert ModelRegistryBadAddress(share.id);
            } else if (subjectKind == RecipientKind.Dataset) {
                revert ModelRegistryRecipientKindNotAllowed(i, share.kind);
            } else if (share.kind == RecipientKind.Model) {
                uint32 lineagePpm = _parentSharePpm[subjectId][share.id];
                if (lineagePpm == 0 || lineagePpm != share.sharePpm) {
                    revert ModelRegistryParentShareMismatch(share.id, lineagePpm, share.sharePpm);
                }
                ++parentsNamed;
            } else if (_datasets[share.id].owner == address(0)) {
                revert ModelRegistryDatasetMissing(share.id);
            }
        }
        if (totalPpm != PPM_TOTAL) revert ModelRegistryBadShares(totalPpm, PPM_TOTAL);
        if (parentsNamed != parentCount) revert ModelRegistryParentsOmitted(parentCount, parentsNamed);
    }

    function _ascending(Share calldata a, Share calldata b) private pure returns (bool) {
        return a.kind < b.kind || (a.kind == b.kind && a.id < b.id);
    }
}
