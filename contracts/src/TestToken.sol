// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/**
 * @title TestToken
 * @notice A mintable ERC-20 for local chains and tests, standing in for a USDC-like payout asset.
 */
contract TestToken is ERC20, Ownable {
    uint8 private immutable _decimals;

    /**
     * @notice Deploys the token; `decimals_` is the number of minor-unit digits (6 for a USDC-like asset).
     */
    constructor(string memory name_, string memory symbol_, uint8 decimals_, address initialOwner)
        ERC20(name_, symbol_)
        Ownable(initialOwner)
    {
        _decimals = decimals_;
    }

    /// @notice Creates `amount` units for `to`; only the owner may mint.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }

    /// @notice The number of minor-unit digits of one token.
    function decimals() public view override returns (uint8) {
        return _decimals;
    }
}
