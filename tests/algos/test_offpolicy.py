"""Off-policy corrections on hand-computed values: the weights each one puts on a token, and metrics."""

from __future__ import annotations

import math

import pytest
import torch

from tandem.algos import OFF_POLICY_CORRECTIONS, get_off_policy_correction, get_policy_loss, is_ratio

F64 = torch.float64
LN2 = math.log(2.0)


def _logprobs():
    # Row 0: ratios pi_prox / mu of 1, 2, 4 (log 0, ln2, 2 ln2). Row 1: 1/4, 1/2, then padding.
    prox = torch.tensor([[-1.0, -1.0 + LN2, -1.0 + 2 * LN2], [-2.0 - 2 * LN2, -2.0 - LN2, 5.0]], dtype=F64)
    behaviour = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -7.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=F64)
    return prox, behaviour, mask


def test_is_ratio_per_token_and_per_sequence() -> None:
    prox, behaviour, mask = _logprobs()
    torch.testing.assert_close(
        is_ratio(prox, behaviour, mask, "token"), torch.tensor([[1, 2, 4], [0.25, 0.5, 1]], dtype=F64)
    )
    # Geometric means: (1 * 2 * 4)^(1/3) = 2 for row 0, (1/4 * 1/2)^(1/2) = 2^-1.5 for row 1.
    seq = is_ratio(prox, behaviour, mask, "sequence")
    torch.testing.assert_close(seq, torch.tensor([[2, 2, 2], [2**-1.5, 2**-1.5, 1]], dtype=F64))


def test_tis_truncates_at_the_cap() -> None:
    prox, behaviour, mask = _logprobs()
    weights, m = get_off_policy_correction("tis")(prox, behaviour, mask, cap=2.0, level="token")
    torch.testing.assert_close(weights, torch.tensor([[1, 2, 2], [0.25, 0.5, 0]], dtype=F64))
    assert m["truncated_frac"] == pytest.approx(1 / 5)  # only the 4
    assert m["is_ratio_mean"] == pytest.approx((1 + 2 + 4 + 0.25 + 0.5) / 5)
    assert m["is_ratio_max"] == pytest.approx(4.0)
    assert m["logprob_mismatch"] == pytest.approx((0 + 1 + 2 + 2 + 1) * LN2 / 5)
    # k3 = (w - 1) - log w per token.
    k3 = [(w - 1) - math.log(w) for w in (1, 2, 4, 0.25, 0.5)]
    assert m["mismatch_kl"] == pytest.approx(sum(k3) / 5)


def test_mis_masks_outside_the_band() -> None:
    prox, behaviour, mask = _logprobs()
    weights, m = get_off_policy_correction("mis")(prox, behaviour, mask, cap=2.5, level="token")
    # Band [0.4, 2.5]: 4 and 1/4 leave it.
    torch.testing.assert_close(weights, torch.tensor([[1, 2, 0], [0, 0.5, 0]], dtype=F64))
    assert m["masked_frac"] == pytest.approx(2 / 5)
    # Per sequence: row 0 (ratio 2) is kept whole, row 1 (2^-1.5 < 0.4) masked whole.
    weights, m = get_off_policy_correction("mis")(prox, behaviour, mask, cap=2.5, level="sequence")
    torch.testing.assert_close(weights, torch.tensor([[2, 2, 2], [0, 0, 0]], dtype=F64))
    assert m["masked_frac"] == pytest.approx(2 / 5)


def test_decoupled_and_none() -> None:
    prox, behaviour, mask = _logprobs()
    weights, _ = get_off_policy_correction("decoupled")(prox, behaviour, mask, cap=2.0, level="token")
    torch.testing.assert_close(weights, torch.tensor([[1, 2, 4], [0.25, 0.5, 0]], dtype=F64))
    weights, m = get_off_policy_correction("none")(prox, behaviour, mask, cap=2.0, level="token")
    torch.testing.assert_close(weights, mask)
    assert m["is_ratio_max"] == pytest.approx(4.0)  # reported even when not corrected


def test_weighted_advantages_weight_the_ppo_loss_per_token() -> None:
    # A non-negative weight on the advantage is a weight on the token's clipped term (see module doc).
    logprobs = torch.tensor([[-0.5, -1.2, -0.1]], dtype=F64)
    old = torch.tensor([[-0.7, -1.0, -0.1]], dtype=F64)
    adv = torch.tensor([[1.0, -2.0, 0.5]], dtype=F64)
    mask = torch.ones(1, 3, dtype=F64)
    w = torch.tensor([[0.5, 2.0, 0.0]], dtype=F64)
    loss, _ = get_policy_loss("ppo")(logprobs, old, adv * w, mask, 0.2)
    r = torch.exp(logprobs - old)
    per_token = torch.maximum(-adv * r, -adv * r.clamp(0.8, 1.2))
    assert loss.item() == pytest.approx((w * per_token).mean().item())


def test_unknown_correction_lists_the_valid_ones() -> None:
    assert OFF_POLICY_CORRECTIONS.names() == ["decoupled", "mis", "none", "tis"]
    with pytest.raises(KeyError, match="'decoupled', .*'tis'"):
        get_off_policy_correction("tiss")
