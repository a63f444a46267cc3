"""Advantage estimators: GAE with a critic, and the critic-free GRPO, RLOO and REINFORCE++.

Token tensors are (B, T), right padded, with ``mask`` 1 on response tokens. Advantages are
constants for the policy update, so everything here runs under ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tandem.algos.core import masked_sum, masked_whiten
from tandem.algos.registry import Registry, register_adv_est

# Separates a group's scores from a group whose scores are all equal (std 0).
GROUP_STD_EPS = 1e-6


@torch.no_grad()
def compute_gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
    Using Generalized Advantage Estimation", eq. 16), computed by its backward recursion.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V = 0`` after the last response token, and
    ``A_t = delta_t + gamma * lam * A_{t+1}``. Tokens where ``mask`` is 0 are skipped: the
    recursion carries ``V`` and ``A`` of the next masked-in token across them, which for right
    padding means the episode ends at the last response token.

    Args: ``rewards``, ``values``, ``mask`` all (B, T).
    Returns: ``(advantages, returns)``, (B, T), ``returns = advantages + values``, both 0 where
    ``mask`` is 0.
    """
    keep = mask.bool()
    batch, length = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = rewards.new_zeros(batch)
    next_advantage = rewards.new_zeros(batch)
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        next_value = torch.where(keep[:, t], values[:, t], next_value)
        next_advantage = torch.where(keep[:, t], advantage, next_advantage)
        advantages[:, t] = torch.where(keep[:, t], advantage, 0.0)
    returns = torch.where(keep, advantages + values, 0.0)
    return advantages, returns


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Returns-to-go ``G_t = r_t + gamma * G_{t+1}`` over the masked tokens, (B, T), 0 where masked out.

    This is GAE with ``V = 0`` and ``lam = 1`` (Schulman et al. 2016, eq. 18), and is computed
    as such so both share one recursion.
    """
    advantages, _ = compute_gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)
    return advantages


@torch.no_grad()
def reinforce_pp_returns(token_rewards: Tensor, mask: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """REINFORCE++ advantages (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning
    Large Language Models"): discounted returns-to-go of the KL-shaped token rewards, whitened
    over all response tokens of the batch (its global advantage normalisation).

    Returns: ``(advantages, returns)``, (B, T), ``advantages = masked_whiten(returns, mask)``,
    both 0 where ``mask`` is 0.
    """
    returns = discounted_returns(token_rewards, mask, gamma)
    return masked_whiten(returns, mask), returns


def _grpo_advantages(groups: Tensor) -> Tensor:
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True)
    return (groups - mean) / (std + GROUP_STD_EPS)


def _rloo_advantages(groups: Tensor) -> Tensor:
    group_size = groups.shape[1]
    others_mean = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return groups - others_mean


_GROUP_BASELINES: Registry[Callable[[Tensor], Tensor]] = Registry("group advantage kind")
_GROUP_BASELINES.register("grpo")(_grpo_advantages)
_GROUP_BASELINES.register("rloo")(_rloo_advantages)


@torch.no_grad()
def group_advantages(scores: Tensor, group_size: int, kind: str) -> Tensor:
    """Per-sequence advantages against a baseline from the other samples of the same prompt.

    ``scores`` is (N,) with consecutive runs of ``group_size`` samples per prompt.

    - "grpo" (Shao et al. 2024, "DeepSeekMath", sec. 4.1.2, outcome supervision):
      ``(s - mean(group)) / (std(group) + 1e-6)``, std unbiased (torch's default).
    - "rloo" (Ahmadian et al. 2024, "Back to Basics", the RLOO estimator; Kool et al. 2019,
      "Buy 4 REINFORCE Samples"): ``s_i - mean_{j != i} s_j``.

    Raises ValueError if N is not a multiple of ``group_size`` or ``group_size < 2``, KeyError
    for an unknown ``kind``. Returns (N,).
    """
    baseline = _GROUP_BASELINES.get(kind)
    num = scores.shape[0]
    if group_size < 2 or num % group_size != 0:
        raise ValueError(
            f"group advantages need a group_size >= 2 that divides the number of scores; "
            f"got {num} scores and group_size {group_size}"
        )
    return baseline(scores.reshape(-1, group_size)).reshape(num)


@register_adv_est("gae", needs_critic=True)
def _gae_estimator(
    *,
    token_rewards: Tensor,
    values: Tensor | None,
    mask: Tensor,
    group_size: int,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    if values is None:
        raise ValueError("the 'gae' advantage estimator needs critic values, got values=None")
    return compute_gae(token_rewards, values, mask, gamma, lam)


def _outcome_group_estimator(kind: str) -> Callable[..., tuple[Tensor, Tensor]]:
    """GRPO/RLOO on the sequence return ``sum_t token_rewards`` (score minus the KL penalty),
    broadcast to every response token; critic-free, so returns are the advantages."""

    def estimate(
        *,
        token_rewards: Tensor,
        values: Tensor | None,
        mask: Tensor,
        group_size: int,
        gamma: float,
        lam: float,
    ) -> tuple[Tensor, Tensor]:
        sequence_returns = masked_sum(token_rewards, mask, dim=-1)
        per_sequence = group_advantages(sequence_returns, group_size, kind)
        advantages = torch.where(mask.bool(), per_sequence.unsqueeze(-1), 0.0)
        return advantages, advantages.clone()

    estimate.__name__ = f"_{kind}_estimator"
    return estimate


register_adv_est("grpo")(_outcome_group_estimator("grpo"))
register_adv_est("rloo")(_outcome_group_estimator("rloo"))


@register_adv_est("reinforce++")
def _reinforce_pp_estimator(
    *,
    token_rewards: Tensor,
    values: Tensor | None,
    mask: Tensor,
    group_size: int,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    return reinforce_pp_returns(token_rewards, mask, gamma)
