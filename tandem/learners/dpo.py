"""The DPO learner: the policy against a frozen reference, on preference pairs (DPO or IPO)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tandem.algos import dpo_loss
from tandem.config import LearnerConfig
from tandem.learners.base import DeepSpeedLearner
from tandem.learners.batching import pair_batch
from tandem.learners.sft import sequence_logprobs
from tandem.models.tokens import TokenBatch


class DPOLearner(DeepSpeedLearner):
    """Trains a causal LM (initialised from `model_path`, an SFT checkpoint) with `dpo_loss`.

    The reference is that same checkpoint, held frozen on every rank (a plain module, outside
    DeepSpeed, in the training precision): its log-probs are computed beside the policy's on each
    micro-batch, which costs one extra forward and keeps resume trivial (nothing to cache).
    """

    def __init__(
        self,
        cfg: LearnerConfig,
        model_path: str,
        total_steps: int,
        seed: int = 0,
        beta: float = 0.1,
        loss: str = "dpo",
    ) -> None:
        super().__init__(cfg, model_path, total_steps, seed)
        self.beta, self.loss_kind = beta, loss

    def build_model(self) -> torch.nn.Module:
        from tandem.models import load_causal_lm, load_tokenizer

        self.pad_id = load_tokenizer(self.model_path).pad_token_id
        ref_dtype = "bfloat16" if self.cfg.precision == "bf16" else "float32"
        self.reference = (
            load_causal_lm(self.model_path, ref_dtype).eval().requires_grad_(False).to(self.device)
        )
        return load_causal_lm(self.model_path, "float32")

    def collate(self, examples: Sequence[dict]) -> TokenBatch:
        return pair_batch(examples, self.pad_id).to(self.device)

    def compute_loss(self, batch: TokenBatch) -> tuple[torch.Tensor, int, dict[str, float]]:
        policy_chosen, policy_rejected = sequence_logprobs(self.engine, batch).float().chunk(2)
        with torch.no_grad():
            ref_chosen, ref_rejected = sequence_logprobs(self.reference, batch).float().chunk(2)
        loss, metrics = dpo_loss(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=self.beta, kind=self.loss_kind
        )
        return loss, len(policy_chosen), metrics
