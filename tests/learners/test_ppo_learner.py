"""The PPO policy learner's loss and metrics on a real batch, without DeepSpeed (a plain module stands
in for the engine)."""

from __future__ import annotations

import math

import pytest
import torch

from tandem.config import LearnerConfig
from tandem.learners.ppo import PolicyLearner
from tandem.models.rows import Rows

EXAMPLES = [
    {"prompt_ids": [2, 6, 40, 41], "response_ids": [50, 51, 3], "advantages": [1.0, -0.5, 2.0]},
    {"prompt_ids": [2, 6], "response_ids": [52, 3], "advantages": [0.5, 0.5]},
]


@torch.no_grad()
def _old_logprobs_and_entropy(model) -> tuple[list[list[float]], float]:
    """pi_old = the current model, one unpadded sequence at a time; token mean entropy of responses."""
    logprobs, entropies = [], []
    for e in EXAMPLES:
        ids = torch.tensor([e["prompt_ids"] + e["response_ids"]])
        logp = model(ids).logits.float().log_softmax(-1)[0]
        positions = range(len(e["prompt_ids"]) - 1, ids.shape[1] - 1)  # position t predicts token t+1
        logprobs.append([logp[t, ids[0, t + 1]].item() for t in positions])
        entropies += [-(logp[t].exp() * logp[t]).sum().item() for t in positions]
    return logprobs, sum(entropies) / len(entropies)


def _rows(per_token: dict[str, list[list[float]]]) -> Rows:
    from tandem.recipes.ppo_batch import pad_right

    return Rows.from_ids(
        [e["prompt_ids"] for e in EXAMPLES],
        [e["response_ids"] for e in EXAMPLES],
        0,
        advantages=pad_right([e["advantages"] for e in EXAMPLES]),
        **{k: pad_right(v) for k, v in per_token.items()},
    )


def _learner(**kwargs) -> PolicyLearner:
    from tandem.models import load_causal_lm

    torch.manual_seed(0)
    model = load_causal_lm("tiny-qwen2").eval()
    learner = PolicyLearner(LearnerConfig(), "tiny-qwen2", total_steps=1, **kwargs)
    learner.engine, learner.model, learner.pad_id = model, model, 0
    return learner


@torch.no_grad()
def test_pg_loss_is_the_surrogate_alone_and_the_loss_adds_the_entropy_bonus():
    learner = _learner(entropy_coef=0.1)
    old, entropy = _old_logprobs_and_entropy(learner.model)
    for given in ({"old_logprobs": old}, {}):  # pi_old given, or taken from the training forward
        rows = _rows({"behaviour_logprobs": old, **given})
        loss, units, metrics = learner.compute_loss(learner.collate(rows))
        # pi == pi_old: every ratio is 1 and nothing is clipped, so the surrogate is minus the token
        # mean advantage, (1 - 0.5 + 2 + 0.5 + 0.5) / 5 = 0.7.
        assert units == 5 == learner.count_units(rows)
        assert metrics["actor/pg_loss"] == pytest.approx(-0.7, abs=1e-6)
        assert metrics["actor/clip_frac"] == 0.0 and metrics["actor/ratio_mean"] == pytest.approx(1.0)
        assert metrics["actor/entropy"] == pytest.approx(entropy, rel=1e-5)
        assert loss.item() == pytest.approx(-0.7 - 0.1 * entropy, rel=1e-5)
        assert metrics["offpolicy/is_ratio_mean"] == pytest.approx(1.0, abs=1e-5)


@torch.no_grad()
def test_importance_weights_scale_the_surrogate_per_token():
    # The engine drew every token with half the probability pi_old gives it: ratio pi_old / mu = 2.
    learner = _learner(off_policy="tis", is_cap=1.5)
    old, _ = _old_logprobs_and_entropy(learner.model)
    behaviour = [[lp - math.log(2.0) for lp in row] for row in old]
    _, _, metrics = learner.compute_loss(_rows({"behaviour_logprobs": behaviour}))
    assert metrics["actor/pg_loss"] == pytest.approx(-0.7 * 1.5, abs=1e-5)  # truncated at 1.5
    assert metrics["offpolicy/truncated_frac"] == 1.0
    assert metrics["offpolicy/is_ratio_max"] == pytest.approx(2.0, rel=1e-5)
    assert metrics["offpolicy/logprob_mismatch"] == pytest.approx(math.log(2.0), rel=1e-5)
    learner = _learner(off_policy="mis", is_cap=1.5)
    _, _, metrics = learner.compute_loss(_rows({"behaviour_logprobs": behaviour}))
    assert metrics["actor/pg_loss"] == 0.0 and metrics["offpolicy/masked_frac"] == 1.0


def test_policy_loss_is_looked_up_by_name():
    with pytest.raises(KeyError, match=r"unknown policy loss 'sppo'; valid names: \['ppo'\]"):
        PolicyLearner(LearnerConfig(), "tiny-qwen2", total_steps=1, policy_loss="sppo")


def test_a_micro_batch_in_groups_of_like_length_has_the_loss_and_gradient_of_one_forward():
    def loss_and_grads(min_forward_tokens: int) -> tuple[float, dict[str, float], list[torch.Tensor]]:
        learner = _learner(off_policy="tis", is_cap=1.15)
        learner.cfg = LearnerConfig(min_forward_tokens=min_forward_tokens)
        old, _ = _old_logprobs_and_entropy(learner.model)
        # IS weights exp(0.1), exp(0.2) (truncated at 1.15), ...: a wrong weighting of the groups shows.
        behaviour = [[lp - 0.1 * (i + 1) for i, lp in enumerate(row)] for row in old]
        assert len(learner._groups(_rows({}))) == (2 if min_forward_tokens == 1 else 1)
        loss, units, metrics = learner.compute_loss(_rows({"behaviour_logprobs": behaviour}))
        loss.backward()
        assert units == 5
        return loss.item(), metrics, [p.grad.clone() for p in learner.model.parameters()]

    one_loss, one_metrics, one_grads = loss_and_grads(10_000)
    loss, metrics, grads = loss_and_grads(1)  # each row its own forward
    assert loss == pytest.approx(one_loss, rel=1e-5)
    assert metrics == pytest.approx(one_metrics, rel=1e-5)
    for g, one in zip(grads, one_grads, strict=True):
        torch.testing.assert_close(g, one, rtol=1e-4, atol=1e-6)


def test_a_kl_in_the_loss_adds_its_estimate_for_the_trained_policy_with_its_gradient():
    def loss_and_grads(**kwargs) -> tuple[torch.Tensor, dict[str, float], list[torch.Tensor]]:
        learner = _learner(**kwargs)
        old, _ = _old_logprobs_and_entropy(learner.model)
        ref = [[lp - 0.2 for lp in row] for row in old]  # log pi_ref - log pi = -0.2 on every token
        loss, _, metrics = learner.compute_loss(_rows({"behaviour_logprobs": old, "ref_logprobs": ref}))
        loss.backward()
        return loss.detach(), metrics, [p.grad.clone() for p in learner.model.parameters()]

    base, _, base_grads = loss_and_grads()
    loss, metrics, _ = loss_and_grads(kl_loss_coef=0.1, kl_estimator="k3")
    k3 = math.exp(-0.2) - 1 + 0.2  # every token's estimate, so the token mean too
    assert metrics["actor/kl_loss"] == pytest.approx(k3, rel=1e-4)
    assert loss.item() == pytest.approx(base.item() + 0.1 * k3, rel=1e-5)
    assert metrics["actor/pg_loss"] == pytest.approx(-0.7, abs=1e-6)
    # k2's gradient, by hand: 0.1 * mean over the 5 response tokens of (log pi - log pi_ref) grad log pi,
    # = 0.1 * 0.2 / 5 * the gradient of the sum of the response tokens' logprobs.
    _, metrics, grads = loss_and_grads(kl_loss_coef=0.1, kl_estimator="k2")
    assert metrics["actor/kl_loss"] == pytest.approx(0.5 * 0.2**2, rel=1e-4)
    model = _learner().model
    total = 0.0
    for e in EXAMPLES:
        ids = torch.tensor([e["prompt_ids"] + e["response_ids"]])
        logp = model(ids).logits.float().log_softmax(-1)[0]
        total = total + sum(logp[t, ids[0, t + 1]] for t in range(len(e["prompt_ids"]) - 1, ids.shape[1] - 1))
    (0.1 * 0.2 / 5 * total).backward()
    for g, b, p in zip(grads, base_grads, model.parameters(), strict=True):
        torch.testing.assert_close(g - b, p.grad, rtol=1e-3, atol=1e-6)


def test_the_first_forward_made_while_the_batch_is_scored_is_the_one_the_loss_reads():
    def loss_and_grads(learner: PolicyLearner, rows: Rows) -> tuple[float, dict, list[torch.Tensor]]:
        loss, _, metrics = learner.compute_loss(rows)
        loss.backward()
        return loss.item(), metrics, [p.grad.clone() for p in learner.model.parameters()]

    learner = _learner(kl_loss_coef=0.1)
    old, _ = _old_logprobs_and_entropy(learner.model)
    rows = _rows({"behaviour_logprobs": old, "ref_logprobs": [[lp - 0.2 for lp in row] for row in old]})
    index = [1, 0]  # a shuffled minibatch: the forward is of these rows, in this order
    expected = loss_and_grads(learner, rows.select(index))

    learner = _learner(kl_loss_coef=0.1)
    learner.prepare_rollout(rows, index)  # before the advantages and reference logprobs exist
    assert not learner.take_early([0, 1])  # made for other rows: dropped, not read
    assert learner._early is None
    learner.prepare_rollout(rows, index)
    assert learner.take_early(index)
    forward = learner.train_forward
    learner.train_forward = None  # the loss must not make a forward of its own
    loss, metrics, grads = loss_and_grads(learner, rows.select(index))
    assert (loss, metrics) == expected[:2]
    for g, e in zip(grads, expected[2], strict=True):
        assert g.equal(e)
    learner.train_forward = forward  # the next micro-batch makes its own
    assert learner.compute_loss(rows.select(index))[0].item() == loss
