// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/**
 * @title FeeToken
 * @notice A test token that keeps 1% of every transfer between two non-zero accounts (burned), like
 * fee-on-transfer tokens do: a transfer delivers less than it says. Tests only.
 */
contract FeeToken is ERC20 {
    /// @notice The fee in basis points of each transfer.
    uint256 public constant FEE_BPS = 100;

    constructor() ERC20("Fee USD", "FUSD") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function _update(address from, address to, uint256 value) internal override {
        if (from == address(0) || to == address(0)) {
            super._update(from, to, value);
            return;
        }
        uint256 fee = value * FEE_BPS / 10_000;
        super._update(from, address(0), fee);
        super._update(from, to, value - fee);
    }
}
