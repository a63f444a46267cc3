"""The DPO learner: the policy against a frozen reference, on preference pairs (any loss registered
in `tandem.algos`: DPO and its DPOP, R-DPO and RPO terms, IPO, reference-free SimPO)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tandem.algos import PairLogps, get_preference_loss, preference_loss
from tandem.config import LearnerConfig
from tandem.learners.base import DeepSpeedLearner
from tandem.learners.batching import pair_batch
from tandem.learners.sft import sequence_logprobs
from tandem.models.tokens import TokenBatch


class DPOLearner(DeepSpeedLearner):
    """Trains a causal LM (initialised from `model_path`, an SFT checkpoint) with `preference_loss`.

    The reference is that same checkpoint, held frozen on every rank (a plain module, outside
    DeepSpeed, in the training precision): its log-probs are computed beside the policy's on each
    micro-batch, which costs one extra forward and keeps resume trivial (nothing to cache). A
    reference-free loss (SimPO) loads no reference and skips that forward.
    `options` are the loss's keyword options (`length_alpha`, `dpop_lambda`, `simpo_gamma`).
    """

    def __init__(
        self,
        cfg: LearnerConfig,
        model_path: str,
        total_steps: int,
        seed: int = 0,
        beta: float = 0.1,
        loss: str = "dpo",
        rpo_alpha: float = 0.0,
        options: dict[str, float] | None = None,
    ) -> None:
        super().__init__(cfg, model_path, total_steps, seed)
        self.beta, self.loss_kind, self.rpo_alpha = beta, loss, rpo_alpha
        self.options = options or {}
        self.reference: torch.nn.Module | None = None

    def build_model(self) -> torch.nn.Module:
        from tandem.models import load_causal_lm, load_tokenizer

        self.pad_id = load_tokenizer(self.model_path).pad_token_id
        if get_preference_loss(self.loss_kind).needs_reference:
            ref_dtype = "bfloat16" if self.cfg.precision == "bf16" else "float32"
            self.reference = (
                load_causal_lm(self.model_path, ref_dtype).eval().requires_grad_(False).to(self.device)
            )
        return load_causal_lm(self.model_path, "float32")

    def collate(self, examples: Sequence[dict]) -> TokenBatch:
        return pair_batch(examples, self.pad_id).to(self.device)

    def compute_loss(self, batch: TokenBatch) -> tuple[torch.Tensor, int, dict[str, float]]:
        policy_chosen, policy_rejected = sequence_logprobs(self.engine, batch).float().chunk(2)
        chosen_len, rejected_len = batch.response_mask.sum(-1).float().chunk(2)
        ref_chosen = ref_rejected = None
        if self.reference is not None:
            with torch.no_grad():
                ref_chosen, ref_rejected = sequence_logprobs(self.reference, batch).float().chunk(2)
        pairs = PairLogps(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_len, rejected_len)
        loss, metrics = preference_loss(
            pairs, self.beta, self.loss_kind, rpo_alpha=self.rpo_alpha, **self.options
        )
        return loss, len(policy_chosen), metrics
