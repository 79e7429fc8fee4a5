// SPDX-License-Identifier: MIT
pragma solidity ^0.8.19;

import {SpamFilter} from "../examples/SpamFilter.sol";

/// @notice SpamFilter with a way in for the tests: `deliver` hands it a node's answer as the SDK's
///         coordinator would, through `_receiveCompute`.
contract SpamFilterHarness is SpamFilter {
    constructor(address registry, uint8 provider_, string memory model_) SpamFilter(registry, provider_, model_) {}

    function deliver(uint32 subscriptionId, bytes calldata input, bytes calldata output, bytes calldata proof)
        external
    {
        _receiveCompute(subscriptionId, 1, 1, msg.sender, input, output, proof, keccak256(bytes(CONTAINER_ID)), 0);
    }

    /// @notice The inputs a subscription was requested with, as the SDK keeps them.
    function inputsOf(uint32 subscriptionId) external view returns (bytes memory) {
        return subscriptionInputs[subscriptionId];
    }
}
