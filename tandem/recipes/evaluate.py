"""Held-out evaluation of policies by a task's true reward: greedy and sampled answers, standard errors,
and the KL of the policy to a reference (the number that says how far RL moved it). `evaluate_policy`
scores one policy; `evaluate_before_after` a trained model against the one it started from (the SFT
and DPO summaries); the pipeline's held-out table compares several (`tandem.recipes.pipeline`).

Plain transformers on the driver: the embedded models answer hundreds of prompts in seconds, and an
evaluation should not depend on the engines it is judging.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tandem.config import Config


@dataclass
class Answers:
    prompt_ids: list[list[int]]  # (N, P_i)
    response_ids: list[list[int]]  # (N, R_i) up to and including EOS
    texts: list[str]  # (N,) decoded, special tokens skipped


@torch.no_grad()
def generate(
    model, tokenizer, prompts: Sequence, max_new_tokens: int, sample: bool, seed: int, batch_size: int = 128
) -> Answers:
    """Greedy or temperature-1 answers to chat prompts (text or messages)."""
    from tandem.data import prompt_ids

    ids = [prompt_ids(tokenizer, p) for p in prompts]
    torch.manual_seed(seed)
    responses: list[list[int]] = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        encoded = tokenizer.pad({"input_ids": chunk}, return_tensors="pt")  # left-padded (load_tokenizer)
        out = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=1.0 if sample else None,
            top_k=0 if sample else None,
            top_p=1.0 if sample else None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row in out[:, encoded["input_ids"].shape[1] :].tolist():
            cut = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
            responses.append(row[:cut])
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return Answers(ids, responses, texts)


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n))."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def evaluate_policy(
    path: str,
    task: str,
    prompts: Sequence[str],
    max_new_tokens: int,
    seed: int = 0,
    ref_path: str | None = None,
) -> dict[str, float]:
    """True reward (mean, stderr) of greedy and sampled answers; with `ref_path`, KL(policy || ref)
    per response, estimated on the sampled answers as the sum of log pi - log pi_ref (k1, unbiased)."""
    from tandem.data import get_task
    from tandem.models import load_causal_lm, load_tokenizer
    from tandem.models.tokens import response_logprobs

    # One thread: the driver shares the cores with Ray actors, and an oversubscribed 2-thread
    # torch was measured 6x slower here (37.5 s against 6.4 s for 256 answers).
    torch.set_num_threads(1)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path).eval()
    scorer = get_task(task)
    out: dict[str, float] = {}
    for mode, sample in (("greedy", False), ("sampled", True)):
        answers = generate(model, tokenizer, prompts, max_new_tokens, sample, seed)
        rewards = [scorer.true_reward(p, t) for p, t in zip(prompts, answers.texts, strict=True)]
        out[f"{mode}/mean"], out[f"{mode}/stderr"] = mean_and_stderr(rewards)
        out[f"{mode}/length"] = statistics.fmean(len(r) for r in answers.response_ids)
    if ref_path is not None:
        ref = load_causal_lm(ref_path).eval()
        pad = tokenizer.pad_token_id
        own = response_logprobs(model, answers.prompt_ids, answers.response_ids, pad)
        base = response_logprobs(ref, answers.prompt_ids, answers.response_ids, pad)
        out["kl_to_ref"] = statistics.fmean(sum(a) - sum(b) for a, b in zip(own, base))
    return out


def evaluate_before_after(cfg: Config, initial: str, trained: str) -> dict[str, float]:
    """`eval/true_reward/{greedy,sampled}` of the trained model and `eval/init_true_reward/...` of
    the model it started from, on held-out prompts ({} without a task or with num_generate_eval 0)."""
    from tandem.data import rl_prompts

    if cfg.data.task is None or cfg.train.num_generate_eval == 0:
        return {}
    prompts = rl_prompts(cfg.data.task, cfg.train.num_generate_eval, seed=cfg.run.seed, split="eval")
    out = {}
    for prefix, path in (("eval/init_true_reward", initial), ("eval/true_reward", trained)):
        result = evaluate_policy(path, cfg.data.task, prompts, cfg.model.max_response_len, cfg.run.seed)
        out.update({f"{prefix}/{mode}": result[f"{mode}/mean"] for mode in ("greedy", "sampled")})
    return out
