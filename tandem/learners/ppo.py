"""The PPO policy and critic learners.

Examples arrive from the driver in the rollout layout, one dict per sampled response:
`prompt_ids`, `response_ids` (lists) and per-response-token lists (`old_logprobs`, `advantages`,
`returns`, `values`), one value per response token. On the learner, row i of a right-padded
TokenBatch holds its response tokens exactly where `next_token_targets`' mask is 1, in order, so
scattering the concatenated per-token lists into that mask lines every value up with its token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tandem.algos import get_policy_loss, logprobs_and_entropy, logprobs_from_logits, masked_mean, value_loss
from tandem.learners.base import DeepSpeedLearner
from tandem.learners.batching import sft_batch
from tandem.models.tokens import TokenBatch, next_token_targets


def scatter_tokens(examples: Sequence[dict], key: str, mask: torch.Tensor) -> torch.Tensor:
    """Per-response-token lists -> a tensor shaped like `mask` (B, T-1), placed where it is 1."""
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    values = [v for e in examples for v in e[key]]
    out[mask.bool()] = torch.tensor(values, dtype=torch.float32, device=mask.device)
    return out


def gather_tokens(values: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    """(B, T-1) values -> per-row lists of the entries where `mask` is 1 (the inverse of scatter)."""
    return [row[m.bool()].tolist() for row, m in zip(values.float().cpu(), mask.cpu())]


class _RolloutLearner(DeepSpeedLearner):
    """Shared by policy and critic: rollout examples, token-mean losses, no-grad scoring passes."""

    def collate(self, examples: Sequence[dict]) -> tuple[TokenBatch, list[dict]]:
        return sft_batch(examples, self.pad_id).to(self.device), list(examples)

    def loss_units(self, example: dict) -> int:
        return len(example["response_ids"])

    def _forward(self, batch: TokenBatch) -> torch.Tensor:
        return self.engine(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).logits

    @torch.no_grad()
    def _score(self, examples: Sequence[dict], fn) -> list[list[float]]:
        """`fn(logits, batch) -> (B, T-1)` over this rank's examples, per micro-batch.

        Under ZeRO-3 each forward is a collective, so every rank runs as many micro-batches as the
        rank with the most (repeating its last one and dropping the result).
        """
        self.engine.eval()
        mbs = self.cfg.micro_batch_size
        chunks = [examples[i : i + mbs] for i in range(0, len(examples), mbs)]
        n_chunks = int(self._all_reduce([float(len(chunks))], op="max")[0])
        out: list[list[float]] = []
        for i in range(n_chunks):
            batch, _ = self.collate(chunks[min(i, len(chunks) - 1)])
            values = fn(self._forward(batch), batch)
            if i < len(chunks):
                out += gather_tokens(values, next_token_targets(batch)[1])
        return out


class PolicyLearner(_RolloutLearner):
    """The PPO actor: the policy loss registered as `policy_loss` in `tandem.algos` (PPO's clipped
    surrogate, Schulman et al. 2017, eq. 7, by default) with an optional entropy bonus."""

    def __init__(
        self, *args, policy_loss: str = "ppo", clip_eps: float = 0.2, entropy_coef: float = 0.0, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.policy_loss = get_policy_loss(policy_loss)
        self.clip_eps, self.entropy_coef = clip_eps, entropy_coef

    def build_model(self) -> torch.nn.Module:
        from tandem.models import load_causal_lm, load_tokenizer

        self.pad_id = load_tokenizer(self.model_path).pad_token_id
        return load_causal_lm(self.model_path, "float32")

    def logprobs(self, examples: Sequence[dict]) -> list[list[float]]:
        """log pi(response token | context) under the current weights: PPO's pi_old."""
        return self._score(
            examples, lambda logits, b: logprobs_from_logits(logits[:, :-1], b.input_ids[:, 1:])
        )

    def compute_loss(
        self, batch: tuple[TokenBatch, list[dict]]
    ) -> tuple[torch.Tensor, int, dict[str, float]]:
        tokens, examples = batch
        labels, mask = next_token_targets(tokens)
        logits = self._forward(tokens)[:, :-1]  # (B, T-1, V)
        # (B, T-1) each; the entropy is a metric unless it is a bonus in the loss.
        logprobs, entropies = logprobs_and_entropy(logits, labels, entropy_grad=bool(self.entropy_coef))
        old = scatter_tokens(examples, "old_logprobs", mask)
        advantages = scatter_tokens(examples, "advantages", mask)
        pg_loss, metrics = self.policy_loss(logprobs, old, advantages, mask, self.clip_eps)
        entropy = masked_mean(entropies, mask)
        loss = pg_loss - self.entropy_coef * entropy if self.entropy_coef else pg_loss
        metrics = {f"actor/{k}": float(v) for k, v in metrics.items()}
        metrics["actor/entropy"] = float(entropy)
        # The surrogate alone; the learner reports the total (with the entropy bonus) as "actor/loss".
        metrics["actor/pg_loss"] = pg_loss.item()
        return loss, int(mask.sum()), metrics


class CriticLearner(_RolloutLearner):
    """The PPO critic: a per-token value head, clipped value loss (see `tandem.algos.value_loss`).

    The value of response token t is read at the position that predicts it (t-1), the state before
    the token is chosen, so values line up with logprobs and advantages.
    """

    def __init__(self, *args, value_clip_eps: float = 0.2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.value_clip_eps = value_clip_eps

    def build_model(self) -> torch.nn.Module:
        from tandem.models import load_tokenizer, load_value_model

        self.pad_id = load_tokenizer(self.model_path).pad_token_id
        return load_value_model(self.model_path)

    def values(self, examples: Sequence[dict]) -> list[list[float]]:
        """V(state before each response token) under the current weights."""
        return self._score(examples, lambda logits, b: logits[:, :-1, 0])

    def compute_loss(
        self, batch: tuple[TokenBatch, list[dict]]
    ) -> tuple[torch.Tensor, int, dict[str, float]]:
        tokens, examples = batch
        _, mask = next_token_targets(tokens)
        values = self._forward(tokens)[:, :-1, 0].float()  # (B, T-1)
        old = scatter_tokens(examples, "values", mask)
        returns = scatter_tokens(examples, "returns", mask)
        loss, metrics = value_loss(values, old, returns, mask, self.value_clip_eps)
        metrics = {f"critic/{k}": float(v) for k, v in metrics.items()}
        metrics["critic/value_loss"] = loss.item()
        return loss, int(mask.sum()), metrics
