"""Losses: PPO's clipped policy and value losses, the Bradley-Terry reward-model loss, DPO and IPO.

Each returns ``(loss, metrics)``: a scalar tensor to backpropagate and a dict of plain floats.
Token-level losses are token means over every masked-in token of the batch (``masked_mean``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tandem.algos.core import masked_mean
from tandem.algos.registry import get_preference_loss, register_policy_loss, register_preference_loss


@register_policy_loss("ppo")
def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float
) -> tuple[Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017, "Proximal Policy Optimization Algorithms",
    eq. 7), negated for minimisation: ``max(-A * r, -A * clip(r, 1 - eps, 1 + eps))`` with
    ``r = exp(logprobs - old_logprobs)``, token mean over the batch.

    Args: ``logprobs`` (B, T) under the policy being trained, ``old_logprobs`` (B, T) under the
    policy that sampled, ``advantages`` (B, T), ``mask`` (B, T).

    Metrics:
      - "clip_frac": fraction of tokens where the clipped term is the larger, i.e. its gradient
        is zero.
      - "approx_kl": token mean of the k3 estimator ``(r - 1) - log r`` of KL(pi_old || pi)
        (samples come from pi_old); unbiased and never negative.
      - "ratio_mean": token mean of ``r``.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        metrics = {
            "clip_frac": masked_mean((clipped > unclipped).to(ratio.dtype), mask).item(),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
        }
    return loss, metrics


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss, ``0.5 * mean(max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2))``.

    Not in the PPO paper: the value clipping of OpenAI baselines' ppo2, one of the code-level
    optimisations studied by Engstrom et al. 2020, "Implementation Matters in Deep Policy Gradients".
    Token mean over the batch. All tensors (B, T).

    Metrics: "value_clip_frac", the fraction of tokens where the clipped error is the larger.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped_error > unclipped_error).to(values.dtype), mask)
    return loss, {"value_clip_frac": clip_frac.item()}


def bradley_terry_loss(chosen_scores: Tensor, rejected_scores: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Reward-model loss under the Bradley-Terry preference model (Ouyang et al. 2022, "InstructGPT",
    eq. 1, one comparison per pair): ``mean(-log sigmoid(r_chosen - r_rejected))``.

    Args: ``chosen_scores``, ``rejected_scores`` (N,).
    Metrics: "accuracy" (fraction with chosen > rejected), "margin" (mean chosen - rejected).
    """
    margin = chosen_scores - rejected_scores
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        metrics = {
            "accuracy": (margin > 0).to(margin.dtype).mean().item(),
            "margin": margin.mean().item(),
        }
    return loss, metrics


@register_preference_loss("dpo")
def _dpo_per_pair(h: Tensor, beta: float) -> Tensor:
    return -F.logsigmoid(beta * h)


@register_preference_loss("ipo")
def _ipo_per_pair(h: Tensor, beta: float) -> Tensor:
    return (h - 1.0 / (2.0 * beta)) ** 2


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    kind: str = "dpo",
) -> tuple[Tensor, dict[str, float]]:
    """Offline preference losses on ``h = (pc - rc) - (pr - rr)``, the difference of the chosen and
    rejected log-ratios of policy to reference (sequence log-probs, each (N,)):

    - "dpo": ``mean(-log sigmoid(beta * h))`` (Rafailov et al. 2023, "Direct Preference
      Optimization", eq. 7).
    - "ipo": ``mean((h - 1 / (2 * beta))^2)`` (Azar et al. 2023, "A General Theoretical Paradigm to
      Understand Learning from Human Preferences", eq. 17, with tau = beta).

    Metrics, the implicit rewards ``beta * (policy - ref)``: "rewards/chosen" and
    "rewards/rejected" (means), "margins" (mean chosen - rejected) and "accuracy" (fraction with
    chosen > rejected). KeyError listing the valid kinds for an unknown ``kind``.
    """
    per_pair = get_preference_loss(kind)
    chosen_log_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_log_ratio = policy_rejected_logps - ref_rejected_logps
    loss = per_pair(chosen_log_ratio - rejected_log_ratio, beta).mean()
    with torch.no_grad():
        chosen_rewards = beta * chosen_log_ratio
        rejected_rewards = beta * rejected_log_ratio
        metrics = {
            "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "margins": (chosen_rewards - rejected_rewards).mean().item(),
            "accuracy": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype).mean().item(),
        }
    return loss, metrics
