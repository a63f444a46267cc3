"""The learners' losses on real batches, without DeepSpeed (a plain module stands in for the engine)."""

from __future__ import annotations

import math

import pytest
import torch

from tandem.config import LearnerConfig
from tandem.learners import DPOLearner, RewardLearner, SFTLearner
from tandem.learners.batching import pair_batch, sft_batch


@pytest.fixture(scope="module")
def model():
    from tandem.models import load_causal_lm

    torch.manual_seed(0)
    return load_causal_lm("tiny-qwen2").eval()


def _learner(cls, model, **kwargs):
    learner = cls(LearnerConfig(), "tiny-qwen2", total_steps=1, **kwargs)
    learner.engine, learner.model, learner.pad_id = model, model, 0
    return learner


PAIRS = [
    {"prompt_ids": [2, 6, 40, 41], "chosen_ids": [50, 51, 3], "rejected_ids": [52, 3]},
    {"prompt_ids": [2, 6, 42], "chosen_ids": [53, 3], "rejected_ids": [54, 55, 56, 3]},
]


@torch.no_grad()
def test_sft_loss_is_token_mean_cross_entropy_of_responses(model):
    examples = [
        {"prompt_ids": [2, 6, 40, 41], "response_ids": [50, 51, 3]},
        {"prompt_ids": [2, 6], "response_ids": [52, 3]},
    ]
    loss, units, _ = _learner(SFTLearner, model).compute_loss(sft_batch(examples, 0))
    nll = []
    for e in examples:  # one unpadded sequence at a time
        ids = torch.tensor([e["prompt_ids"] + e["response_ids"]])
        logp = model(ids).logits.log_softmax(-1)[0]
        n_p = len(e["prompt_ids"])
        nll += [-logp[t - 1, ids[0, t]].item() for t in range(n_p, ids.shape[1])]
    assert units == 5
    assert loss.item() == pytest.approx(sum(nll) / len(nll), rel=1e-5)


@torch.no_grad()
@pytest.mark.parametrize(("kind", "expected"), [("dpo", math.log(2)), ("ipo", (1 / (2 * 0.1)) ** 2)])
def test_dpo_and_ipo_start_at_their_reference_value(model, kind, expected):
    # Policy == reference: every log-ratio is 0, so DPO = -log sigmoid(0) and IPO = (0 - 1/(2 beta))^2.
    learner = _learner(DPOLearner, model, beta=0.1, loss=kind)
    learner.reference = model
    loss, units, metrics = learner.compute_loss(pair_batch(PAIRS, 0))
    assert units == 2 and loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["rewards/chosen"] == metrics["margins"] == 0.0


@torch.no_grad()
def test_rdpo_reads_the_answer_lengths_from_the_masks(model):
    # Policy == reference, so the margin is alpha * (|chosen| - |rejected|): lengths (3, 2) vs (2, 4)
    # tokens give (1, -2); alpha 0.1: (ln(1 + e^-0.1) + ln(1 + e^0.2)) / 2.
    learner = _learner(DPOLearner, model, beta=0.1, options={"length_alpha": 0.1})
    learner.reference = model
    loss, _, metrics = learner.compute_loss(pair_batch(PAIRS, 0))
    assert loss.item() == pytest.approx(
        (math.log1p(math.exp(-0.1)) + math.log1p(math.exp(0.2))) / 2, rel=1e-6
    )
    assert metrics["logps/chosen_shift"] == 0.0


@torch.no_grad()
def test_simpo_needs_no_reference(model):
    learner = _learner(DPOLearner, model, beta=2.0, loss="simpo", options={"simpo_gamma": 0.5})
    loss, _, metrics = learner.compute_loss(pair_batch(PAIRS, 0))
    logps = [
        model(torch.tensor([p["prompt_ids"] + p[k]])).logits.log_softmax(-1)[0]
        for k in ("chosen_ids", "rejected_ids")
        for p in PAIRS
    ]
    per_token = []
    for i, (p, k) in enumerate([(p, k) for k in ("chosen_ids", "rejected_ids") for p in PAIRS]):
        ids, n_p = p["prompt_ids"] + p[k], len(p["prompt_ids"])
        per_token.append(sum(logps[i][t - 1, ids[t]].item() for t in range(n_p, len(ids))) / len(p[k]))
    z = [2.0 * (per_token[j] - per_token[j + 2]) - 0.5 for j in (0, 1)]
    assert loss.item() == pytest.approx(sum(math.log1p(math.exp(-x)) for x in z) / 2, rel=1e-5)
    assert "logps/chosen_shift" not in metrics


@torch.no_grad()
def test_reward_loss_is_bradley_terry_of_last_token_scores():
    from tandem.models import load_reward_model

    torch.manual_seed(0)
    rm = load_reward_model("tiny-qwen2").eval()
    loss, units, metrics = _learner(RewardLearner, rm).compute_loss(pair_batch(PAIRS, 0))
    score = [
        rm(torch.tensor([p["prompt_ids"] + p[k]])).logits.item()
        for k in ("chosen_ids", "rejected_ids")
        for p in PAIRS
    ]
    margins = torch.tensor([score[0] - score[2], score[1] - score[3]])
    assert units == 2
    assert loss.item() == pytest.approx(-torch.nn.functional.logsigmoid(margins).mean().item(), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx((margins > 0).float().mean().item())
