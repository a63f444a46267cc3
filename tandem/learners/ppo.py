"""The PPO policy and critic learners.

Rollout batches arrive as `tandem.models.rows.Rows` (token layout plus per-response-token arrays),
one object-store reference per step; each rank is told which rows are its share. Scoring passes
(pi_old logprobs, critic values) answer in the rollout layout, (B, R) arrays.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from tandem.algos import (
    get_kl_estimator,
    get_off_policy_correction,
    get_policy_loss,
    logprobs_and_entropy,
    masked_mean,
    value_loss,
)
from tandem.cluster.runtime import compute_threads
from tandem.learners.base import DeepSpeedLearner, accumulate
from tandem.models.rows import Rows, model_logprobs, place_rows
from tandem.models.tokens import TokenBatch, next_token_targets, response_logits, token_logprobs


class _RolloutLearner(DeepSpeedLearner):
    """Shared by policy and critic: rows of a rollout batch, token-mean losses, no-grad scoring.
    `max_nonfinite_steps`: see `tandem.learners.finite`. `score_sharers`: see `score_threads`."""

    def __init__(
        self, *args, max_nonfinite_steps: int = 3, score_sharers: int | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_nonfinite_steps, self.score_sharers = max_nonfinite_steps, score_sharers
        self._early: tuple[list[int], list[Any]] | None = None  # see `prepare_rollout`
        self._pending: list[Any] | None = None  # its forwards, for the micro-batch training next

    def collate(self, rows: Rows) -> Rows:
        return rows

    def count_units(self, rows: Rows) -> int:
        return int(rows["mask"].sum())

    def train_rollout(
        self, tokens: Rows, train: Rows, index: Sequence[int], beside: Sequence[Any] = ()
    ) -> dict[str, float]:
        """One optimizer step on rows `index` of a step's batch (`tokens`, with the per-token arrays
        of `train`); every rank calls it at once with its share. `beside`: refs of the calls that
        compute beside it on CPU (asynchronous PPO's draws ahead and their scoring), the cores
        they use being handed over when they finish (`CoreHandoff`)."""
        from tandem.cluster.calls import when_done

        started = time.perf_counter()
        early = self.take_early(index)
        done = when_done(beside) if beside and not self.cfg.threads else None
        with self.handoff.beside(done) as seconds:
            metrics = self.train_batch(tokens.merge(train).select(index))
        # This rank's time in the step, for the driver's share of orchestration around it.
        return metrics | {
            "perf/learner_s": time.perf_counter() - started,
            "perf/learner_all_cores_s": seconds["all_cores_s"],
            "perf/early_forwards": float(early),
        }

    def prepare_rollout(self, tokens: Rows, index: Sequence[int]) -> None:
        """The forward of the first micro-batch of the next `train_rollout` on rows `index`, made while
        the batch is still scored (synchronous PPO, one optimizer step per batch: the learners would
        wait through the reference's pass). Its graph is kept for that call's loss; the same forward
        of the same weights, so the step is unchanged. Runs beside the scorers on `score_threads`."""
        self.engine.train()
        index = [int(i) for i in index]
        rows = tokens.select(index[: self.cfg.micro_batch_size])
        with compute_threads(self.score_threads()):
            self._early = index, [self.train_forward(rows.select(group)) for group in self._groups(rows)]

    def score_threads(self) -> int:
        """Threads of the passes made while a batch is scored: `learner.threads` when set (the
        training's count: the sums then round alike too); else the node's cores split
        `score_sharers` ways when given (a reference held here computes in its turn beside fewer
        roles); else Ray's count."""
        from tandem.cluster.runtime import core_share

        if self.cfg.threads:
            return self.cfg.threads
        return core_share(self.score_sharers) if self.score_sharers else torch.get_num_threads()

    def take_early(self, index: Sequence[int]) -> bool:
        """Whether `prepare_rollout` made the first micro-batch's forward of a step on rows `index`;
        if so `compute_loss` reads it next. A forward made for other rows is dropped."""
        early, self._early = self._early, None
        self._pending = early[1] if early is not None and early[0] == [int(i) for i in index] else None
        return self._pending is not None

    def compute_loss(self, rows: Rows) -> tuple[torch.Tensor, int, dict[str, float]]:
        """The micro-batch's token-mean loss, one forward per group of like length
        (`Rows.length_groups`) and one backward for all (DeepSpeed counts micro-batches)."""
        groups = self._groups(rows)
        forwards, self._pending = self._pending, None  # the first micro-batch's, when prepared
        if forwards is None:
            forwards = [self.train_forward(rows.select(group)) for group in groups]
        parts = [self.group_loss(rows.select(g), out) for g, out in zip(groups, forwards, strict=True)]
        units = sum(u for _, u, _ in parts)
        total = max(units, 1)
        metrics: dict[str, float] = defaultdict(float)
        for _, u, m in parts:
            accumulate(metrics, m, u / total)
        return sum(loss * (u / total) for loss, u, _ in parts), units, dict(metrics)

    def train_forward(self, rows: Rows) -> Any:
        """The training forward of rows of like length: what `group_loss` reads (kept for its backward)."""
        raise NotImplementedError

    def group_loss(self, rows: Rows, out: Any) -> tuple[torch.Tensor, int, dict[str, float]]:
        """`compute_loss` of rows of like length, given their `train_forward`: (token-mean loss, tokens,
        metrics as means)."""
        raise NotImplementedError

    def _groups(self, rows: Rows) -> list[np.ndarray]:
        groups = rows.length_groups(self.cfg.min_forward_tokens)
        if self.world_size > 1 and self.engine.zero_optimization_stage() == 3:
            # Each forward gathers parameters from every rank: all ranks run as many.
            count = int(self._all_reduce([float(len(groups))], op="max")[0])
            groups = np.array_split(np.concatenate(groups), min(count, len(rows)))
        return groups

    def _forward(self, batch: TokenBatch) -> torch.Tensor:
        return self.engine(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).logits

    @torch.no_grad()
    def _score(self, rows: Rows, fn: Callable[[TokenBatch], tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
        """`fn(batch) -> (values, target mask)` at next-token positions (`next_token_targets`) over
        these rows, in the rollout layout (B, R): one forward per group of like length, of at most a
        micro-batch (`Rows.length_groups`).

        Under ZeRO-3 each forward is a collective, so every rank runs as many forwards as the rank
        with the most (repeating its last one and dropping the result).
        """
        self.engine.eval()
        groups = rows.length_groups(self.cfg.min_forward_tokens, self.cfg.micro_batch_size)
        forwards = int(self._all_reduce([float(len(groups))], op="max")[0])
        out = []
        for i in range(forwards):
            chunk = rows.select(groups[min(i, len(groups) - 1)])
            batch = chunk.tokens(self.device)
            values, target_mask = fn(batch)
            if i < len(groups):
                out.append(chunk.from_targets(values, target_mask))
        return place_rows(out, groups)


class PolicyLearner(_RolloutLearner):
    """The PPO actor: the policy loss registered as `policy_loss` in `tandem.algos` (PPO's clipped
    surrogate, Schulman et al. 2017, eq. 7, by default) with an optional entropy bonus, and with
    `kl_loss_coef` > 0 the KL to the reference (`kl_estimator`) as a term of the loss (GRPO's form).
    With `reference_dtype` set, rank 0 also holds the frozen reference (`reference.host: policy`)."""

    def __init__(
        self,
        *args,
        policy_loss: str = "ppo",
        clip_eps: float = 0.2,
        entropy_coef: float = 0.0,
        kl_loss_coef: float = 0.0,
        kl_estimator: str = "k3",
        off_policy: str = "none",
        is_cap: float = 2.0,
        is_level: str = "token",
        reference_dtype: str | None = None,
        reference_batch_size: int = 64,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.reference: torch.nn.Module | None = None
        self.reference_dtype, self.reference_batch_size = reference_dtype, reference_batch_size
        self.policy_loss = get_policy_loss(policy_loss)
        self.correction = get_off_policy_correction(off_policy)
        self.clip_eps, self.entropy_coef = clip_eps, entropy_coef
        self.kl_loss_coef, self.kl_estimator = kl_loss_coef, get_kl_estimator(kl_estimator)
        self.is_cap, self.is_level = is_cap, is_level

    def build_model(self) -> torch.nn.Module:
        from tandem.models import load_causal_lm, load_tokenizer

        self.pad_id = load_tokenizer(self.model_path).pad_token_id
        return load_causal_lm(self.model_path, "float32")

    def setup(self) -> dict[str, Any]:
        from tandem.models import load_causal_lm

        summary = super().setup()
        if self.reference_dtype is not None and self.rank == 0:
            # Loaded aside from the run's random streams: the job draws the same numbers either way.
            with torch.random.fork_rng(devices=[]):
                model = load_causal_lm(self.model_path, self.reference_dtype)
            self.reference = model.eval().requires_grad_(False).to(self.device)
        return summary

    def reference_logprobs(self, rows: Rows) -> np.ndarray:
        """The frozen reference's logprobs of every response token of `rows` (B, R), as the reference
        actor's (`model_logprobs`), on `score_threads`; rank 0 with `reference_dtype`."""
        if self.reference is None:
            raise RuntimeError(f"policy rank {self.rank} holds no reference (reference.host: policy, rank 0)")
        with compute_threads(self.score_threads()):
            return model_logprobs(
                self.reference, rows, self.device, self.reference_batch_size, self.cfg.min_forward_tokens
            )

    def logprobs(self, rows: Rows, index: Sequence[int]) -> np.ndarray:
        """log pi(response token | context) of rows `index` under the current weights (B, R): PPO's
        pi_old, when it is not the training forward itself (see `group_loss`)."""
        return self._score(rows.select(index), lambda b: token_logprobs(self.engine, b))

    def train_forward(self, rows: Rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logprobs, entropies, target mask), (B, T') each; the entropy is a metric unless it is a
        bonus in the loss."""
        logits, labels, mask = response_logits(self.engine, rows.tokens(self.device))  # (B, T', V)
        return *logprobs_and_entropy(logits, labels, entropy_grad=bool(self.entropy_coef)), mask

    def group_loss(self, rows: Rows, out: Any) -> tuple[torch.Tensor, int, dict[str, float]]:
        logprobs, entropies, mask = out
        # pi_old: given when the weights moved since the batch was scored (a later minibatch or
        # epoch); otherwise it is this very forward, detached (the ratio's value is 1, its gradient not).
        old = rows.at_targets("old_logprobs", mask) if "old_logprobs" in rows else logprobs.detach()
        behaviour = rows.at_targets("behaviour_logprobs", mask)
        weights, is_metrics = self.correction(old, behaviour, mask, cap=self.is_cap, level=self.is_level)
        advantages = rows.at_targets("advantages", mask) * weights
        pg_loss, metrics = self.policy_loss(logprobs, old, advantages, mask, self.clip_eps)
        entropy = masked_mean(entropies, mask)
        loss = pg_loss - self.entropy_coef * entropy if self.entropy_coef else pg_loss
        metrics = {f"actor/{k}": float(v) for k, v in metrics.items()}
        if self.kl_loss_coef:
            # Off the responses the reference is this forward's own (detached) logprob: an estimate
            # of 0 whose gradient stays finite, however small the probability of a padding label.
            ref = torch.where(mask.bool(), rows.at_targets("ref_logprobs", mask), logprobs.detach())
            kl = masked_mean(self.kl_estimator(logprobs, ref), mask)
            loss = loss + self.kl_loss_coef * kl
            metrics["actor/kl_loss"] = kl.item()
        metrics |= {f"offpolicy/{k}": float(v) for k, v in is_metrics.items()}
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

    def values(self, rows: Rows, index: Sequence[int]) -> np.ndarray:
        """V(state before each response token) of rows `index` under the current weights (B, R)."""
        return self._score(
            rows.select(index), lambda b: (self._forward(b)[:, :-1, 0], next_token_targets(b)[1])
        )

    def train_forward(self, rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, target mask), (B, T-1) each."""
        tokens = rows.tokens(self.device)
        return self._forward(tokens)[:, :-1, 0].float(), next_token_targets(tokens)[1]

    def group_loss(self, rows: Rows, out: Any) -> tuple[torch.Tensor, int, dict[str, float]]:
        values, mask = out
        old = rows.at_targets("values", mask)
        returns = rows.at_targets("returns", mask)
        loss, metrics = value_loss(values, old, returns, mask, self.value_clip_eps)
        metrics = {f"critic/{k}": float(v) for k, v in metrics.items()}
        metrics["critic/value_loss"] = loss.item()
        return loss, int(mask.sum()), metrics
