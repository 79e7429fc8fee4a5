// SPDX-License-Identifier: MIT
pragma solidity ^0.8.19;

/// @title CSSResponse
/// @notice Reads what the css-inference-service container's answer becomes in a consumer's
///         `_receiveCompute`.
/// @dev The node does not hand the container's `raw_output` to the contract as is: `output` is
///      `abi.encode(bytes raw_output, bytes processed_output)`. `raw_output` is `abi.encode(string text)`
///      for a completion, and the typed values' own encoding for a typed completion; `processed_output`
///      is empty. A plain `abi.decode(output, (string))` reads the outer encoding's padding, not the text.
library CSSResponse {
    /// @notice The container's `raw_output`: decode it with the types you asked for, e.g.
    ///         `abi.decode(CSSResponse.raw(output), (bool, uint8, string))`.
    function raw(bytes memory output) internal pure returns (bytes memory rawOutput) {
        (rawOutput,) = abi.decode(output, (bytes, bytes));
    }

    /// @notice The text of a plain completion (endpoint 0).
    function text(bytes memory output) internal pure returns (string memory) {
        return abi.decode(raw(output), (string));
    }
}
