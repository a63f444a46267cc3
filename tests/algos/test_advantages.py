"""GAE, returns-to-go, REINFORCE++ and the group (GRPO/RLOO) advantages."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from tandem.algos import compute_gae, discounted_returns, group_advantages, reinforce_pp_returns

F64 = torch.float64


def test_gae_by_hand() -> None:
    # gamma = 0.9, lam = 0.8, so gamma * lam = 0.72.
    # Row 0, all three tokens are response: r = (0, 0, 1), V = (0.5, 0.6, 0.7).
    #   t=2: delta = 1 + 0.9 * 0 - 0.7 = 0.3                  A2 = 0.3
    #   t=1: delta = 0 + 0.9 * 0.7 - 0.6 = 0.03              A1 = 0.03 + 0.72 * 0.3 = 0.246
    #   t=0: delta = 0 + 0.9 * 0.6 - 0.5 = 0.04              A0 = 0.04 + 0.72 * 0.246 = 0.21712
    #   returns = A + V = (0.71712, 0.846, 1.0)
    # Row 1, two response tokens then padding whose reward 5 and value 9 must be ignored:
    #   t=1: delta = 1 + 0.9 * 0 - 0.6 = 0.4 (V = 0 after)  A1 = 0.4
    #   t=0: delta = 0 + 0.9 * 0.6 - 0.5 = 0.04              A0 = 0.04 + 0.72 * 0.4 = 0.328
    #   returns = (0.828, 1.0, 0)
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]], dtype=F64)
    values = torch.tensor([[0.5, 0.6, 0.7], [0.5, 0.6, 9.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(
        advantages, torch.tensor([[0.21712, 0.246, 0.3], [0.328, 0.4, 0.0]], dtype=F64)
    )
    torch.testing.assert_close(returns, torch.tensor([[0.71712, 0.846, 1.0], [0.828, 1.0, 0.0]], dtype=F64))


def test_gae_special_cases() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)
    values = torch.tensor([[0.5, 1.0, 1.5]], dtype=F64)
    mask = torch.ones(1, 3)
    # lam = 0: A_t = delta_t = r_t + V_{t+1} - V_t (gamma 1) = (1.5, 2.5, 1.5).
    advantages, _ = compute_gae(rewards, values, mask, gamma=1.0, lam=0.0)
    torch.testing.assert_close(advantages, torch.tensor([[1.5, 2.5, 1.5]], dtype=F64))
    # lam = 1, gamma 1: A_t = sum of future rewards - V_t = (6 - 0.5, 5 - 1, 3 - 1.5).
    advantages, returns = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[5.5, 4.0, 1.5]], dtype=F64))
    torch.testing.assert_close(returns, torch.tensor([[6.0, 5.0, 3.0]], dtype=F64))


def _gae_loop(rewards, values, lengths, gamma, lam):
    advantages = torch.zeros_like(rewards)
    for b, length in enumerate(lengths):
        next_advantage = 0.0
        for t in reversed(range(length)):
            next_value = values[b, t + 1].item() if t + 1 < length else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            next_advantage = delta + gamma * lam * next_advantage
            advantages[b, t] = next_advantage
    return advantages


def test_gae_matches_loop(gen: torch.Generator, ragged_mask) -> None:
    lengths = [7, 0, 1, 4, 6]
    rewards = torch.randn(5, 7, generator=gen, dtype=F64)
    values = torch.randn(5, 7, generator=gen, dtype=F64)
    mask = ragged_mask(lengths, 7)
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.95, lam=0.9)
    expected = _gae_loop(rewards, values, lengths, 0.95, 0.9)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, (expected + values) * mask)


def test_discounted_returns_by_hand() -> None:
    # gamma 0.5, r = (1, 0, 2 | pad 7): G2 = 2, G1 = 0 + 0.5 * 2 = 1, G0 = 1 + 0.5 * 1 = 1.5.
    rewards = torch.tensor([[1.0, 0.0, 2.0, 7.0]], dtype=F64)
    returns = discounted_returns(rewards, torch.tensor([[1, 1, 1, 0]]), gamma=0.5)
    torch.testing.assert_close(returns, torch.tensor([[1.5, 1.0, 2.0, 0.0]], dtype=F64))


def test_reinforce_pp_by_hand() -> None:
    # gamma 1. Returns-to-go: row 0 (1, 1, 1), row 1 (2, 2, pad).
    # Kept 1, 1, 1, 2, 2: mean 1.4; unbiased var (3 * 0.16 + 2 * 0.36) / 4 = 0.3.
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 4.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = reinforce_pp_returns(rewards, mask, gamma=1.0)
    torch.testing.assert_close(returns, torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 0.0]], dtype=F64))
    low, high = -0.4 / math.sqrt(0.3 + 1e-8), 0.6 / math.sqrt(0.3 + 1e-8)
    torch.testing.assert_close(advantages, torch.tensor([[low, low, low], [high, high, 0.0]], dtype=F64))


def test_reinforce_pp_matches_loop(gen: torch.Generator, ragged_mask) -> None:
    lengths = [5, 2, 0, 3]
    rewards = torch.randn(4, 5, generator=gen, dtype=F64)
    mask = ragged_mask(lengths, 5)
    returns = torch.zeros_like(rewards)
    for b, length in enumerate(lengths):
        running = 0.0
        for t in reversed(range(length)):
            running = rewards[b, t].item() + 0.9 * running
            returns[b, t] = running
    kept = [returns[b, t].item() for b, length in enumerate(lengths) for t in range(length)]
    mean, var = statistics.mean(kept), statistics.variance(kept)
    expected = ((returns - mean) / math.sqrt(var + 1e-8)) * mask
    advantages, got_returns = reinforce_pp_returns(rewards, mask, gamma=0.9)
    torch.testing.assert_close(got_returns, returns)
    torch.testing.assert_close(advantages, expected)


def test_group_advantages_by_hand() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0, 5.0, 5.0, 5.0], dtype=F64)
    # GRPO. Group (1, 2, 3): mean 2, unbiased std 1 -> (-1, 0, 1) / (1 + 1e-6).
    # Group (0, 0, 6): mean 2, unbiased var (4 + 4 + 16) / 2 = 12 -> (-2, -2, 4) / (sqrt 12 + 1e-6).
    # Group (5, 5, 5): std 0 -> all 0.
    s12 = math.sqrt(12.0) + 1e-6
    expected_grpo = [-1 / (1 + 1e-6), 0.0, 1 / (1 + 1e-6), -2 / s12, -2 / s12, 4 / s12, 0.0, 0.0, 0.0]
    torch.testing.assert_close(group_advantages(scores, 3, "grpo"), torch.tensor(expected_grpo, dtype=F64))
    # RLOO, score minus the mean of the other two:
    # 1 - 2.5, 2 - 2, 3 - 1.5 | 0 - 3, 0 - 3, 6 - 0 | 5 - 5 (x3).
    expected_rloo = [-1.5, 0.0, 1.5, -3.0, -3.0, 6.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(group_advantages(scores, 3, "rloo"), torch.tensor(expected_rloo, dtype=F64))


def test_group_advantages_match_loop(gen: torch.Generator) -> None:
    scores = torch.randn(12, generator=gen, dtype=F64)
    expected_grpo, expected_rloo = [], []
    for start in range(0, 12, 4):
        group = scores[start : start + 4].tolist()
        mean, std = statistics.mean(group), statistics.stdev(group)
        for i, score in enumerate(group):
            expected_grpo.append((score - mean) / (std + 1e-6))
            expected_rloo.append(score - statistics.mean(group[:i] + group[i + 1 :]))
    torch.testing.assert_close(group_advantages(scores, 4, "grpo"), torch.tensor(expected_grpo, dtype=F64))
    torch.testing.assert_close(group_advantages(scores, 4, "rloo"), torch.tensor(expected_rloo, dtype=F64))


def test_group_advantages_reject_bad_groups() -> None:
    with pytest.raises(ValueError, match=r"7 scores and group_size 3"):
        group_advantages(torch.zeros(7), 3, "grpo")
    with pytest.raises(ValueError, match="group_size 1"):
        group_advantages(torch.zeros(4), 1, "rloo")
    with pytest.raises(KeyError, match=r"\['grpo', 'rloo'\]"):
        group_advantages(torch.zeros(4), 2, "ppo")
