// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {TimelockController} from "@openzeppelin/contracts/governance/TimelockController.sol";

/**
 * @title CommunityTimelock
 * @notice OpenZeppelin's TimelockController, as it is: it runs what `CommunityGovernor` passed, after `minDelay`
 * seconds, and is the governor of the community's models in `ModelRegistry`.
 */
contract CommunityTimelock is TimelockController {
    constructor(uint256 minDelaySeconds, address[] memory proposers, address[] memory executors, address admin)
        TimelockController(minDelaySeconds, proposers, executors, admin)
    {}
}
