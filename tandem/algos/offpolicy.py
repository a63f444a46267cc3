"""Off-policy corrections: importance weights for tokens sampled by a policy other than PPO's pi_old.

Two policies differ from the one being trained in an asynchronous (or merely numerically mismatched)
loop: the *behaviour* policy mu that sampled the tokens (the rollout engine's weights, some versions
behind, and its own kernels) and the *proximal* policy pi_prox that PPO's ratio and clip are taken
against (the learner's weights at the start of the step, PPO's pi_old). A correction turns the
per-token ratio ``w = pi_prox / mu`` into a non-negative weight on each token's policy-gradient term.
Since the weight is >= 0 it can multiply the advantage: ``max(-wA r, -wA clip(r)) = w max(-A r, -A clip(r))``.

With ``level="sequence"`` the ratio of every token of a response is the sequence's geometric mean,
``exp(mean_t log w_t)`` (length-normalised, so long responses are not truncated or masked merely for
their length, as in GSPO, Zheng et al. 2025).

Each correction returns ``(weights, metrics)``: weights (B, T), 0 where ``mask`` is 0, and plain-float
metrics (keys ending "_max" are maxima, the others token means).
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import Tensor

from tandem.algos.core import masked_mean
from tandem.algos.registry import Registry

Level = Literal["token", "sequence"]


class OffPolicyCorrection(Protocol):
    """Per-token importance weights from proximal and behaviour log-probs, both (B, T)."""

    def __call__(
        self, prox_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, *, cap: float, level: Level
    ) -> tuple[Tensor, dict[str, float]]: ...


OFF_POLICY_CORRECTIONS: Registry[OffPolicyCorrection] = Registry("off-policy correction")


def get_off_policy_correction(name: str) -> OffPolicyCorrection:
    """The correction called ``name``; KeyError listing the valid names otherwise."""
    return OFF_POLICY_CORRECTIONS.get(name)


def is_ratio(prox_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, level: Level) -> Tensor:
    """``pi_prox / mu`` per token (B, T), or each sequence's geometric mean broadcast over its tokens;
    1 where ``mask`` is 0."""
    log_w = (prox_logprobs - behaviour_logprobs) * mask
    if level == "sequence":
        per_seq = log_w.sum(-1) / mask.sum(-1).clamp(min=1)
        log_w = per_seq[:, None].expand_as(log_w) * mask
    elif level != "token":
        raise ValueError(f"unknown importance-sampling level {level!r}; expected token or sequence")
    return torch.exp(log_w)


def _metrics(ratio: Tensor, prox: Tensor, behaviour: Tensor, mask: Tensor) -> dict[str, float]:
    """The ratio's spread and the behaviour-vs-proximal mismatch (mean |log w|, and the k3 estimate
    of KL(mu || pi_prox), samples being mu's)."""
    log_w = (prox - behaviour) * mask
    return {
        "is_ratio_mean": masked_mean(ratio, mask).item(),
        "is_ratio_max": (ratio * mask).max().item() if mask.any() else 1.0,
        "logprob_mismatch": masked_mean(log_w.abs(), mask).item(),
        "mismatch_kl": masked_mean(torch.expm1(log_w) - log_w, mask).item(),
    }


@OFF_POLICY_CORRECTIONS.register("none")
@torch.no_grad()
def no_correction(
    prox_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, *, cap: float, level: Level
) -> tuple[Tensor, dict[str, float]]:
    """Weight 1: the samples are treated as drawn by pi_prox (exact on-policy, up to numerics). The
    mismatch is still reported."""
    ratio = is_ratio(prox_logprobs, behaviour_logprobs, mask, level)
    return mask.to(ratio.dtype), _metrics(ratio, prox_logprobs, behaviour_logprobs, mask)


@OFF_POLICY_CORRECTIONS.register("tis")
@torch.no_grad()
def truncated_is(
    prox_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, *, cap: float, level: Level
) -> tuple[Tensor, dict[str, float]]:
    """Truncated importance sampling, ``min(w, cap)`` (Yao et al. 2025, "Your Efficient RL Framework
    Secretly Brings You Off-Policy RL Training"; the truncation of Espeholt et al. 2018's IMPALA).
    Metric "truncated_frac": tokens whose weight was cut to ``cap``."""
    ratio = is_ratio(prox_logprobs, behaviour_logprobs, mask, level)
    weights = ratio.clamp(max=cap) * mask
    metrics = _metrics(ratio, prox_logprobs, behaviour_logprobs, mask)
    metrics["truncated_frac"] = masked_mean((ratio > cap).to(ratio.dtype), mask).item()
    return weights, metrics


@OFF_POLICY_CORRECTIONS.register("mis")
@torch.no_grad()
def masked_is(
    prox_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, *, cap: float, level: Level
) -> tuple[Tensor, dict[str, float]]:
    """Masked importance sampling: weight ``w`` where ``1/cap <= w <= cap``, 0 (no gradient) outside
    (IcePop, Ling Team 2025, "Every Step Evolves"; MIS in Liu et al. 2025, "When Speed Kills
    Stability"). Masked tokens stay in the token mean's count. Metric "masked_frac"."""
    ratio = is_ratio(prox_logprobs, behaviour_logprobs, mask, level)
    keep = (ratio >= 1.0 / cap) & (ratio <= cap)
    weights = ratio * keep * mask
    metrics = _metrics(ratio, prox_logprobs, behaviour_logprobs, mask)
    metrics["masked_frac"] = masked_mean((~keep).to(ratio.dtype), mask).item()
    return weights, metrics


@OFF_POLICY_CORRECTIONS.register("decoupled")
@torch.no_grad()
def decoupled(
    prox_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, *, cap: float, level: Level
) -> tuple[Tensor, dict[str, float]]:
    """Decoupled PPO: the full behaviour weight ``w`` on PPO's clipped objective against pi_prox
    (Hilton et al. 2022, "Batch size-invariance for policy optimization", eq. 2; AReaL, Fu et al.
    2025). Unbiased, higher variance than "tis" (its truncated form); ``cap`` is unused."""
    ratio = is_ratio(prox_logprobs, behaviour_logprobs, mask, level)
    return ratio * mask, _metrics(ratio, prox_logprobs, behaviour_logprobs, mask)
