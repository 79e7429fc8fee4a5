// SPDX-License-Identifier: MIT
pragma solidity ^0.8.19;

import {CSSRequest} from "../src/CSSRequest.sol";
import {CSSResponse} from "../src/CSSResponse.sol";

/// @notice The kit's internal functions as external ones, for the tests to call on a chain, and the
///         decoding a consumer does for each answer type the tests ask for.
contract CSSKitHarness {
    struct Detail {
        uint8 score;
        string[] tags;
    }

    function encode(uint8 provider, uint8 endpoint, string memory model, CSSRequest.Message[] memory messages)
        external
        pure
        returns (bytes memory)
    {
        return CSSRequest.encode(provider, endpoint, model, messages);
    }

    function completion(uint8 provider, string memory model, CSSRequest.Message[] memory messages)
        external
        pure
        returns (bytes memory)
    {
        return CSSRequest.completion(provider, model, messages);
    }

    function ask(uint8 provider, string memory model, string memory prompt) external pure returns (bytes memory) {
        return CSSRequest.completion(provider, model, prompt);
    }

    function typedCompletion(
        uint8 provider,
        string memory model,
        CSSRequest.Message[] memory messages,
        string memory answerType
    ) external pure returns (bytes memory) {
        return CSSRequest.typedCompletion(provider, model, messages, answerType);
    }

    function askTyped(uint8 provider, string memory model, string memory prompt, string memory answerType)
        external
        pure
        returns (bytes memory)
    {
        return CSSRequest.typedCompletion(provider, model, prompt, answerType);
    }

    function userMessage(string memory content) external pure returns (CSSRequest.Message[] memory) {
        return CSSRequest.userMessage(content);
    }

    /// @notice The provider ids, then the endpoint ids.
    function ids() external pure returns (uint8[6] memory providers, uint8[3] memory endpoints) {
        providers = [
            CSSRequest.OPENAI,
            CSSRequest.GOOSEAI,
            CSSRequest.PERPLEXITYAI,
            CSSRequest.ANTHROPIC,
            CSSRequest.GEMINI,
            CSSRequest.AZURE
        ];
        endpoints = [CSSRequest.COMPLETIONS, CSSRequest.EMBEDDINGS, CSSRequest.TYPED_COMPLETIONS];
    }

    function rawOf(bytes calldata output) external pure returns (bytes memory) {
        return CSSResponse.raw(output);
    }

    function textOf(bytes calldata output) external pure returns (string memory) {
        return CSSResponse.text(output);
    }

    /// @notice `(bool approved, uint8 confidence, string reason)`, decoded as the README shows.
    function decodeApproval(bytes calldata output) external pure returns (bool, uint8, string memory) {
        (bytes memory raw,) = abi.decode(output, (bytes, bytes));
        (bool approved, uint8 confidence, string memory reason) = abi.decode(raw, (bool, uint8, string));
        return (approved, confidence, reason);
    }

    /// @notice `(string label, (uint8 score, string[] tags) detail, uint16[3] votes)`.
    function decodeReview(bytes calldata output)
        external
        pure
        returns (string memory label, Detail memory detail, uint16[3] memory votes)
    {
        (label, detail, votes) = abi.decode(CSSResponse.raw(output), (string, Detail, uint16[3]));
    }

    /// @notice `(address recipient)`.
    function decodeAddress(bytes calldata output) external pure returns (address) {
        return abi.decode(CSSResponse.raw(output), (address));
    }

    /// @notice `(uint256 amount)`.
    function decodeUint256(bytes calldata output) external pure returns (uint256) {
        return abi.decode(CSSResponse.raw(output), (uint256));
    }
}
