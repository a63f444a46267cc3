"""The PPO policy learner's loss and metrics on a real batch, without DeepSpeed (a plain module stands
in for the engine)."""

from __future__ import annotations

import pytest
import torch

from tandem.config import LearnerConfig
from tandem.learners.ppo import PolicyLearner

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


@torch.no_grad()
def test_pg_loss_is_the_surrogate_alone_and_the_loss_adds_the_entropy_bonus():
    from tandem.models import load_causal_lm

    torch.manual_seed(0)
    model = load_causal_lm("tiny-qwen2").eval()
    learner = PolicyLearner(LearnerConfig(), "tiny-qwen2", total_steps=1, entropy_coef=0.1)
    learner.engine, learner.model, learner.pad_id = model, model, 0
    old, entropy = _old_logprobs_and_entropy(model)
    examples = [e | {"old_logprobs": lp} for e, lp in zip(EXAMPLES, old)]
    loss, units, metrics = learner.compute_loss(learner.collate(examples))
    # pi == pi_old: every ratio is 1 and nothing is clipped, so the surrogate is minus the token mean
    # advantage, (1 - 0.5 + 2 + 0.5 + 0.5) / 5 = 0.7.
    assert units == 5
    assert metrics["actor/pg_loss"] == pytest.approx(-0.7, abs=1e-6)
    assert metrics["actor/clip_frac"] == 0.0 and metrics["actor/ratio_mean"] == pytest.approx(1.0)
    assert metrics["actor/entropy"] == pytest.approx(entropy, rel=1e-5)
    assert loss.item() == pytest.approx(-0.7 - 0.1 * entropy, rel=1e-5)


def test_policy_loss_is_looked_up_by_name():
    with pytest.raises(KeyError, match=r"unknown policy loss 'sppo'; valid names: \['ppo'\]"):
        PolicyLearner(LearnerConfig(), "tiny-qwen2", total_steps=1, policy_loss="sppo")
