"""`tandem dpo CONFIG`: direct preference optimization (DPO, IPO, SimPO, ...) of an SFT policy.

Stages: start the run, load pairs (the task's, or the SFT policy's own answers judged by the task's
annotators or a reward model: `dpo.pairs`, `dpo.judge`), build the learner group (each rank holds the policy and the
frozen reference, both from `model.path`, an SFT run's `final/`), train, save, and score greedy and
sampled answers by the task's true reward (the DPO policy vs the SFT policy it started from).
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tandem.config import Config
from tandem.data.records import load_records, tokenize
from tandem.errors import UserError
from tandem.recipes.offline import eval_loss, finish_policy_run, fit
from tandem.recipes.run_dir import job_cluster, start_run

Judge = Callable[[Config, list[str], list[str], list[str]], list[bool | None]]


def annotator_judge(
    cfg: Config, prompts: list[str], first: list[str], second: list[str]
) -> list[bool | None]:
    """The task's simulated annotators: Bradley-Terry on their scores at
    `data.preference_temperature`; None (no signal) where they score both answers the same."""
    from tandem.data import get_task
    from tandem.data.synthetic import bradley_terry_prob

    if cfg.data.task is None:
        raise UserError('dpo.judge: "annotators" needs data.task (its annotators judge the samples)')
    task, rng = get_task(cfg.data.task), random.Random(cfg.run.seed)
    choices: list[bool | None] = []
    for prompt, a, b in zip(prompts, first, second, strict=True):
        score_a, score_b = task.annotator_score(prompt, a), task.annotator_score(prompt, b)
        if score_a == score_b:
            choices.append(None)
            continue
        choices.append(rng.random() < bradley_terry_prob(score_a, score_b, cfg.data.preference_temperature))
    return choices


def rm_judge(cfg: Config, prompts: list[str], first: list[str], second: list[str]) -> list[bool | None]:
    """The reward model `dpo.judge_model`: the higher score wins (as online/iterative DPO labels
    its samples, e.g. Xiong et al. 2024, "Iterative Preference Learning from Human Feedback");
    None where both score the same."""
    from tandem.actors.reward import RewardScorer
    from tandem.config import RewardComponent

    rm = RewardComponent(kind="model", path=str(cfg.dpo.judge_model), name="judge")
    scorer = RewardScorer(
        [rm], max_prompt_len=cfg.model.max_prompt_len, max_response_len=cfg.model.max_response_len
    )
    score_a, score_b = (scorer.score(prompts, answers).total for answers in (first, second))
    return [None if a == b else a > b for a, b in zip(score_a, score_b, strict=True)]


JUDGES: dict[str, Judge] = {"annotators": annotator_judge, "rm": rm_judge}


def policy_pairs(cfg: Config, model_path: str, prompts: list[str]) -> list[dict]:
    """On-policy comparisons: two temperature-1 answers of the starting policy to each prompt, the
    preferred one chosen by `dpo.judge` (`JUDGES`); identical answers and ties are dropped (no signal).

    These are the comparisons InstructGPT's labelers made (of the model's own outputs); judged by a
    trained reward model they are one round of online DPO. Pairs built from corruptions of the
    reference are off-policy: DPO then mostly lowers the likelihood of answers the policy never
    gives; on the sort task they left its true reward flat or lower (see configs/dpo.yaml for the
    measurements).
    """
    import torch

    from tandem.models import load_causal_lm, load_tokenizer
    from tandem.recipes.evaluate import generate

    tokenizer, model = load_tokenizer(model_path), load_causal_lm(model_path).eval()
    torch.set_num_threads(os.cpu_count() or 1)  # before the learners start: the cores are free
    first, second = (
        generate(model, tokenizer, prompts, cfg.model.max_response_len, True, cfg.run.seed + i).texts
        for i in (0, 1)
    )
    distinct = [i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a.strip() != b.strip()]
    prompts, first, second = ([xs[i] for i in distinct] for xs in (prompts, first, second))
    pairs = []
    for prompt, a, b, first_wins in zip(
        prompts, first, second, JUDGES[cfg.dpo.judge](cfg, prompts, first, second)
    ):
        if first_wins is not None:
            chosen, rejected = (a, b) if first_wins else (b, a)
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def load_data(cfg: Config, model_path: str, run_dir: Path) -> tuple[list[dict], list[dict]]:
    """Tokenized (train, held-out) preference pairs. Held-out pairs are always the task's (or
    eval_files'), so eval/accuracy means the same whichever pairs train. On-policy pairs are kept
    in the run folder (`policy_pairs.jsonl`): a resumed run trains on the same ones."""
    from tandem.data import rl_prompts
    from tandem.models import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    if cfg.dpo.pairs == "policy":
        cache = run_dir / "policy_pairs.jsonl"
        if cache.is_file():
            records = [json.loads(line) for line in cache.read_text().splitlines()]
        else:
            prompts = rl_prompts(cfg.data.task, cfg.data.num_train, seed=cfg.run.seed, split="train")
            records = policy_pairs(cfg, model_path, prompts)
            cache.write_text("".join(json.dumps(r) + "\n" for r in records))
            print(f"dpo: {len(records)} on-policy pairs from {len(prompts)} prompts")
    else:
        records = load_records(cfg, "pairs", "train")
    train = tokenize(tokenizer, records, cfg)
    held_out = tokenize(tokenizer, load_records(cfg, "pairs", "eval"), cfg)
    return train, held_out


def loss_options(cfg: Config) -> dict[str, float]:
    """The `dpo` options the configured loss reads (its registry entry names them)."""
    from tandem.algos import get_preference_loss

    return {name: getattr(cfg.dpo, name) for name in sorted(get_preference_loss(cfg.dpo.loss).options)}


def run(cfg: Config, resume_dir: str | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """The whole DPO job; returns its summary (also in `<run_dir>/summary.json`)."""
    from tandem.learners import DPOLearner
    from tandem.models import resolve_model

    # Ray before the data: on-policy pairs are sampled by a rollout engine.
    with job_cluster(cfg, resume_dir):
        run = start_run(cfg, "dpo", resume_dir)
        model_path = resolve_model(cfg.model.path)
        train, held_out = load_data(cfg, model_path, run.dir)
        result = fit(
            run,
            cfg,
            "policy",
            DPOLearner,
            model_path,
            train,
            lambda group: eval_loss(group, held_out),
            stop_after,
            beta=cfg.dpo.beta,
            loss=cfg.dpo.loss,
            rpo_alpha=cfg.dpo.rpo_alpha,
            options=loss_options(cfg),
        )
        return finish_policy_run(run, result, model_path)


def main(cfg: Config, args: argparse.Namespace) -> int:
    run(cfg, getattr(args, "resume", None))
    return 0
