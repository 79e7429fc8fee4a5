// SPDX-License-Identifier: MIT
pragma solidity ^0.8.19;

/// @title CSSRequest
/// @notice Builds, on-chain, the `inputs` a contract hands to `_requestCompute` for the
///         css-inference-service container.
/// @dev Completions and embeddings (endpoints 0 and 1) are
///      `abi.encode(uint8 provider, uint8 endpoint, string model, (string role, string content)[] messages)`,
///      byte for byte what infernet-ml's `encode_css_completion_request` makes; a typed completion
///      (endpoint 2) adds `string answerType` as a fifth field. A struct is ABI-encoded as the tuple of
///      its members, so `Message[]` is `(string,string)[]`.
library CSSRequest {
    /// @notice One message of the conversation, e.g. `Message("user", "is this spam?")`.
    struct Message {
        string role;
        string content;
    }

    // The provider ids the service reads (infernet-ml's `CSSProvider`, and the service's own).
    uint8 internal constant OPENAI = 0;
    uint8 internal constant GOOSEAI = 1;
    uint8 internal constant PERPLEXITYAI = 2;
    uint8 internal constant ANTHROPIC = 3;
    uint8 internal constant GEMINI = 4;
    uint8 internal constant AZURE = 5;

    // The endpoint ids. Embeddings can be requested from a contract but never delivered to one: the
    // service answers them off-chain only.
    uint8 internal constant COMPLETIONS = 0;
    uint8 internal constant EMBEDDINGS = 1;
    uint8 internal constant TYPED_COMPLETIONS = 2;

    /// @notice `encode` was given TYPED_COMPLETIONS, whose layout needs an answer type: use `typedCompletion`.
    error AnswerTypeRequired();
    /// @notice `typedCompletion` was given an empty answer type; the service would refuse the job.
    error EmptyAnswerType();

    /// @notice The request for endpoint 0 or 1, in the four-field layout.
    function encode(uint8 provider, uint8 endpoint, string memory model, Message[] memory messages)
        internal
        pure
        returns (bytes memory)
    {
        // the four-field layout read as endpoint 2 would lose the answer type: refuse it here
        // rather than let the job fail off-chain
        if (endpoint == TYPED_COMPLETIONS) revert AnswerTypeRequired();
        return abi.encode(provider, endpoint, model, messages);
    }

    /// @notice A chat completion (endpoint 0); the answer's `raw_output` is `abi.encode(string text)`.
    function completion(uint8 provider, string memory model, Message[] memory messages)
        internal
        pure
        returns (bytes memory)
    {
        return encode(provider, COMPLETIONS, model, messages);
    }

    /// @notice A chat completion of one user message.
    function completion(uint8 provider, string memory model, string memory prompt)
        internal
        pure
        returns (bytes memory)
    {
        return encode(provider, COMPLETIONS, model, userMessage(prompt));
    }

    /// @notice A completion with a typed answer (endpoint 2).
    /// @param answerType a Solidity tuple type with named components, e.g.
    ///        `"(bool approved, uint8 confidence, string reason)"`; the answer's `raw_output` is the
    ///        values' own ABI encoding, e.g. `abi.encode(bool, uint8, string)`.
    function typedCompletion(
        uint8 provider,
        string memory model,
        Message[] memory messages,
        string memory answerType
    ) internal pure returns (bytes memory) {
        if (bytes(answerType).length == 0) revert EmptyAnswerType();
        return abi.encode(provider, TYPED_COMPLETIONS, model, messages, answerType);
    }

    /// @notice A completion with a typed answer, asked in one user message.
    function typedCompletion(
        uint8 provider,
        string memory model,
        string memory prompt,
        string memory answerType
    ) internal pure returns (bytes memory) {
        return typedCompletion(provider, model, userMessage(prompt), answerType);
    }

    /// @notice A conversation of one user message.
    function userMessage(string memory content) internal pure returns (Message[] memory messages) {
        messages = new Message[](1);
        messages[0] = Message("user", content);
    }
}
