"""The PPO rollout batch and the driver's pure stages over it: reward shaping, advantages, metrics;
and `Generation`, a batch being drawn (or drawn ahead and kept in a checkpoint).

Layout: one row per sampled response, right-padded to the longest response R of the batch; every
per-token tensor is (B, R) and `mask` is 1 on real response tokens. This is the layout vLLM returns
sampled-token logprobs in, so rollout, reference, learner and critic values line up column for column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from tandem.algos import explained_variance, get_adv_est, get_kl_estimator, masked_mean, shape_rewards

if TYPE_CHECKING:
    import random

    from tandem.actors.rollout_request import RolloutRequest
    from tandem.actors.samples import SampleBatch


def pad_right(
    rows: Sequence[Sequence[float]],
    width: int | None = None,
    value: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Ragged rows -> (B, width) tensor, right-padded with `value`."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.as_tensor(list(row), dtype=dtype)
    return out


def widen(values: np.ndarray, width: int) -> torch.Tensor:
    """(B, R') scoring output (numpy) -> a (B, width) tensor, R' <= width (a shard's widest row may be shorter)."""
    out = torch.zeros((len(values), width), dtype=torch.float32)
    # A copy: arrays from Ray's object store are read-only.
    out[:, : values.shape[1]] = torch.tensor(values, dtype=torch.float32)
    return out


@dataclass
class RolloutBatch:
    """B = prompts x samples per prompt; a prompt's samples are adjacent (the GRPO/RLOO groups)."""

    prompts: list[str]  # (B,) prompt text as reward functions see it
    responses: list[str]  # (B,) decoded responses
    prompt_ids: list[list[int]]  # (B, P_i) chat-templated prompt tokens (a prompt's samples share one list)
    response_ids: Tensor  # (B, R) sampled tokens, 0 off the response
    rollout_logprobs: Tensor  # (B, R) logprobs of the sampled tokens under the sampler (vLLM)
    mask: Tensor  # (B, R) 1 on response tokens
    weight_versions: list[int]  # (B,) weight version each sample was drawn with
    truncated: Tensor  # (B,) bool: hit max_response_len without EOS
    # Filled by the scoring stages:
    rows: Any = None  # object-store ref of the batch's `Rows` (tokens, mask, behaviour logprobs)
    scoring: Any = None  # reward and reference calls made on the engines' answers as they were drawn
    minibatches: dict[str, list[list[int]]] = field(default_factory=dict)  # role -> rows of each step
    scores: Tensor | None = None  # (B,) summed reward
    reward_components: dict[str, Tensor] = field(default_factory=dict)  # name -> (B,)
    old_logprobs: Tensor | None = None  # (B, R) pi_old from the learner, when a pass of its own
    ref_logprobs: Tensor | None = None  # (B, R) frozen reference
    values: Tensor | None = None  # (B, R) critic values (gae only)
    # Filled by `compute_advantages`:
    token_rewards: Tensor | None = None  # (B, R) KL-shaped rewards
    advantages: Tensor | None = None  # (B, R)
    returns: Tensor | None = None  # (B, R)

    @classmethod
    def from_draw(
        cls, drawn: SampleBatch, prompt_ids: Sequence[list[int]], prompt_texts: Sequence[str]
    ) -> RolloutBatch:
        """Build from the engines' samples (prompt-major); sample i answers prompt `drawn.prompt_index[i]`,
        whose token ids and text the driver holds."""
        index = drawn.prompt_index.tolist()
        lengths = torch.from_numpy(drawn.lengths)
        width = drawn.response_ids.shape[1]
        return cls(
            prompts=[prompt_texts[i] for i in index],
            responses=list(drawn.texts),
            prompt_ids=[prompt_ids[i] for i in index],
            response_ids=torch.from_numpy(drawn.response_ids),
            rollout_logprobs=torch.from_numpy(drawn.logprobs),
            mask=(torch.arange(width)[None, :] < lengths[:, None]).float(),
            weight_versions=drawn.weight_versions.tolist(),
            truncated=torch.from_numpy(drawn.truncated),
        )

    def responses_ids(self) -> list[Tensor]:
        """Each row's response token ids, unpadded."""
        return [row[:n] for row, n in zip(self.response_ids, self.lengths().long().tolist())]

    def __len__(self) -> int:
        return len(self.response_ids)

    def lengths(self) -> Tensor:
        """(B,) response lengths in tokens."""
        return self.mask.sum(-1)


def compute_advantages(
    batch: RolloutBatch,
    *,
    estimator: str,
    kl_estimator: str,
    kl_coef: float,
    group_size: int,
    gamma: float,
    lam: float,
    kl_in_reward: bool = True,
) -> dict[str, float]:
    """KL-shaped token rewards (InstructGPT eq. 2), then advantages and returns by estimator name.
    With `kl_in_reward` False (`ppo.kl_penalty: loss`, the policy's loss holds it) the reward is the
    score alone, and the KL is still measured.

    The KL is that of the policy that drew the samples (the engine's logprobs): a sample-based KL
    estimate is unbiased only under the sampling policy, and it needs no learner pass, so it is
    known before the update whether or not the batch is a step stale.

    Fills `batch.token_rewards`, `batch.advantages`, `batch.returns`; returns KL metrics.
    """
    assert batch.scores is not None and batch.ref_logprobs is not None
    kl = get_kl_estimator(kl_estimator)(batch.rollout_logprobs, batch.ref_logprobs) * batch.mask  # (B, R)
    batch.token_rewards = shape_rewards(batch.scores, kl, batch.mask, kl_coef if kl_in_reward else 0.0)
    batch.advantages, batch.returns = get_adv_est(estimator)(
        token_rewards=batch.token_rewards,
        values=batch.values,
        mask=batch.mask,
        group_size=group_size,
        gamma=gamma,
        lam=lam,
    )
    seq_kl = kl.sum(-1)  # (B,) KL of each response to the reference
    return {
        "kl/mean": seq_kl.mean().item(),
        "kl/max": seq_kl.max().item(),
        "kl/coef": kl_coef,
        "kl/per_token": masked_mean(kl, batch.mask).item(),
    }


def _pearson(x: Tensor, y: Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / denom if denom > 0 else 0.0


def rollout_metrics(batch: RolloutBatch, true_rewards: Sequence[float] | None) -> dict[str, float]:
    """Reward, length, length-reward correlation (the length-bias trap), logprob mismatch, advantages."""
    assert batch.scores is not None
    lengths = batch.lengths()
    m: dict[str, float] = {
        "reward/mean": batch.scores.mean().item(),
        "reward/std": batch.scores.std().item() if len(batch) > 1 else 0.0,
        "rollout/response_length/mean": lengths.mean().item(),
        "rollout/response_length/max": lengths.max().item(),
        "rollout/response_length/clip_frac": batch.truncated.float().mean().item(),
        "rollout/reward_length_corr": _pearson(batch.scores, lengths),
    }
    for name, values in batch.reward_components.items():
        m[f"reward/{name}"] = values.mean().item()
    if true_rewards is not None:
        t = torch.tensor(list(true_rewards), dtype=torch.float64)
        m["true_reward/mean"] = t.mean().item()
        m["true_reward/std"] = t.std().item() if len(t) > 1 else 0.0
        m["rollout/true_reward_length_corr"] = _pearson(t, lengths)
    if batch.old_logprobs is not None:
        # The rollout/learner logprob mismatch: same weights, two implementations (vLLM vs HF).
        gap = (batch.rollout_logprobs - batch.old_logprobs).abs()
        m["rollout/logprob_mismatch"] = masked_mean(gap, batch.mask).item()
        m["rollout/logprob_mismatch_max"] = (gap * batch.mask).max().item()
    if batch.advantages is not None:
        m["advantage/mean"] = masked_mean(batch.advantages, batch.mask).item()
        m["advantage/abs_mean"] = masked_mean(batch.advantages.abs(), batch.mask).item()
    if batch.values is not None and batch.returns is not None:
        m["critic/explained_variance"] = float(explained_variance(batch.values, batch.returns, batch.mask))
        m["critic/values_mean"] = masked_mean(batch.values, batch.mask).item()
    return m


class Generation:
    """One step's samples: being drawn by the engines (`request`), or already drawn (`drawn`, e.g.
    restored from a checkpoint). Weight versions are the policy's: the engines count syncs since they
    started, which after a resume is `version_offset` behind."""

    def __init__(
        self,
        step: int,
        prompt_ids: list[list[int]],
        prompt_texts: list[str],
        request: RolloutRequest | None = None,
        drawn: SampleBatch | None = None,
        version_offset: int = 0,
    ) -> None:
        self.step, self.prompt_ids, self.prompt_texts = step, prompt_ids, prompt_texts
        self._request, self._drawn = request, drawn
        self.version_offset = version_offset
        self.scoring: Any = None  # calls started on the engines' answers (`Roles.start_generation`)
        self._scored_refs = [s.ref for s in request.shares] if request is not None else []

    def result(self) -> SampleBatch:
        """The samples; an engine lost meanwhile is healed and its prompts drawn again (see
        `tandem.actors.rollout_request`)."""
        from tandem.actors.samples import SampleBatch

        if self._drawn is None:
            assert self._request is not None
            self._drawn = SampleBatch.concat(self._request.results(flat=False))
            self._drawn.weight_versions += self.version_offset
        return self._drawn

    def calls(self) -> list[Any]:
        """Refs of the calls drawing and scoring these samples (none when restored from a checkpoint)."""
        if self._request is None:
            return []
        return [s.ref for s in self._request.shares] + [c.ref for c in self.scoring or () if c is not None]

    def batch(self) -> RolloutBatch:
        """The samples as a batch, with the scoring calls made on them while they were drawn when
        those calls read these very answers (no engine was healed and its share drawn again)."""
        batch = RolloutBatch.from_draw(self.result(), self.prompt_ids, self.prompt_texts)
        if self._request is not None and all(
            s.ref is ref for s, ref in zip(self._request.shares, self._scored_refs, strict=True)
        ):
            batch.scoring = self.scoring
        return batch

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready (float32 values round-trip exactly): what a checkpoint keeps of a batch drawn ahead."""
        drawn = self.result()
        arrays = {k: v.tolist() for k, v in vars(drawn).items() if isinstance(v, np.ndarray)}
        return {
            "step": self.step,
            "prompt_ids": self.prompt_ids,
            "prompts": self.prompt_texts,
            "drawn": {**arrays, "texts": drawn.texts},
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Generation:
        from tandem.actors.samples import SampleBatch

        d = state["drawn"]
        drawn = SampleBatch(
            response_ids=np.array(d["response_ids"], np.int64).reshape(len(d["lengths"]), -1),
            logprobs=np.array(d["logprobs"], np.float32).reshape(len(d["lengths"]), -1),
            lengths=np.array(d["lengths"], np.int64),
            prompt_index=np.array(d["prompt_index"], np.int64),
            truncated=np.array(d["truncated"], bool),
            texts=d["texts"],
            weight_versions=np.array(d["weight_versions"], np.int64),
        )
        return cls(state["step"], state["prompt_ids"], state["prompts"], drawn=drawn)


def minibatches(rng: random.Random, n: int, epochs: int, per_epoch: int) -> list[list[int]]:
    """The rows of each optimizer step on a batch of `n`: `epochs` passes in a fresh shuffled order
    (`rng`), each cut into `per_epoch` minibatches."""
    size, out = n // per_epoch, []
    for _ in range(epochs):
        order = list(range(n))
        rng.shuffle(order)
        out += [order[start : start + size] for start in range(0, n, size)]
    return out
