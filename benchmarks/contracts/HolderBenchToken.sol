// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/**
 * @title HolderBenchToken
 * @notice A benchmark-only OpenZeppelin ERC-20 that emits many Transfer logs per transaction
 *         (benchmarks/holders_anvil_bench.py). Anyone may mint and move anyone's tokens: never deploy it elsewhere.
 */
contract HolderBenchToken is ERC20 {
    constructor() ERC20("Holder Bench", "HBN") {}

    /// @notice Mints `value` to each of the `count` addresses `first`, `first + 1`, ...
    function mintMany(uint160 first, uint256 count, uint256 value) external {
        for (uint256 i = 0; i < count; ++i) {
            _mint(address(first + uint160(i)), value);
        }
    }

    /// @notice `count` one-unit transfers between pseudo-random addresses among `first .. first + holders - 1`.
    function shuffle(uint160 first, uint256 holders, uint256 count, uint256 seed) external {
        for (uint256 i = 0; i < count; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, i)));
            _transfer(address(first + uint160(r % holders)), address(first + uint160((r >> 128) % holders)), 1);
        }
    }
}
