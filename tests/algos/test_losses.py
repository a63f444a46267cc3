"""PPO policy and value losses, Bradley-Terry, and the preference losses (DPO, DPOP, R-DPO, IPO, SimPO, RPO)."""

from __future__ import annotations

import math

import pytest
import torch

from tandem.algos import (
    PairLogps,
    bradley_terry_loss,
    get_preference_loss,
    policy_loss,
    preference_loss,
    value_loss,
)

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


def _preference_case(reference: bool = True) -> PairLogps:
    # Pair 0: chosen log-ratio -1 - (-2) = 1, rejected -3 - (-2) = -1, h = 2; lengths 2 and 1.
    # Pair 1: chosen log-ratio -2 - (-1) = -1, rejected -2 - (-2) = 0, h = -1; lengths 4 and 2.
    return PairLogps(
        policy_chosen=torch.tensor([-1.0, -2.0], dtype=F64),
        policy_rejected=torch.tensor([-3.0, -2.0], dtype=F64),
        ref_chosen=torch.tensor([-2.0, -1.0], dtype=F64) if reference else None,
        ref_rejected=torch.tensor([-2.0, -2.0], dtype=F64) if reference else None,
        chosen_len=torch.tensor([2.0, 4.0], dtype=F64),
        rejected_len=torch.tensor([1.0, 2.0], dtype=F64),
    )


def test_dpo_by_hand() -> None:
    # beta 0.1: -log sigmoid(0.2) = ln(1 + e^-0.2) = 0.598139, -log sigmoid(-0.1) = ln(1 + e^0.1) = 0.744397.
    loss, metrics = preference_loss(_preference_case(), beta=0.1)
    assert loss.item() == pytest.approx((0.598139 + 0.744397) / 2, abs=1e-6)
    # Implicit rewards: chosen (0.1, -0.1), rejected (-0.1, 0); margins (0.2, -0.1).
    assert metrics["rewards/chosen"] == pytest.approx(0.0)
    assert metrics["rewards/rejected"] == pytest.approx(-0.05)
    assert metrics["margins"] == pytest.approx(0.05)
    assert metrics["accuracy"] == 0.5
    # Log-prob changes: chosen (1, -1), rejected (-1, 0).
    assert metrics["logps/chosen_shift"] == pytest.approx(0.0)
    assert metrics["logps/rejected_shift"] == pytest.approx(-0.5)
    assert "nll/chosen" not in metrics


def test_ipo_by_hand() -> None:
    # beta 0.1, 1 / (2 beta) = 5: (2 - 5)^2 = 9, (-1 - 5)^2 = 36, mean 22.5.
    loss, metrics = preference_loss(_preference_case(), beta=0.1, kind="ipo")
    assert loss.item() == pytest.approx(22.5)
    assert metrics["margins"] == pytest.approx(0.05)


def test_dpop_by_hand() -> None:
    # lambda 5: pair 0's chosen is above the reference (rc - pc = -1): no penalty, z = 0.2.
    # Pair 1's chosen fell 1 below it: h = -1 - 5 * 1 = -6, z = -0.6; ln(1 + e^0.6) = 1.037488.
    loss, _ = preference_loss(_preference_case(), beta=0.1, dpop_lambda=5.0)
    assert loss.item() == pytest.approx((0.598139 + 1.037488) / 2, abs=1e-6)


def test_dpop_pushes_a_fallen_chosen_answer_up_harder() -> None:
    # d loss / d pc of pair 1 (mean over 2 pairs) = -sigmoid(-z) * dz/dpc / 2:
    # DPO z = -0.1, dz/dpc = beta = 0.1; DPOP z = -0.6, dz/dpc = beta * (1 + lambda) = 0.6.
    grads = []
    for dpop_lambda in (0.0, 5.0):
        pairs = _preference_case()
        pairs = pairs._replace(policy_chosen=pairs.policy_chosen.clone().requires_grad_())
        preference_loss(pairs, beta=0.1, dpop_lambda=dpop_lambda)[0].backward()
        grads.append(pairs.policy_chosen.grad[1].item())
    sigmoid = lambda x: 1 / (1 + math.exp(-x))
    assert grads[0] == pytest.approx(-sigmoid(0.1) * 0.1 / 2)
    assert grads[1] == pytest.approx(-sigmoid(0.6) * 0.6 / 2)


def test_rdpo_by_hand() -> None:
    # alpha 0.05, length differences (2 - 1, 4 - 2) = (1, 2): z = 0.2 + 0.05 = 0.25 and -0.1 + 0.1 = 0.
    # ln(1 + e^-0.25) = 0.575939, -log sigmoid(0) = ln 2.
    loss, _ = preference_loss(_preference_case(), beta=0.1, length_alpha=0.05)
    assert loss.item() == pytest.approx((0.575939 + math.log(2)) / 2, abs=1e-6)


def test_simpo_by_hand_without_a_reference() -> None:
    # beta 2, gamma 0.5. Per-token log-likelihoods: chosen (-1/2, -2/4), rejected (-3/1, -2/2).
    # z = 2 * (-0.5 + 3) - 0.5 = 4.5 and 2 * (-0.5 + 1) - 0.5 = 0.5;
    # ln(1 + e^-4.5) = 0.011048, ln(1 + e^-0.5) = 0.474077.
    loss, metrics = preference_loss(
        _preference_case(reference=False), beta=2.0, kind="simpo", simpo_gamma=0.5
    )
    assert loss.item() == pytest.approx((0.011048 + 0.474077) / 2, abs=1e-6)
    # SimPO's rewards beta * logp / length: chosen (-1, -1), rejected (-6, -2).
    assert metrics["rewards/chosen"] == pytest.approx(-1.0)
    assert metrics["rewards/rejected"] == pytest.approx(-4.0)
    assert metrics["margins"] == pytest.approx(3.0)
    assert metrics["accuracy"] == 1.0
    assert "logps/chosen_shift" not in metrics


def test_rpo_adds_the_chosen_answers_nll_per_token() -> None:
    # NLL per token of the chosen answers: (1/2 + 2/4) / 2 = 0.5; alpha 2 adds 1.0 to DPO's loss.
    dpo, _ = preference_loss(_preference_case(), beta=0.1)
    rpo, metrics = preference_loss(_preference_case(), beta=0.1, rpo_alpha=2.0)
    assert rpo.item() == pytest.approx(dpo.item() + 1.0)
    assert metrics["nll/chosen"] == pytest.approx(0.5)


def test_preference_losses_match_loop(gen: torch.Generator) -> None:
    logps = [-torch.rand(6, generator=gen, dtype=F64) * 10 for _ in range(4)]
    lengths = [torch.randint(1, 9, (6,), generator=gen).to(F64) for _ in range(2)]
    pairs = PairLogps(*logps, *lengths)
    beta, alpha, lam, gamma = 0.3, 0.02, 2.0, 0.4
    terms = []
    for pc, pr, rc, rr, lc, lr in zip(*(t.tolist() for t in pairs), strict=True):
        h = (pc - rc) - (pr - rr)
        dpo = math.log1p(math.exp(-(beta * (h - lam * max(0.0, rc - pc)) + alpha * (lc - lr))))
        simpo = math.log1p(math.exp(-(beta * (pc / lc - pr / lr) - gamma)))
        terms.append((dpo, (h - 1 / (2 * beta)) ** 2, simpo))
    means = [sum(column) / 6 for column in zip(*terms, strict=True)]
    dpo, _ = preference_loss(pairs, beta=beta, length_alpha=alpha, dpop_lambda=lam)
    ipo, _ = preference_loss(pairs, beta=beta, kind="ipo")
    simpo, _ = preference_loss(pairs, beta=beta, kind="simpo", simpo_gamma=gamma)
    assert [dpo.item(), ipo.item(), simpo.item()] == pytest.approx(means)


def test_preference_losses_declare_options_and_reference() -> None:
    assert get_preference_loss("dpo").options == {"length_alpha", "dpop_lambda"}
    assert get_preference_loss("simpo").options == {"simpo_gamma"}
    assert get_preference_loss("ipo").options == frozenset()
    assert [get_preference_loss(k).needs_reference for k in ("dpo", "ipo", "simpo")] == [True, True, False]


def test_unknown_preference_loss_lists_names() -> None:
    with pytest.raises(KeyError, match=r"\['dpo', 'ipo', 'simpo'\]"):
        preference_loss(_preference_case(), beta=0.1, kind="kto")
