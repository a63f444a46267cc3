"""The reward-model learner: an LM with a scalar head, trained on preference pairs with the
Bradley-Terry loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tandem.algos import bradley_terry_loss
from tandem.learners.base import DeepSpeedLearner
from tandem.learners.batching import pair_batch
from tandem.models.tokens import TokenBatch


class RewardLearner(DeepSpeedLearner):
    """Trains `AutoModelForSequenceClassification` (num_labels=1) on `{"prompt_ids", "chosen_ids",
    "rejected_ids"}`: the score is the head's output at the last real token of prompt + response.
    The head starts from a seeded random init (the same on every rank)."""

    def build_model(self) -> torch.nn.Module:
        from tandem.models import load_reward_model, load_tokenizer

        self.pad_id = load_tokenizer(self.model_path).pad_token_id
        return load_reward_model(self.model_path, "float32")

    def collate(self, examples: Sequence[dict]) -> TokenBatch:
        return pair_batch(examples, self.pad_id).to(self.device)

    def compute_loss(self, batch: TokenBatch) -> tuple[torch.Tensor, int, dict[str, float]]:
        scores = self.engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        chosen, rejected = scores.squeeze(-1).float().chunk(2)
        loss, metrics = bradley_terry_loss(chosen, rejected)
        return loss, len(chosen), metrics
