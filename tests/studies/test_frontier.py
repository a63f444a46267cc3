"""`tandem study frontier` at toy sizes, end to end on real Ray and DeepSpeed: one PPO arm, one
DPO arm on the task's pairs and one DPOP arm on on-policy pairs judged by the reward model."""

from __future__ import annotations

import json
import math

import pytest

from tandem.config import load_config
from tandem.studies import frontier
from tests.studies.toy import random_reward_model

pytestmark = pytest.mark.slow  # end to end: real Ray, vLLM and DeepSpeed processes

DPO_TOY = [
    "data.num_train=16",
    "data.num_eval=8",
    "learner.micro_batch_size=4",
    "learner.global_batch_size=8",
]


def test_frontier_has_every_arm_finite_and_the_plot(ray_session, tmp_path):
    rm_dir = random_reward_model(tmp_path / "rm-model")
    dpo_arms = {
        "offline": ["dpo.pairs=task", "train.max_steps=2", *DPO_TOY],
        "online-dpop": ["dpo.judge=rm", "dpo.dpop_lambda=50", "train.max_steps=2", *DPO_TOY],
    }
    cfg = load_config(
        "configs/study-frontier.yaml",
        [
            f"run.output_dir={tmp_path}",
            "wandb.mode=disabled",
            "study.sft_model=tiny-qwen2",  # any causal LM will do as the starting point
            f"study.rm_model={rm_dir}",
            "study.arms={kl-0.1: [ppo.kl_coef=0.1]}",
            f"study.dpo_arms={json.dumps(dpo_arms)}",
            "data.num_train=64",
            "data.num_eval=8",
            "ppo.steps=2",
            "ppo.prompts_per_step=8",
            "ppo.samples_per_prompt=2",
            "ppo.sample_table_every=1000",
            "learner.micro_batch_size=8",
            # As in tests/studies/toy.py: the study's logic is under test, not vLLM's or the
            # reference actor's (tests/recipes/test_ppo.py has them).
            "rollout.backend=transformers",
            "rollout.max_num_seqs=16",
            "reference.host=policy",
            "reward.cpus=0.5",
        ],
    )
    out_dir = tmp_path / "study"
    out_dir.mkdir()
    out = frontier.run(cfg, out_dir)
    table = json.loads((out_dir / "table.json").read_text())
    assert [r[0] for r in table["rows"]] == ["sft", "kl-0.1", "offline", "online-dpop"]
    assert [r[1] for r in table["rows"]] == [
        "SFT",
        "PPO",
        "DPO, offline pairs",
        "DPO + DPOP (lambda 50), on-policy pairs, rm-judged",
    ]
    columns = table["columns"]
    for row in table["rows"]:
        for key in ("kl_to_sft", "true_reward", "stderr"):
            assert math.isfinite(row[columns.index(key)]), (row[0], key)
    shifts = [r[columns.index("chosen_logp_shift")] for r in table["rows"]]
    assert shifts[:2] == [None, None] and all(math.isfinite(s) for s in shifts[2:])
    assert (out_dir / "frontier.png").stat().st_size > 0 and out["plot"] == str(out_dir / "frontier.png")
    assert (out_dir / "pairs-rm-16-0.jsonl").is_file()  # the on-policy pairs, kept for other arms
