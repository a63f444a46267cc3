"""`tandem rm CONFIG`: train a reward model (the LM with a scalar head) on preference pairs.

Stages: start the run, load pairs, build the learner group, train with the Bradley-Terry loss
(held-out accuracy against the annotators' labels, and against the task's true reward), save.
The saved model loads with `AutoModelForSequenceClassification` (and `tandem.models.load_reward_model`).
"""

from __future__ import annotations

import argparse
from typing import Any

from tandem.cluster.groups import ActorGroup
from tandem.config import Config
from tandem.data.records import load_records, tokenize
from tandem.recipes.offline import eval_loss, fit
from tandem.recipes.run_dir import export_final, finish_run, job_cluster, start_run


def true_order(cfg: Config, records: list[dict]) -> list[dict]:
    """Held-out pairs re-ordered by the task's true reward (ties dropped): accuracy on these is
    how often the RM ranks two answers the way the true reward does. [] without a task."""
    from tandem.data import get_task, prompt_text

    if cfg.data.task is None:
        return []
    task, out = get_task(cfg.data.task), []
    for rec in records:
        prompt = prompt_text(rec["prompt"])
        chosen, rejected = task.true_reward(prompt, rec["chosen"]), task.true_reward(prompt, rec["rejected"])
        if chosen != rejected:
            better, worse = (
                (rec["chosen"], rec["rejected"]) if chosen > rejected else (rec["rejected"], rec["chosen"])
            )
            out.append({"prompt": rec["prompt"], "chosen": better, "rejected": worse})
    return out


def load_data(cfg: Config) -> tuple[list[dict], list[dict], list[dict]]:
    """Tokenized (train pairs, held-out pairs, held-out pairs in true-reward order)."""
    from tandem.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.path)
    held_out = load_records(cfg, "pairs", "eval")
    return (
        tokenize(tokenizer, load_records(cfg, "pairs", "train"), cfg),
        tokenize(tokenizer, held_out, cfg),
        tokenize(tokenizer, true_order(cfg, held_out), cfg),
    )


def run(
    cfg: Config,
    resume_dir: str | None = None,
    stop_after: int | None = None,
    *,
    data: tuple[list[dict], list[dict], list[dict]] | None = None,
) -> dict[str, Any]:
    """The whole reward-model job; returns its summary (also in `<run_dir>/summary.json`). `data`:
    already read by `load_data` (`tandem.recipes.pipeline` reads every stage's before any trains)."""
    from tandem.learners import RewardLearner
    from tandem.models import resolve_model

    # Data first: a bad row or an over-long prompt then fails before Ray or the run folder is touched.
    train, held_out, held_out_true = data or load_data(cfg)

    def held_out_losses(group: ActorGroup) -> dict[str, float]:
        return {**eval_loss(group, held_out), **eval_loss(group, held_out_true, "eval/true_")}

    with job_cluster(cfg, resume_dir):
        run = start_run(cfg, "rm", resume_dir)
        model_path = resolve_model(cfg.model.path)
        result = fit(run, cfg, "rm", RewardLearner, model_path, train, held_out_losses, stop_after)
        if not result.finished:
            return finish_run(run, {"stopped_at": result.step})
        final = export_final(run, result.checkpoint)
        return finish_run(run, {"final_model": str(final), "steps": result.step, **result.last_eval})


def main(cfg: Config, args: argparse.Namespace) -> int:
    run(cfg, getattr(args, "resume", None))
    return 0
