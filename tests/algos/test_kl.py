"""KL estimators k1/k2/k3 and the KL-shaped token rewards."""

from __future__ import annotations

import math

import pytest
import torch

from tandem.algos import kl_estimate, shape_rewards

F64 = torch.float64


def test_kl_estimators_by_hand() -> None:
    # pi = 0.5, pi_ref = 0.25 on the sampled token, so log pi - log pi_ref = ln 2.
    #   k1 = ln 2 = 0.693147
    #   k2 = (ln 2)^2 / 2 = 0.240227
    #   k3 = pi_ref / pi - 1 - ln(pi_ref / pi) = 0.5 - 1 + ln 2 = 0.193147
    # Second token: pi = pi_ref, so every estimator is 0.
    logprobs = torch.tensor([[math.log(0.5), -1.3]], dtype=F64)
    ref_logprobs = torch.tensor([[math.log(0.25), -1.3]], dtype=F64)
    ln2 = math.log(2.0)
    expected = {"k1": ln2, "k2": 0.5 * ln2**2, "k3": ln2 - 0.5}
    for kind, value in expected.items():
        got = kl_estimate(logprobs, ref_logprobs, kind)
        torch.testing.assert_close(got, torch.tensor([[value, 0.0]], dtype=F64), msg=kind)
    assert expected["k3"] == pytest.approx(0.193147, abs=1e-6)


def test_k1_and_k3_are_unbiased_for_exact_kl() -> None:
    # Weighting by pi the estimate on every outcome gives its expectation exactly.
    p = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    q = torch.tensor([0.4, 0.4, 0.2], dtype=F64)
    exact_kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist(), strict=True))
    for kind in ("k1", "k3"):
        expectation = (p * kl_estimate(p.log(), q.log(), kind)).sum().item()
        assert expectation == pytest.approx(exact_kl), kind


def test_kl_estimators_match_loop(gen: torch.Generator) -> None:
    logprobs = -torch.rand(3, 4, generator=gen, dtype=F64) * 3
    ref_logprobs = -torch.rand(3, 4, generator=gen, dtype=F64) * 3
    loops = {
        "k1": lambda lp, ref: lp - ref,
        "k2": lambda lp, ref: 0.5 * (lp - ref) ** 2,
        "k3": lambda lp, ref: math.exp(ref - lp) - 1 - (ref - lp),
    }
    for kind, loop in loops.items():
        expected = torch.tensor(
            [
                [loop(a, b) for a, b in zip(row, ref_row, strict=True)]
                for row, ref_row in zip(logprobs.tolist(), ref_logprobs.tolist(), strict=True)
            ],
            dtype=F64,
        )
        torch.testing.assert_close(kl_estimate(logprobs, ref_logprobs, kind), expected, msg=kind)


def test_unknown_kl_estimator_lists_names() -> None:
    with pytest.raises(KeyError, match=r"\['k1', 'k2', 'k3'\]"):
        kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


def test_shape_rewards_by_hand() -> None:
    # kl_coef 0.5. Row 0: -0.5 * (0.1, 0.2, 0.3) = (-0.05, -0.1, -0.15), score 1 on the last token.
    # Row 1: two response tokens, -0.5 * (0.4, 0.5) = (-0.2, -0.25), score 2 on token 1; pad KL 9.
    scores = torch.tensor([1.0, 2.0], dtype=F64)
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    expected = torch.tensor([[-0.05, -0.1, 0.85], [-0.2, 1.75, 0.0]], dtype=F64)
    torch.testing.assert_close(shape_rewards(scores, kl, mask, kl_coef=0.5), expected)


def test_shape_rewards_matches_loop(gen: torch.Generator, ragged_mask) -> None:
    lengths = [4, 0, 1, 3]
    scores = torch.randn(4, generator=gen, dtype=F64)
    kl = torch.randn(4, 4, generator=gen, dtype=F64)
    mask = ragged_mask(lengths, 4)
    expected = torch.zeros(4, 4, dtype=F64)
    for b, length in enumerate(lengths):
        for t in range(length):
            expected[b, t] = -0.1 * kl[b, t] + (scores[b] if t == length - 1 else 0.0)
    torch.testing.assert_close(shape_rewards(scores, kl, mask, kl_coef=0.1), expected)
