"""What the study smoke tests share: stage job files and a study job at toy sizes."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

#: Every stage: tiny batches, one or two optimizer steps.
STAGE = {
    "model": {"path": "tiny-qwen2", "max_response_len": 8},
    "learner": {"micro_batch_size": 8, "global_batch_size": 8, "optim": {"warmup_steps": 1}},
    "data": {"num_train": 16, "num_eval": 8},
    "train": {"max_steps": 1, "num_generate_eval": 0},
}


def study_overrides(tmp_path: Path, task: str, arms: dict[str, list[str]]) -> list[str]:
    """A study job at toy scale: stage files for `task`, PPO of two steps of 4 x 2 samples, 6 held-out prompts."""
    files = {}
    for stage in ("sft", "rm"):
        path = tmp_path / f"{stage}.yaml"
        job = {**STAGE, "data": {**STAGE["data"], "task": task}}
        path.write_text(yaml.safe_dump(job))
        files[stage] = str(path)
    return [
        f"run.output_dir={tmp_path}",
        "run.name=study",
        "wandb.mode=disabled",
        f"data.task={task}",
        "data.num_eval=6",
        "model.max_response_len=8",
        f"pipeline.sft_config={files['sft']}",
        f"pipeline.rm_config={files['rm']}",
        "reward.components=[{kind: model, path: rm, name: rm}]",
        "ppo.steps=2",
        "ppo.prompts_per_step=4",
        "ppo.samples_per_prompt=2",
        "ppo.sample_table_every=1000",
        "learner.micro_batch_size=8",
        "learner.optim.warmup_steps=1",
        # The studies' logic is under test, not vLLM's: transformers' decoding starts without vLLM's
        # import and engine build (10-14 s of CPU per engine here) and samples a toy model faster.
        "rollout.backend=transformers",
        "reference.host=policy",  # one process fewer to start per PPO run
        "rollout.max_num_seqs=16",
        "reward.cpus=0.5",
        f"study.arms={yaml.safe_dump(arms, default_flow_style=True, sort_keys=False).strip()}",
    ]


def all_finite(rows: list[list]) -> bool:
    """Every number of the table's rows is finite (blank cells are the empty string)."""
    return all(math.isfinite(v) for row in rows for v in row if isinstance(v, (int, float)))


def random_reward_model(folder: Path) -> str:
    """A fixed random reward model on tiny-qwen2, saved to `folder`: what a study test starts from
    when the stages are not what it tests (training them is the length study's and the recipes')."""
    import torch

    from tandem.models import load_reward_model, load_tokenizer

    torch.manual_seed(0)
    load_reward_model("tiny-qwen2").save_pretrained(folder)
    load_tokenizer("tiny-qwen2").save_pretrained(folder)
    return str(folder)
