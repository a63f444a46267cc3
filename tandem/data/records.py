"""The examples a job trains on: records (the user's files or a built-in task's), their token ids,
and the seeded order they are batched in.

A record is a dict of text (`prompt` and `response`, or `prompt`, `chosen` and `rejected`); an
example is the same with token ids, what the learners take (`tandem.learners.batching`).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from typing import Any

from tandem.config import Config
from tandem.data.chat import prompt_ids, response_ids
from tandem.data.files import load_data_file
from tandem.data.synthetic import preference_pairs, rl_prompts, sft_examples
from tandem.errors import UserError


def load_records(cfg: Config, kind: str, split: str) -> list[dict]:
    """Training or held-out records of `kind` ("rl", "sft" or "pairs"): the user's files when given,
    else drawn from the built-in task. Held-out: eval_files, else the task's eval split, else [].
    Each record's `origin` says where it came from (file and row, or task and index) for errors."""
    files = cfg.data.train_files if split == "train" else cfg.data.eval_files
    if files:
        records = []
        for f in files:
            for row, rec in enumerate(load_data_file(f, kind), 1):
                records.append({**rec, "origin": f"{f}: row {row}"})
        return records
    if cfg.data.task is None:
        if split == "train":
            raise UserError("no training data: set data.task or data.train_files")
        return []
    n = cfg.data.num_train if split == "train" else cfg.data.num_eval
    if kind == "rl":
        drawn = [{"prompt": p} for p in rl_prompts(cfg.data.task, n, seed=cfg.run.seed, split=split)]
    elif kind == "sft":
        # Held-out demonstrations stay exact: eval/loss measures distance to the right answers.
        error_rate = cfg.data.demo_error_rate if split == "train" else 0.0
        drawn = sft_examples(cfg.data.task, n, seed=cfg.run.seed, split=split, error_rate=error_rate)
    else:
        drawn = preference_pairs(
            cfg.data.task, n, seed=cfg.run.seed, temperature=cfg.data.preference_temperature, split=split
        )
    where = f"data.task {cfg.data.task!r} ({split})"
    return [{**rec, "origin": f"{where}: example {i}"} for i, rec in enumerate(drawn, 1)]


def load_prompts(cfg: Config) -> list[str | list[dict]]:
    """RL prompts: the user's files (column `prompt`), else the built-in task's training split;
    checked against model.max_prompt_len (`check_prompt_len`) before any actor starts."""
    from tandem.models import load_tokenizer

    records = load_records(cfg, "rl", "train")
    tokenizer = load_tokenizer(cfg.model.path)
    cut = sum(check_prompt_len(cfg, len(prompt_ids(tokenizer, r["prompt"])), r["origin"]) for r in records)
    _warn_cut(cfg, cut)
    return [r["prompt"] for r in records]


def check_prompt_len(cfg: Config, length: int, origin: str) -> bool:
    """Whether a prompt of `length` tokens gets cut (data.truncate_prompts); UserError naming
    `origin` if it is too long and cutting is off. Cut from the left, a prompt loses its start,
    often the instruction, so the default is to fail."""
    if length <= cfg.model.max_prompt_len:
        return False
    if not cfg.data.truncate_prompts:
        raise UserError(
            f"{origin}: the prompt is {length} tokens (chat template included), over "
            f"model.max_prompt_len={cfg.model.max_prompt_len}; raise model.max_prompt_len, shorten the "
            "prompt, or set data.truncate_prompts=true to cut long prompts from the left"
        )
    return True


def _warn_cut(cfg: Config, cut: int) -> None:
    if cut:
        print(
            f"tandem: warning: {cut} prompt(s) over model.max_prompt_len={cfg.model.max_prompt_len} "
            "tokens are cut from the left (data.truncate_prompts)",
            file=sys.stderr,
        )


def tokenize(tokenizer: Any, records: Sequence[dict], cfg: Config) -> list[dict]:
    """Records -> token-id examples for the learners: `prompt_ids` (chat template; a prompt over
    model.max_prompt_len is an error, or cut from the left, see `check_prompt_len`) and
    `response_ids` / `chosen_ids` + `rejected_ids` (text + EOS, truncated)."""
    max_p, max_r = cfg.model.max_prompt_len, cfg.model.max_response_len
    out, cut = [], 0
    for i, rec in enumerate(records, 1):
        ids = prompt_ids(tokenizer, rec["prompt"])
        cut += check_prompt_len(cfg, len(ids), rec.get("origin") or f"record {i}")
        example = {"prompt_ids": ids[-max_p:]}
        for key in ("response", "chosen", "rejected"):
            if key in rec:
                example[f"{key}_ids"] = response_ids(tokenizer, rec[key])[:max_r]
        out.append(example)
    _warn_cut(cfg, cut)
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
