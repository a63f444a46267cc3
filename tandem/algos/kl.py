"""Per-token KL estimators and the KL-penalised token rewards of RLHF.

The estimators follow Schulman 2020, "Approximating KL Divergence" (blog post, no equation
numbers): with samples x ~ pi and ``log r = log pi_ref(x) - log pi(x)``,
k1 = -log r, k2 = (log r)^2 / 2, k3 = (r - 1) - log r. k1 and k3 are unbiased for KL(pi || pi_ref);
k3 is also never negative. k2 is biased but low variance.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tandem.algos.registry import get_kl_estimator, register_kl_estimator


@register_kl_estimator("k1")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log pi - log pi_ref per token (Schulman 2020): unbiased, can be negative."""
    return logprobs - ref_logprobs


@register_kl_estimator("k2")
def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = (log pi - log pi_ref)^2 / 2 per token (Schulman 2020): biased, low variance, >= 0."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


@register_kl_estimator("k3")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = exp(log pi_ref - log pi) - 1 - (log pi_ref - log pi) per token (Schulman 2020):
    unbiased and >= 0, the estimator GRPO uses (Shao et al. 2024, eq. 4)."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: str) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref), (B, T) -> (B, T), by estimator name.

    ``kind`` is "k1", "k2" or "k3" (Schulman 2020, "Approximating KL Divergence"); KeyError
    listing the valid names otherwise. ``logprobs`` are of the sampled tokens under pi, the
    policy the tokens were sampled from.
    """
    return get_kl_estimator(kind)(logprobs, ref_logprobs)


def shape_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Token rewards ``-kl_coef * kl_t`` plus the sequence score at the last response token.

    The per-token form of the RLHF reward (Ouyang et al. 2022, "InstructGPT", eq. 2;
    Ziegler et al. 2019, sec. 2): ``R(x, y) = r(x, y) - beta * log(pi(y|x) / pi_ref(y|x))``, with
    the log-ratio spread over the tokens and the reward model's score on the final one.

    Args: ``scores`` (B,), ``kl`` (B, T) per-token KL estimates, ``mask`` (B, T).
    Returns: (B, T) rewards, 0 where ``mask`` is 0; a row with no response token gets nothing.
    """
    keep = mask.bool()
    rewards = torch.where(keep, -kl_coef * kl, 0.0)
    positions = torch.arange(keep.shape[-1], device=keep.device)
    last = torch.where(keep, positions, -1).amax(dim=-1)
    has_response = last >= 0
    rows = torch.arange(keep.shape[0], device=keep.device)
    bonus = torch.where(has_response, scores.to(rewards.dtype), 0.0)
    return rewards.index_put((rows, last.clamp(min=0)), bonus, accumulate=True)
