"""Losses: PPO's clipped policy and value losses, the Bradley-Terry reward-model loss, and the
offline preference losses (DPO with its DPOP and R-DPO terms, IPO, SimPO; the RPO term).

Each returns ``(loss, metrics)``: a scalar tensor to backpropagate and a dict of plain floats.
Token-level losses are token means over every masked-in token of the batch (``masked_mean``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tandem.algos.core import masked_mean
from tandem.algos.registry import (
    PairLogps,
    get_preference_loss,
    register_policy_loss,
    register_preference_loss,
)


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


def _log_ratio_margin(pairs: PairLogps) -> Tensor:
    """``h = (pc - rc) - (pr - rr)``: the chosen minus the rejected log-ratio of policy to reference."""
    return (pairs.policy_chosen - pairs.ref_chosen) - (pairs.policy_rejected - pairs.ref_rejected)


@register_preference_loss("dpo", options=("length_alpha", "dpop_lambda"))
def _dpo_per_pair(
    pairs: PairLogps, beta: float, *, length_alpha: float = 0.0, dpop_lambda: float = 0.0, **_: float
) -> Tensor:
    """``-log sigmoid(beta * (h - lambda * max(0, rc - pc)) + alpha * (|y_w| - |y_l|))``.

    - DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7) with both options 0.
    - DPOP (Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with
      DPO-Positive", eq. 3), ``dpop_lambda``: DPO can lower the chosen answer's likelihood as long
      as it lowers the rejected one's more (it does on pairs that differ in few tokens); the penalty
      is paid only once the chosen answer falls below the reference.
    - R-DPO (Park et al. 2024, "Disentangling Length from Quality in Direct Preference
      Optimization", eq. 9), ``length_alpha``: the margin gets ``+ alpha * (|y_w| - |y_l|)`` (lengths
      in tokens), so a pair whose chosen answer is longer is already partly satisfied and pushes
      the policy less towards length.
    """
    h = _log_ratio_margin(pairs)
    if dpop_lambda:
        h = h - dpop_lambda * torch.clamp(pairs.ref_chosen - pairs.policy_chosen, min=0.0)
    return -F.logsigmoid(beta * h + length_alpha * (pairs.chosen_len - pairs.rejected_len))


@register_preference_loss("ipo")
def _ipo_per_pair(pairs: PairLogps, beta: float, **_: float) -> Tensor:
    """``(h - 1 / (2 * beta))^2`` (Azar et al. 2023, "A General Theoretical Paradigm to Understand
    Learning from Human Preferences", eq. 17, with tau = beta)."""
    return (_log_ratio_margin(pairs) - 1.0 / (2.0 * beta)) ** 2


@register_preference_loss("simpo", needs_reference=False, options=("simpo_gamma",))
def _simpo_per_pair(pairs: PairLogps, beta: float, *, simpo_gamma: float = 0.0, **_: float) -> Tensor:
    """``-log sigmoid(beta * pc / |y_w| - beta * pr / |y_l| - gamma)`` (Meng et al. 2024, "SimPO: Simple
    Preference Optimization with a Reference-Free Reward", eq. 6): no reference model, the reward
    is the length-normalised log-likelihood (eq. 4), and ``simpo_gamma`` is the target margin.
    beta scales a per-token average here, not a sequence log-ratio: the paper uses 2.0-2.5."""
    chosen = pairs.policy_chosen / pairs.chosen_len
    rejected = pairs.policy_rejected / pairs.rejected_len
    return -F.logsigmoid(beta * (chosen - rejected) - simpo_gamma)


def preference_loss(
    pairs: PairLogps, beta: float, kind: str = "dpo", rpo_alpha: float = 0.0, **options: float
) -> tuple[Tensor, dict[str, float]]:
    """The mean over pairs of the per-pair loss registered as ``kind`` ("dpo", "ipo", "simpo": see
    each), called with ``options`` (``length_alpha``, ``dpop_lambda``, ``simpo_gamma``), plus
    ``rpo_alpha`` times the chosen answers' negative log-likelihood per token, the RPO term (Pang et
    al. 2024, "Iterative Reasoning Preference Optimization", eq. 1, ``L_DPO + alpha * L_NLL``).
    KeyError listing the valid kinds for an unknown ``kind``.

    Metrics, the implicit rewards ``beta * (policy - ref)`` (reference-free: SimPO's
    ``beta * policy / length``): "rewards/chosen" and "rewards/rejected" (means), "margins" (mean
    chosen - rejected), "accuracy" (fraction with chosen > rejected); with a reference,
    "logps/chosen_shift" and "logps/rejected_shift", the mean log-prob change ``policy - ref`` of
    each answer (DPO lowering the chosen answer's likelihood shows as a negative chosen shift);
    "nll/chosen" when ``rpo_alpha`` is set.
    """
    per_pair = get_preference_loss(kind)
    loss = per_pair(pairs, beta, **options).mean()
    metrics: dict[str, float] = {}
    if rpo_alpha:
        nll = (-pairs.policy_chosen / pairs.chosen_len).mean()
        loss = loss + rpo_alpha * nll
        metrics["nll/chosen"] = nll.item()
    with torch.no_grad():
        if pairs.ref_chosen is None:
            chosen_rewards = beta * pairs.policy_chosen / pairs.chosen_len
            rejected_rewards = beta * pairs.policy_rejected / pairs.rejected_len
        else:
            chosen_shift = pairs.policy_chosen - pairs.ref_chosen
            rejected_shift = pairs.policy_rejected - pairs.ref_rejected
            chosen_rewards, rejected_rewards = beta * chosen_shift, beta * rejected_shift
            metrics["logps/chosen_shift"] = chosen_shift.mean().item()
            metrics["logps/rejected_shift"] = rejected_shift.mean().item()
        metrics |= {
            "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "margins": (chosen_rewards - rejected_rewards).mean().item(),
            "accuracy": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype).mean().item(),
        }
    return loss, metrics
