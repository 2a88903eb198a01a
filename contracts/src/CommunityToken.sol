// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {ERC20Votes} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Votes.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";

/**
 * @title CommunityToken
 * @notice A model community's voting token (ERC20Votes), minted once to the holders the constructor names.
 * Holders delegate (to themselves, or to a representative) to vote in `CommunityGovernor`.
 */
contract CommunityToken is ERC20, ERC20Permit, ERC20Votes {
    /// @notice The holders and amounts do not pair up.
    error CommunityTokenLengthMismatch(uint256 holders, uint256 amounts);

    constructor(string memory name, string memory symbol, address[] memory holders, uint256[] memory amounts)
        ERC20(name, symbol)
        ERC20Permit(name)
    {
        if (holders.length != amounts.length) revert CommunityTokenLengthMismatch(holders.length, amounts.length);
        for (uint256 i = 0; i < holders.length; ++i) {
            _mint(holders[i], amounts[i]);
        }
    }

    function _update(address from, address to, uint256 value) internal override(ERC20, ERC20Votes) {
        super._update(from, to, value);
    }

    /// @inheritdoc ERC20Permit
    function nonces(address owner) public view override(ERC20Permit, Nonces) returns (uint256) {
        return super.nonces(owner);
    }
}
