"""`tandem dpo CONFIG`: direct preference optimization (DPO or IPO) of an SFT policy.

Stages: start the run, load pairs, build the learner group (each rank holds the policy and the
frozen reference, both from `model.path`, an SFT run's `final/`), train, save, and score greedy and
sampled answers by the task's true reward (the DPO policy vs the SFT policy it started from).
"""

from __future__ import annotations

import argparse
from typing import Any

from tandem.config import Config
from tandem.recipes import common


def load_data(cfg: Config) -> tuple[list[dict], list[dict]]:
    """Tokenized (train, held-out) preference pairs."""
    from tandem.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.path)
    train = common.tokenize(tokenizer, common.load_records(cfg, "pairs", "train"), cfg)
    held_out = common.tokenize(tokenizer, common.load_records(cfg, "pairs", "eval"), cfg)
    return train, held_out


def run(cfg: Config, resume_dir: str | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """The whole DPO job; returns its summary (also in `<run_dir>/summary.json`)."""
    from tandem.learners import DPOLearner
    from tandem.models import resolve_model

    run = common.start_run(cfg, "dpo", resume_dir)
    model_path = resolve_model(cfg.model.path)
    train, held_out = load_data(cfg)
    order = common.BatchOrder(len(train), cfg.learner.global_batch_size, cfg.train.epochs, cfg.train.max_steps,
                              cfg.run.seed)
    group = common.learner_group("policy", DPOLearner, cfg.learner, model_path, order.total_steps, cfg.run.seed,
                                 beta=cfg.dpo.beta, loss=cfg.dpo.loss)
    try:
        common.resume(run, group)
        result = common.train_loop(run, group, train, order, lambda: common.evaluate(group, held_out), stop_after)
    finally:
        group.shutdown()
    if not result.finished:
        return common.finish_run(run, {"stopped_at": result.step})
    final = common.export_final(run, result.checkpoint)
    rewards = common.true_reward_eval(cfg, model_path, str(final))
    if rewards:
        run.tracker.log(rewards, step=result.step)
    return common.finish_run(run, {"final_model": str(final), "steps": result.step, **result.last_eval, **rewards})


def main(cfg: Config, args: argparse.Namespace) -> int:
    with common.ray_cluster(cfg):
        run(cfg, getattr(args, "resume", None))
    return 0
