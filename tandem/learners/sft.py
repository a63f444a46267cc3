"""The SFT learner: next-token cross-entropy on the response tokens only (the prompt is context)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tandem.algos import masked_mean, masked_sum
from tandem.learners.base import DeepSpeedLearner
from tandem.learners.batching import sft_batch
from tandem.models.tokens import TokenBatch, token_logprobs


def sequence_logprobs(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Sum of the response tokens' log-probs of each row, (B,): log pi(response | prompt)."""
    logprobs, mask = token_logprobs(model, batch)
    return masked_sum(logprobs, mask, dim=-1)


class SFTLearner(DeepSpeedLearner):
    """Supervised fine-tuning of a causal LM on `{"prompt_ids", "response_ids"}` examples.

    The loss is the token mean of -log p over all response tokens of the global batch.
    """

    def build_model(self) -> torch.nn.Module:
        from tandem.models import load_causal_lm, load_tokenizer

        self.pad_id = load_tokenizer(self.model_path).pad_token_id
        return load_causal_lm(self.model_path, "float32")

    def collate(self, examples: Sequence[dict]) -> TokenBatch:
        return sft_batch(examples, self.pad_id).to(self.device)

    def loss_units(self, example: dict) -> int:
        return len(example["response_ids"])

    def compute_loss(self, batch: TokenBatch) -> tuple[torch.Tensor, int, dict[str, float]]:
        logprobs, mask = token_logprobs(self.engine, batch)
        return -masked_mean(logprobs, mask), int(mask.sum()), {}
