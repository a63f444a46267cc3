"""`tandem sft CONFIG`: supervised fine-tuning on demonstrations (loss on response tokens only).

Stages: start the run, load data, build the learner group, train (with held-out loss), save the
final model, score greedy and sampled answers by the task's true reward (trained vs initial).
"""

from __future__ import annotations

import argparse
from typing import Any

from tandem.config import Config
from tandem.recipes import common


def load_data(cfg: Config) -> tuple[list[dict], list[dict]]:
    """Tokenized (train, held-out) demonstrations."""
    from tandem.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.path)
    train = common.tokenize(tokenizer, common.load_records(cfg, "sft", "train"), cfg)
    held_out = common.tokenize(tokenizer, common.load_records(cfg, "sft", "eval"), cfg)
    return train, held_out


def run(cfg: Config, resume_dir: str | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """The whole SFT job; returns its summary (also in `<run_dir>/summary.json`)."""
    from tandem.learners import SFTLearner
    from tandem.models import resolve_model

    run = common.start_run(cfg, "sft", resume_dir)
    model_path = resolve_model(cfg.model.path)
    train, held_out = load_data(cfg)
    result = common.fit(run, cfg, "policy", SFTLearner, model_path, train,
                        lambda group: common.evaluate(group, held_out), stop_after)
    return common.finish_policy_run(run, result, model_path)

def main(cfg: Config, args: argparse.Namespace) -> int:
    with common.ray_cluster(cfg):
        run(cfg, getattr(args, "resume", None))
    return 0
