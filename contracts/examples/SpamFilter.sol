// SPDX-License-Identifier: MIT
pragma solidity ^0.8.19;

import {CallbackConsumer} from "infernet-sdk/consumer/Callback.sol";

import {CSSRequest} from "../src/CSSRequest.sol";
import {CSSResponse} from "../src/CSSResponse.sol";

/// @title SpamFilter
/// @notice Asks an LLM, through the css-inference-service container, whether a proposal's text is
///         spam, as a typed answer `(bool spam, uint8 confidence)`, and keeps the verdict.
/// @dev The question is built on-chain from the proposal this contract stores, so what is asked can
///      be read back from the chain; the answer arrives ABI-encoded, and needs no parsing of text.
contract SpamFilter is CallbackConsumer {
    /// @notice The container's id in the Infernet node's configuration.
    string public constant CONTAINER_ID = "css-inference-service";
    /// @notice The answer's type; the service checks the model's answer against it before delivering.
    string public constant ANSWER_TYPE = "(bool spam, uint8 confidence)";

    struct Proposal {
        address author;
        string text;
    }

    struct Verdict {
        bool judged;
        bool spam;
        uint8 confidence; // 0-100 asked for; the type only bounds it to uint8
    }

    uint8 public immutable provider;
    string public model;

    Proposal[] public proposals;
    mapping(uint256 => Verdict) public verdicts;
    /// @notice subscription id => proposal id + 1 (0: not a subscription of this contract)
    mapping(uint32 => uint256) public proposalOfSubscription;

    event Submitted(uint256 indexed proposalId, uint32 indexed subscriptionId);
    event Judged(uint256 indexed proposalId, bool spam, uint8 confidence);

    error UnknownSubscription(uint32 subscriptionId);
    error AlreadyJudged(uint256 proposalId);

    constructor(address registry, uint8 provider_, string memory model_) CallbackConsumer(registry) {
        provider = provider_;
        model = model_;
    }

    /// @notice Stores a proposal and asks whether it is spam; one node answers, unpaid.
    function submit(string calldata text) external returns (uint256 proposalId, uint32 subscriptionId) {
        proposalId = proposals.length;
        proposals.push(Proposal(msg.sender, text));
        subscriptionId = _requestCompute(CONTAINER_ID, question(proposalId), 1, address(0), 0, address(0), address(0));
        proposalOfSubscription[subscriptionId] = proposalId + 1;
        emit Submitted(proposalId, subscriptionId);
    }

    /// @notice The request bytes for a stored proposal (what `submit` sends to the container).
    function question(uint256 proposalId) public view returns (bytes memory) {
        CSSRequest.Message[] memory messages = new CSSRequest.Message[](2);
        messages[0] = CSSRequest.Message(
            "system",
            "You moderate a DAO's proposals. Judge whether the proposal is spam (advertising, scams, "
            "gibberish or off-topic), and how confident you are, from 0 to 100."
        );
        messages[1] = CSSRequest.Message("user", proposals[proposalId].text);
        return CSSRequest.typedCompletion(provider, model, messages, ANSWER_TYPE);
    }

    function _receiveCompute(
        uint32 subscriptionId,
        uint32,
        uint16,
        address,
        bytes calldata,
        bytes calldata output,
        bytes calldata,
        bytes32,
        uint256
    ) internal override {
        uint256 stored = proposalOfSubscription[subscriptionId];
        if (stored == 0) revert UnknownSubscription(subscriptionId);
        uint256 proposalId = stored - 1;
        if (verdicts[proposalId].judged) revert AlreadyJudged(proposalId);
        (bool spam, uint8 confidence) = abi.decode(CSSResponse.raw(output), (bool, uint8));
        verdicts[proposalId] = Verdict(true, spam, confidence);
        emit Judged(proposalId, spam, confidence);
    }
}
