// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

interface IClaimable {
    function claim(address account, uint256 cumulativeAmount, bytes32[] calldata proof) external returns (uint256);
}

/**
 * @title MaliciousToken
 * @notice A TEST-ONLY 6-decimal ERC-20 whose transfer hook re-enters `claim` on the distributor paying it,
 * to prove RoyaltyDistributor's reentrancy guard. Never deploy it anywhere but a test chain.
 *
 * Once `arm`ed, the next transfer out of `target` (a payout) calls `target.claim(account, amount, proof)`
 * with the armed arguments before returning. With `swallow` the re-entrant call's revert data is kept in
 * `reentryRevertData` (and `reentryReverted` set) and the outer transfer completes; without it the revert
 * bubbles up and fails the outer claim. Either way the attack fires once per `arm`.
 */
contract MaliciousToken is ERC20 {
    address public target;
    address public reentryAccount;
    uint256 public reentryAmount;
    bytes32[] private _reentryProof;
    bool public swallow;
    bool public armed;
    bool public reentryReverted;
    bool public reentrySucceeded;
    bytes public reentryRevertData;

    constructor() ERC20("Malicious USD", "MUSD") {}

    /// @notice Creates `amount` units for `to`; anyone may mint (test token).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Six minor-unit digits, like the payout asset the distributor expects.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Makes the next transfer out of `target_` re-enter `target_.claim(account, amount, proof)`.
    function arm(address target_, address account, uint256 amount, bytes32[] calldata proof, bool swallow_)
        external
    {
        target = target_;
        reentryAccount = account;
        reentryAmount = amount;
        _reentryProof = proof;
        swallow = swallow_;
        armed = true;
        reentryReverted = false;
        reentrySucceeded = false;
        delete reentryRevertData;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (armed && from == target && from != address(0)) {
            armed = false;
            if (swallow) {
                try IClaimable(target).claim(reentryAccount, reentryAmount, _reentryProof) {
                    reentrySucceeded = true;
                } catch (bytes memory data) {
                    reentryReverted = true;
                    reentryRevertData = data;
                }
            } else {
                IClaimable(target).claim(reentryAccount, reentryAmount, _reentryProof);
                reentrySucceeded = true;
            }
        }
    }
}
