"""`tandem generate CONFIG`: sample from a model with a rollout engine and score the samples with the
task's true reward.

Stages: load held-out prompts, start one rollout engine in this process (`RolloutEngine`, the body
of the PPO job's engine actors: the same sampling settings, seeding and decoding), generate, score,
print.
"""

from __future__ import annotations

import argparse
import statistics

from tandem.config import Config
from tandem.errors import UserError


def _prompts(cfg: Config) -> list[str]:
    from tandem.data import rl_prompts

    if cfg.data.task is None:
        raise UserError(
            "`data.task` is null: `tandem generate` scores samples with a built-in task's true reward"
        )
    return rl_prompts(cfg.data.task, cfg.data.num_eval, seed=cfg.run.seed, split="eval")


def main(cfg: Config, args: argparse.Namespace) -> int:
    from tandem.actors.rollout import engine_class
    from tandem.data import get_task

    prompts = _prompts(cfg)
    engine = engine_class(cfg.rollout)(cfg.model, cfg.rollout, seed=cfg.run.seed)
    samples = engine.generate_text(prompts, greedy=False, seed=cfg.run.seed)
    task = get_task(cfg.data.task)
    rewards = []
    for sample in samples:
        prompt = prompts[sample.prompt_index]
        rewards.append(task.true_reward(prompt, sample.response_text))
        print(f"{prompt!r:32} -> {sample.response_text!r:28} true reward {rewards[-1]:.2f}")
    print(f"mean true reward over {len(rewards)} prompts: {statistics.fmean(rewards):.3f}")
    return 0
