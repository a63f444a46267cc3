"""The held-out evaluation by true reward (what the SFT/DPO summaries and the pipeline's table print),
on the embedded model: one score per prompt, means by hand, KL 0 to itself."""

from __future__ import annotations

import statistics

import pytest

from tandem.config import load_config
from tandem.recipes.evaluate import evaluate_before_after, evaluate_policy, generate, mean_and_stderr

PROMPTS = [f"sort: {i} {7 - i} {i % 3}" for i in range(5)]
MAX_TOKENS = 6


def test_evaluate_policy_scores_every_held_out_prompt():
    from tandem.data import get_task
    from tandem.models import load_causal_lm, load_tokenizer

    result = evaluate_policy("tiny-qwen2", "sort", PROMPTS, MAX_TOKENS, seed=3, ref_path="tiny-qwen2")
    # Greedy answers again, scored by hand: one reward per prompt, in [0, 1], and their mean.
    model, tokenizer = load_causal_lm("tiny-qwen2").eval(), load_tokenizer("tiny-qwen2")
    answers = generate(model, tokenizer, PROMPTS, MAX_TOKENS, sample=False, seed=3)
    assert len(answers.texts) == len(PROMPTS) and all(1 <= len(r) <= MAX_TOKENS for r in answers.response_ids)
    rewards = [get_task("sort").true_reward(p, t) for p, t in zip(PROMPTS, answers.texts)]
    assert all(0.0 <= r <= 1.0 for r in rewards)
    assert (result["greedy/mean"], result["greedy/stderr"]) == pytest.approx(mean_and_stderr(rewards))
    assert result["greedy/length"] == pytest.approx(statistics.fmean(len(r) for r in answers.response_ids))
    assert 0.0 <= result["sampled/mean"] <= 1.0 and 1 <= result["sampled/length"] <= MAX_TOKENS
    assert result["kl_to_ref"] == pytest.approx(0.0, abs=1e-6)  # the policy is its own reference


def test_evaluate_before_after_names_both_models():
    cfg = load_config(
        "configs/sft.yaml", ["train.num_generate_eval=3", f"model.max_response_len={MAX_TOKENS}"]
    )
    out = evaluate_before_after(cfg, "tiny-qwen2", "tiny-qwen2")
    assert set(out) == {
        f"eval/{who}/{mode}" for who in ("init_true_reward", "true_reward") for mode in ("greedy", "sampled")
    }
    # The same model twice, the same seed: the same numbers.
    assert out["eval/true_reward/greedy"] == out["eval/init_true_reward/greedy"]
    assert out["eval/true_reward/sampled"] == out["eval/init_true_reward/sampled"]
    none = load_config("configs/sft.yaml", ["train.num_generate_eval=0"])
    assert evaluate_before_after(none, "tiny-qwen2", "tiny-qwen2") == {}
