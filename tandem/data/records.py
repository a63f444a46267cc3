"""The examples a job trains on: records (the user's files or a built-in task's), their token ids,
and the seeded order they are batched in.

A record is a dict of text (`prompt` and `response`, or `prompt`, `chosen` and `rejected`); an
example is the same with token ids, what the learners take (`tandem.learners.batching`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from tandem.config import Config
from tandem.data.chat import prompt_ids, response_ids
from tandem.data.files import load_data_file
from tandem.data.synthetic import preference_pairs, sft_examples
from tandem.errors import UserError


def load_records(cfg: Config, kind: str, split: str) -> list[dict]:
    """Training or held-out records of `kind` ("sft" or "pairs"): the user's files when given,
    else drawn from the built-in task. Held-out: eval_files, else the task's eval split, else []."""
    files = cfg.data.train_files if split == "train" else cfg.data.eval_files
    if files:
        return [r for f in files for r in load_data_file(f, kind)]
    if cfg.data.task is None:
        if split == "train":
            raise UserError("no training data: set data.task or data.train_files")
        return []
    n = cfg.data.num_train if split == "train" else cfg.data.num_eval
    if kind == "sft":
        # Held-out demonstrations stay exact: eval/loss measures distance to the right answers.
        error_rate = cfg.data.demo_error_rate if split == "train" else 0.0
        return sft_examples(cfg.data.task, n, seed=cfg.run.seed, split=split, error_rate=error_rate)
    return preference_pairs(
        cfg.data.task, n, seed=cfg.run.seed, temperature=cfg.data.preference_temperature, split=split
    )


def tokenize(tokenizer: Any, records: Sequence[dict], cfg: Config) -> list[dict]:
    """Records -> token-id examples for the learners: `prompt_ids` (chat template, truncated from
    the left) and `response_ids` / `chosen_ids` + `rejected_ids` (text + EOS, truncated)."""
    max_p, max_r = cfg.model.max_prompt_len, cfg.model.max_response_len
    out = []
    for rec in records:
        example = {"prompt_ids": prompt_ids(tokenizer, rec["prompt"])[-max_p:]}
        for key in ("response", "chosen", "rejected"):
            if key in rec:
                example[f"{key}_ids"] = response_ids(tokenizer, rec[key])[:max_r]
        out.append(example)
    return out


class BatchOrder:
    """Which examples (or PPO prompts) make global batch `step`: a seeded shuffle per epoch, the last
    partial batch dropped. A pure function of the step, so the step alone is the data position."""

    def __init__(
        self, n_examples: int, global_batch: int, epochs: int, max_steps: int | None, seed: int
    ) -> None:
        if n_examples < global_batch:
            raise UserError(
                f"{n_examples} training examples are fewer than one global batch ({global_batch})"
            )
        self.n, self.batch, self.seed = n_examples, global_batch, seed
        self.steps_per_epoch = n_examples // global_batch
        self.total_steps = self.steps_per_epoch * epochs
        if max_steps is not None:
            self.total_steps = min(self.total_steps, max_steps)

    def indices(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order[k * self.batch : (k + 1) * self.batch]
