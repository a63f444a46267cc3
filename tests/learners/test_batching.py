"""SFT and pair batches: the loss counts response tokens only, by construction of the targets."""

from __future__ import annotations

import torch

from tandem.learners.batching import pair_batch, sft_batch
from tandem.models.tokens import next_token_targets

PAD = 0


def test_sft_targets_are_exactly_the_response_tokens():
    examples = [
        {"prompt_ids": [5, 6, 7], "response_ids": [8, 9, 3]},
        {"prompt_ids": [5, 6], "response_ids": [10, 3]},
    ]
    batch = sft_batch(examples, PAD)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 3], [5, 6, 10, 3, PAD, PAD]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    labels, mask = next_token_targets(batch)
    # Logit position t predicts token t+1: the counted targets are the response tokens, in order.
    for row, example in enumerate(examples):
        assert labels[row][mask[row].bool()].tolist() == example["response_ids"]
    assert mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]


def test_masked_loss_ignores_prompt_and_padding():
    from tandem.algos import logprobs_from_logits, masked_mean

    batch = sft_batch([{"prompt_ids": [1, 2, 3], "response_ids": [4, 5]}], PAD)
    labels, mask = next_token_targets(batch)
    logits = torch.randn(1, batch.input_ids.shape[1], 8)
    base = -masked_mean(logprobs_from_logits(logits[:, :-1], labels), mask)
    logits[0, 0] += 100.0 * torch.randn(8)  # predicts a prompt token: must not matter
    assert torch.equal(-masked_mean(logprobs_from_logits(logits[:, :-1], labels), mask), base)
    logits[0, 3] += 100.0 * torch.randn(8)  # predicts the last response token: must matter
    assert not torch.equal(-masked_mean(logprobs_from_logits(logits[:, :-1], labels), mask), base)


def test_pair_batch_is_chosen_then_rejected():
    batch = pair_batch(
        [
            {"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5]},
            {"prompt_ids": [1], "chosen_ids": [6, 7], "rejected_ids": [8]},
        ],
        PAD,
    )
    assert batch.input_ids.tolist() == [[1, 2, 3, PAD], [1, 6, 7, PAD], [1, 2, 4, 5], [1, 8, PAD, PAD]]
    assert batch.response_mask.tolist() == [[0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0]]
