"""`tandem sft CONFIG`: supervised fine-tuning on demonstrations (loss on response tokens only).

Stages: start the run, load data, build the learner group, train (with held-out loss), save the
final model, score greedy and sampled answers by the task's true reward (trained vs initial).
"""

from __future__ import annotations

import argparse
from typing import Any

from tandem.config import Config
from tandem.data.records import load_records, tokenize
from tandem.recipes.offline import eval_loss, finish_policy_run, fit
from tandem.recipes.run_dir import job_cluster, start_run


def load_data(cfg: Config) -> tuple[list[dict], list[dict]]:
    """Tokenized (train, held-out) demonstrations."""
    from tandem.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.path)
    train = tokenize(tokenizer, load_records(cfg, "sft", "train"), cfg)
    held_out = tokenize(tokenizer, load_records(cfg, "sft", "eval"), cfg)
    return train, held_out


def run(
    cfg: Config,
    resume_dir: str | None = None,
    stop_after: int | None = None,
    *,
    data: tuple[list[dict], list[dict]] | None = None,
) -> dict[str, Any]:
    """The whole SFT job; returns its summary (also in `<run_dir>/summary.json`). `data`: already
    read by `load_data` (`tandem.recipes.pipeline` reads every stage's before any stage trains)."""
    from tandem.learners import SFTLearner
    from tandem.models import resolve_model

    # Data first: a bad row or an over-long prompt then fails before Ray or the run folder is touched.
    train, held_out = data or load_data(cfg)
    with job_cluster(cfg, resume_dir):
        run = start_run(cfg, "sft", resume_dir)
        model_path = resolve_model(cfg.model.path)
        result = fit(
            run,
            cfg,
            "policy",
            SFTLearner,
            model_path,
            train,
            lambda group: eval_loss(group, held_out),
            stop_after,
        )
        return finish_policy_run(run, result, model_path)


def main(cfg: Config, args: argparse.Namespace) -> int:
    run(cfg, getattr(args, "resume", None))
    return 0
