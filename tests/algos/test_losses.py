"""PPO policy and value losses, Bradley-Terry, DPO and IPO."""

from __future__ import annotations

import math

import pytest
import torch

from tandem.algos import bradley_terry_loss, dpo_loss, policy_loss, value_loss

F64 = torch.float64


def _policy_case() -> tuple[torch.Tensor, ...]:
    # clip_eps 0.2, four real tokens and one padding token with a wild ratio:
    #   r = 1.5, A = +1: -A r = -1.5, clipped -1.2 -> max -1.2 (clipped side)
    #   r = 0.5, A = +1: -0.5 vs -0.8               -> -0.5 (unclipped)
    #   r = 0.5, A = -1:  0.5 vs  0.8               ->  0.8 (clipped side)
    #   r = 1.0, A = +2: -2 vs -2                   -> -2   (equal, not counted as clipped)
    # loss = (-1.2 - 0.5 + 0.8 - 2) / 4 = -0.725, clip_frac 2/4, ratio_mean 3.5/4.
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.0, 50.0]], dtype=F64)
    old_logprobs = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -4.0]], dtype=F64)
    logprobs = (old_logprobs + ratios.log()).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0, 2.0, 100.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    return logprobs, old_logprobs, advantages, mask


def test_policy_loss_by_hand() -> None:
    logprobs, old_logprobs, advantages, mask = _policy_case()
    loss, metrics = policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-0.725)
    assert metrics["clip_frac"] == pytest.approx(0.5)
    assert metrics["ratio_mean"] == pytest.approx(0.875)
    # k3 per token, (r - 1) - ln r: 0.5 - ln 1.5, twice (-0.5 + ln 2), and 0.
    approx_kl = ((0.5 - math.log(1.5)) + 2 * (-0.5 + math.log(2.0))) / 4
    assert metrics["approx_kl"] == pytest.approx(approx_kl)
    assert all(isinstance(value, float) for value in metrics.values())


def test_policy_loss_gradient_is_zero_where_clipped() -> None:
    logprobs, old_logprobs, advantages, mask = _policy_case()
    loss, _ = policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2)
    loss.backward()
    # d(-A r)/d log pi = -A r, over 4 tokens: unclipped tokens 1 and 3 give -0.5/4 and -2/4.
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -0.125, 0.0, -0.5, 0.0]], dtype=F64))


def test_policy_loss_matches_loop(gen: torch.Generator, ragged_mask) -> None:
    lengths = [5, 2, 0, 4]
    logprobs = -torch.rand(4, 5, generator=gen, dtype=F64)
    old_logprobs = logprobs + 0.4 * torch.randn(4, 5, generator=gen, dtype=F64)
    advantages = torch.randn(4, 5, generator=gen, dtype=F64)
    mask = ragged_mask(lengths, 5)
    terms, clipped, eps = [], 0, 0.1
    for b, length in enumerate(lengths):
        for t in range(length):
            ratio = math.exp(logprobs[b, t].item() - old_logprobs[b, t].item())
            adv = advantages[b, t].item()
            unclipped_term, clipped_term = -adv * ratio, -adv * min(max(ratio, 1 - eps), 1 + eps)
            terms.append(max(unclipped_term, clipped_term))
            clipped += clipped_term > unclipped_term
    loss, metrics = policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps=eps)
    assert loss.item() == pytest.approx(sum(terms) / len(terms))
    assert metrics["clip_frac"] == pytest.approx(clipped / len(terms))
    assert 0 < metrics["clip_frac"] < 1


def test_value_loss_by_hand_both_branches() -> None:
    # clip_eps 0.2, V_old = 1 everywhere, so clip(V) lies in [0.8, 1.2].
    #   V 1.5, R 2: (V-R)^2 = 0.25, clipped (1.2-2)^2 = 0.64 -> 0.64 (clipped branch)
    #   V 1.1, R 0: 1.21, inside the range, same            -> 1.21
    #   V 1.5, R 0: 2.25, clipped (1.2)^2 = 1.44            -> 2.25 (unclipped branch)
    #   V 0.5, R 0: 0.25, clipped (0.8)^2 = 0.64            -> 0.64 (clipped branch)
    # loss = 0.5 * (0.64 + 1.21 + 2.25 + 0.64) / 4 = 0.5925, value_clip_frac 2/4.
    values = torch.tensor([[1.5, 1.1, 1.5, 0.5, 7.0]], dtype=F64, requires_grad=True)
    old_values = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]], dtype=F64)
    returns = torch.tensor([[2.0, 0.0, 0.0, 0.0, -9.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, metrics = value_loss(values, old_values, returns, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.5925)
    assert metrics == {"value_clip_frac": pytest.approx(0.5)}
    loss.backward()
    # Only tokens on an unclipped branch get a gradient, 0.5 * 2 (V - R) / 4.
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 0.275, 0.375, 0.0, 0.0]], dtype=F64))


def test_value_loss_matches_loop(gen: torch.Generator, ragged_mask) -> None:
    lengths = [3, 6, 1]
    values = torch.randn(3, 6, generator=gen, dtype=F64)
    old_values = values + 0.3 * torch.randn(3, 6, generator=gen, dtype=F64)
    returns = torch.randn(3, 6, generator=gen, dtype=F64)
    mask = ragged_mask(lengths, 6)
    terms = []
    for b, length in enumerate(lengths):
        for t in range(length):
            v, old, r = values[b, t].item(), old_values[b, t].item(), returns[b, t].item()
            clipped = min(max(v, old - 0.2), old + 0.2)
            terms.append(max((v - r) ** 2, (clipped - r) ** 2))
    loss, _ = value_loss(values, old_values, returns, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.5 * sum(terms) / len(terms))


def test_bradley_terry_by_hand() -> None:
    # Margins (1, -1): -log sigmoid(1) = ln(1 + e^-1) = 0.313262, -log sigmoid(-1) = ln(1 + e) = 1.313262.
    loss, metrics = bradley_terry_loss(
        torch.tensor([2.0, 0.0], dtype=F64), torch.tensor([1.0, 1.0], dtype=F64)
    )
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.e)) / 2)
    assert loss.item() == pytest.approx(0.813262, abs=1e-6)
    assert metrics == {"accuracy": 0.5, "margin": 0.0}


def test_bradley_terry_is_stable_for_large_margins() -> None:
    loss, metrics = bradley_terry_loss(torch.tensor([-1000.0]), torch.tensor([0.0]))
    assert loss.item() == pytest.approx(1000.0)
    assert metrics["accuracy"] == 0.0


def _preference_case() -> tuple[torch.Tensor, ...]:
    # Pair 0: chosen log-ratio -1 - (-2) = 1, rejected -3 - (-2) = -1, h = 2.
    # Pair 1: chosen log-ratio -2 - (-1) = -1, rejected -2 - (-2) = 0, h = -1.
    policy_chosen = torch.tensor([-1.0, -2.0], dtype=F64)
    policy_rejected = torch.tensor([-3.0, -2.0], dtype=F64)
    ref_chosen = torch.tensor([-2.0, -1.0], dtype=F64)
    ref_rejected = torch.tensor([-2.0, -2.0], dtype=F64)
    return policy_chosen, policy_rejected, ref_chosen, ref_rejected


def test_dpo_by_hand() -> None:
    # beta 0.1: -log sigmoid(0.2) = ln(1 + e^-0.2) = 0.598139, -log sigmoid(-0.1) = ln(1 + e^0.1) = 0.744397.
    loss, metrics = dpo_loss(*_preference_case(), beta=0.1)
    assert loss.item() == pytest.approx((0.598139 + 0.744397) / 2, abs=1e-6)
    # Implicit rewards: chosen (0.1, -0.1), rejected (-0.1, 0); margins (0.2, -0.1).
    assert metrics.keys() == {"rewards/chosen", "rewards/rejected", "margins", "accuracy"}
    assert metrics["rewards/chosen"] == pytest.approx(0.0)
    assert metrics["rewards/rejected"] == pytest.approx(-0.05)
    assert metrics["margins"] == pytest.approx(0.05)
    assert metrics["accuracy"] == 0.5


def test_ipo_by_hand() -> None:
    # beta 0.1, 1 / (2 beta) = 5: (2 - 5)^2 = 9, (-1 - 5)^2 = 36, mean 22.5.
    loss, metrics = dpo_loss(*_preference_case(), beta=0.1, kind="ipo")
    assert loss.item() == pytest.approx(22.5)
    assert metrics["margins"] == pytest.approx(0.05)


def test_dpo_and_ipo_match_loop(gen: torch.Generator) -> None:
    logps = [-torch.rand(6, generator=gen, dtype=F64) * 10 for _ in range(4)]
    beta = 0.3
    hs = [(pc - rc) - (pr - rr) for pc, pr, rc, rr in zip(*(t.tolist() for t in logps), strict=True)]
    dpo, _ = dpo_loss(*logps, beta=beta)
    ipo, _ = dpo_loss(*logps, beta=beta, kind="ipo")
    assert dpo.item() == pytest.approx(sum(math.log1p(math.exp(-beta * h)) for h in hs) / 6)
    assert ipo.item() == pytest.approx(sum((h - 1 / (2 * beta)) ** 2 for h in hs) / 6)


def test_unknown_preference_loss_lists_names() -> None:
    with pytest.raises(KeyError, match=r"\['dpo', 'ipo'\]"):
        dpo_loss(*_preference_case(), beta=0.1, kind="kto")
