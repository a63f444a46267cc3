"""Masked reductions, whitening, explained variance, entropy and log-probs from logits."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from tandem.algos import (
    entropy_from_logits,
    explained_variance,
    logprobs_and_entropy,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

F64 = torch.float64


def test_masked_sum_and_mean_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # Kept: 1, 2 | 4. Padding holds nan/inf, which must not leak.
    assert masked_sum(x, mask).item() == 7.0
    assert masked_mean(x, mask).item() == pytest.approx(7.0 / 3.0)
    assert masked_mean(x, mask, dim=1).tolist() == [1.5, 4.0]
    assert masked_sum(x, mask, dim=0).tolist() == [5.0, 2.0, 0.0]


def test_masked_mean_of_empty_mask_is_zero() -> None:
    x = torch.ones(2, 3, dtype=F64)
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0


def test_masked_mean_gradient_skips_padding() -> None:
    x = torch.tensor([1.0, 2.0, 3.0], dtype=F64, requires_grad=True)
    masked_mean(x, torch.tensor([1, 1, 0])).backward()
    assert x.grad.tolist() == [0.5, 0.5, 0.0]


def test_masked_var_and_whiten_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]], dtype=F64)
    mask = torch.tensor([[1, 1], [1, 0]])
    # Kept 1, 2, 3: mean 2, unbiased var ((-1)^2 + 0 + 1^2) / (3 - 1) = 1, biased 2/3.
    assert masked_var(x, mask).item() == pytest.approx(1.0)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(2.0 / 3.0)
    scale = 1.0 / math.sqrt(1.0 + 1e-8)
    whitened = masked_whiten(x, mask)
    torch.testing.assert_close(whitened, torch.tensor([[-scale, 0.0], [scale, 0.0]], dtype=F64))
    kept_scale = masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(kept_scale, torch.tensor([[2 - scale, 2.0], [2 + scale, 0.0]], dtype=F64))


def test_masked_whiten_matches_loop(gen: torch.Generator, ragged_mask) -> None:
    x = torch.randn(4, 6, generator=gen, dtype=F64) * 3 + 1
    mask = ragged_mask([6, 0, 2, 4], 6)
    kept = [x[b, t].item() for b in range(4) for t in range(6) if mask[b, t]]
    mean, std = statistics.mean(kept), statistics.stdev(kept)
    expected = torch.zeros_like(x)
    for b in range(4):
        for t in range(6):
            if mask[b, t]:
                expected[b, t] = (x[b, t] - mean) / math.sqrt(std**2 + 1e-8)
    torch.testing.assert_close(masked_whiten(x, mask), expected)


def test_masked_var_needs_two_entries() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(torch.tensor([1.0, 2.0]), torch.tensor([1, 0]))


def test_explained_variance_by_hand() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 9.0]], dtype=F64)
    returns = torch.tensor([[1.0, 2.0, 4.0, -9.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0]])
    # R - V = (0, 0, 1): var 1/3 - 1/9 = 2/9. R = (1, 2, 4): var 7 - 49/9 = 14/9. EV = 1 - 1/7.
    assert explained_variance(values, returns, mask).item() == pytest.approx(6.0 / 7.0)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert math.isnan(explained_variance(values, torch.ones_like(returns), mask).item())


def test_entropy_by_hand() -> None:
    # softmax(0, ln 3) = (1/4, 3/4); uniform over 4 has entropy ln 4.
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 5.0]]], dtype=F64)
    expected = [-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2.0)]
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([expected], dtype=F64))
    assert entropy_from_logits(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4.0))


def test_entropy_is_finite_for_extreme_logits() -> None:
    logits = torch.tensor([[[1e4, -1e4, 0.0], [1e4, 1e4, -1e4]]])
    entropy = entropy_from_logits(logits)
    assert torch.isfinite(entropy).all()
    torch.testing.assert_close(entropy, torch.tensor([[0.0, math.log(2.0)]]))


def test_entropy_matches_loop(gen: torch.Generator) -> None:
    logits = torch.randn(2, 3, 5, generator=gen, dtype=F64) * 4
    expected = torch.zeros(2, 3, dtype=F64)
    for b in range(2):
        for t in range(3):
            probs = [math.exp(z) for z in logits[b, t].tolist()]
            total = sum(probs)
            expected[b, t] = -sum(p / total * math.log(p / total) for p in probs)
    torch.testing.assert_close(entropy_from_logits(logits), expected)


@pytest.mark.parametrize("entropy_grad", [True, False])
def test_logprobs_and_entropy_of_half_precision_share_one_pass(
    gen: torch.Generator, entropy_grad: bool
) -> None:
    """bf16 logits: the same logprobs as logprobs_from_logits (the same ops), the same entropies as
    entropy_from_logits up to float32 rounding, gradients through the entropy only when asked."""
    logits = (torch.randn(3, 4, 7, generator=gen) * 3).bfloat16().requires_grad_()
    labels = torch.randint(0, 7, (3, 4), generator=gen)
    logprobs, entropy = logprobs_and_entropy(logits, labels, entropy_grad=entropy_grad)
    assert torch.equal(logprobs, logprobs_from_logits(logits, labels))
    torch.testing.assert_close(entropy, entropy_from_logits(logits.detach().float()))
    assert logprobs.requires_grad and entropy.requires_grad == entropy_grad


def test_logprobs_and_entropy_of_float32_are_the_two_functions(gen: torch.Generator) -> None:
    logits = torch.randn(2, 3, 5, generator=gen)
    logits[0, 0, 1] = -math.inf  # a masked token: no nan
    labels = torch.tensor([[0, 1, 2], [3, 4, 0]])
    logprobs, entropy = logprobs_and_entropy(logits, labels)
    assert torch.equal(logprobs, logprobs_from_logits(logits, labels))
    assert torch.equal(entropy, entropy_from_logits(logits)) and torch.isfinite(entropy).all()
    _, half_entropy = logprobs_and_entropy(logits.bfloat16(), labels)
    assert torch.isfinite(half_entropy).all()


def test_logprobs_by_hand() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]], dtype=F64)
    labels = torch.tensor([[1, 0]])
    expected = torch.tensor([[math.log(0.75), math.log(0.25)]], dtype=F64)
    torch.testing.assert_close(logprobs_from_logits(logits, labels), expected)


def test_logprobs_match_loop_in_every_dtype(gen: torch.Generator) -> None:
    logits = torch.randn(3, 4, 7, generator=gen) * 5
    labels = torch.randint(0, 7, (3, 4), generator=gen)
    expected = torch.zeros(3, 4)
    for b in range(3):
        for t in range(4):
            row = logits[b, t].double()
            expected[b, t] = row[labels[b, t]] - torch.log(torch.exp(row).sum())
    torch.testing.assert_close(logprobs_from_logits(logits, labels), expected)
    from_bf16 = logprobs_from_logits(logits.bfloat16(), labels)
    assert from_bf16.dtype == torch.float32
    torch.testing.assert_close(from_bf16, expected, atol=0.15, rtol=0.02)
