"""The DPO recipe at toy scale: it trains, logs the implicit rewards and saves a policy (IPO: tests/learners)."""

from __future__ import annotations

import pytest

from tandem.config import load_config
from tandem.recipes import dpo
from tandem.tracking import read_metrics

pytestmark = pytest.mark.slow  # end to end: real Ray, vLLM and DeepSpeed processes


def test_dpo_run(ray_session, tmp_path, loss="dpo"):
    from transformers import AutoModelForCausalLM

    cfg = load_config(
        "configs/dpo.yaml",
        [
            f"run.output_dir={tmp_path}",
            f"run.name={loss}",
            f"dpo.loss={loss}",
            "model.path=tiny-qwen2",  # the tests have no SFT run to start from; any causal LM will do
            "dpo.pairs=task",  # an untrained model's samples all tie under the annotators: no pairs
            "data.num_train=16",
            "data.num_eval=8",
            "learner.micro_batch_size=4",
            "learner.global_batch_size=8",
            "train.max_steps=2",
            "train.num_generate_eval=2",
        ],
    )
    summary = dpo.run(cfg)
    rows = read_metrics(tmp_path / loss)
    # Step 0: policy == reference, so the implicit rewards are exactly 0.
    assert rows[0]["eval/rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert rows[0]["eval/margins"] == pytest.approx(0.0, abs=1e-6)
    assert {
        "train/loss",
        "train/rewards/chosen",
        "train/rewards/rejected",
        "train/margins",
        "train/accuracy",
        "train/lr",
        "train/grad_norm",
    } <= set(rows[1])
    assert rows[2]["train/margins"] != 0.0  # the policy moved away from the reference
    assert {"eval/true_reward/greedy", "eval/init_true_reward/greedy"} <= set(summary)
    AutoModelForCausalLM.from_pretrained(summary["final_model"])


def test_policy_pairs_are_judged_by_the_annotators(monkeypatch):
    from types import SimpleNamespace

    from tandem.recipes import evaluate

    prompts = ["sort: 3 1 2", "sort: 5 4", "sort: 9 8 7", "sort: 2 1"]
    answers = {0: ["1 2 3", "4 5", "7 8 9", "1 2"], 1: ["3 1 2", "4 5", "9 8 7", "2 1"]}
    monkeypatch.setattr(
        evaluate, "generate", lambda model, tok, p, n, sample, seed: SimpleNamespace(texts=answers[seed])
    )
    cfg = load_config("configs/dpo.yaml", ["model.path=tiny-qwen2", "data.preference_temperature=0"])
    pairs = dpo.policy_pairs(cfg, "tiny-qwen2", prompts)
    # Identical answers ("4 5" twice) are dropped; a noiseless annotator prefers the sorted answer.
    assert pairs == [
        {"prompt": "sort: 3 1 2", "chosen": "1 2 3", "rejected": "3 1 2"},
        {"prompt": "sort: 9 8 7", "chosen": "7 8 9", "rejected": "9 8 7"},
        {"prompt": "sort: 2 1", "chosen": "1 2", "rejected": "2 1"},
    ]


def test_policy_pairs_judged_by_a_reward_model_prefer_its_higher_score(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import torch

    from tandem.actors.reward import RewardScorer
    from tandem.config import RewardComponent
    from tandem.models import load_reward_model, load_tokenizer
    from tandem.recipes import evaluate

    torch.manual_seed(0)
    load_reward_model("tiny-qwen2").save_pretrained(tmp_path)  # a random head: any fixed scorer will do
    load_tokenizer("tiny-qwen2").save_pretrained(tmp_path)
    prompts = ["sort: 3 1 2", "sort: 5 4", "sort: 9 8 7", "sort: 2 1"]
    answers = {0: ["1 2 3", "4 5", "7 8 9", "1 2"], 1: ["3 1 2", "4 5", "9 8 7 7 7", "2 1 1"]}
    monkeypatch.setattr(
        evaluate, "generate", lambda model, tok, p, n, sample, seed: SimpleNamespace(texts=answers[seed])
    )
    overrides = ["model.path=tiny-qwen2", "dpo.pairs=policy", "dpo.judge=rm", f"dpo.judge_model={tmp_path}"]
    pairs = dpo.policy_pairs(load_config("configs/dpo.yaml", overrides), "tiny-qwen2", prompts)
    scorer = RewardScorer([RewardComponent(kind="model", path=str(tmp_path))])
    score = lambda p, r: scorer.score([p], [r]).total[0]
    # The identical pair is dropped; of the others, the RM's higher-scored answer is chosen.
    assert [p["prompt"] for p in pairs] == ["sort: 3 1 2", "sort: 9 8 7", "sort: 2 1"]
    assert all(score(p["prompt"], p["chosen"]) > score(p["prompt"], p["rejected"]) for p in pairs)
    assert {p["chosen"] for p in pairs} != set(
        answers[0]
    )  # the random RM disagrees with the sort order somewhere
