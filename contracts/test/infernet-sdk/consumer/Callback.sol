// SPDX-License-Identifier: MIT
pragma solidity ^0.8.19;

/// @title CallbackConsumer (stand-in)
/// @notice A stand-in for infernet-sdk's `CallbackConsumer`, so that this kit's examples compile and
///         run in its own tests without the SDK, which is not on any package registry. Written from
///         the SDK's documented interface (v1.x): `constructor(address registry)`, `_requestCompute`
///         and the virtual `_receiveCompute` keep its signatures, so a consumer that compiles against
///         this compiles against the SDK. Nothing else of the SDK is here: no coordinator, no
///         payments, no `rawReceiveCompute`; a test contract delivers by calling `_receiveCompute`.
abstract contract CallbackConsumer {
    /// @notice The registry the consumer was built with (the SDK looks the coordinator up in it).
    address internal immutable REGISTRY;

    /// @notice subscription id => the inputs it was requested with, as the SDK keeps them.
    mapping(uint32 => bytes) internal subscriptionInputs;

    uint32 private lastSubscriptionId;

    /// @notice What the SDK's coordinator would be asked for; a test reads the inputs from it.
    event ComputeRequested(
        uint32 indexed subscriptionId,
        string containerId,
        bytes inputs,
        uint16 redundancy,
        address paymentToken,
        uint256 paymentAmount,
        address wallet,
        address verifier
    );

    constructor(address registry) {
        REGISTRY = registry;
    }

    /// @notice A one-time request for the container's compute; returns its subscription id.
    function _requestCompute(
        string memory containerId,
        bytes memory inputs,
        uint16 redundancy,
        address paymentToken,
        uint256 paymentAmount,
        address wallet,
        address verifier
    ) internal returns (uint32 subscriptionId) {
        subscriptionId = ++lastSubscriptionId;
        subscriptionInputs[subscriptionId] = inputs;
        emit ComputeRequested(
            subscriptionId, containerId, inputs, redundancy, paymentToken, paymentAmount, wallet, verifier
        );
    }

    /// @notice Called with each node's answer; `output` is `abi.encode(bytes raw_output, bytes processed_output)`.
    function _receiveCompute(
        uint32 subscriptionId,
        uint32 interval,
        uint16 redundancy,
        address node,
        bytes calldata input,
        bytes calldata output,
        bytes calldata proof,
        bytes32 containerId,
        uint256 index
    ) internal virtual {}
}
