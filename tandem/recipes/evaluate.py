"""Held-out evaluation of policies by the evaluation reward (`eval.reward`, else the built-in task's
true reward): greedy and sampled answers, standard errors, and the KL of the policy to a reference
(the number that says how far RL moved it). `evaluate_policy` scores one policy; `evaluate_before_after`
a trained model against the one it started from (the SFT, DPO and PPO summaries); the pipeline's
held-out table compares several (`tandem.recipes.pipeline`). Every policy answers the same prompts, so
differences are judged paired, prompt by prompt.

Plain transformers on the driver: the embedded models answer hundreds of prompts in seconds, and an
evaluation should not depend on the engines it is judging.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tandem.config import Config

Prompt = Any  # text, or chat messages (a list of {role, content})
#: Batched rewards of (prompt, response) pairs; prompts as text or chat messages.
Scorer = Callable[[Sequence[Prompt], Sequence[str]], list[float]]
#: The data-file kind whose prompts each job holds out (its `data.eval_files`).
EVAL_KINDS = {"sft": "sft", "dpo": "pairs", "ppo": "rl"}


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


def correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson's r; 0 when either side is constant (no linear relation to speak of)."""
    if len(xs) < 2 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return 0.0
    return statistics.correlation(xs, ys)


@dataclass
class Evaluation:
    """One policy's held-out scores."""

    rewards: dict[str, list[float]]  # mode ("greedy", "sampled") -> (N,) reward of each prompt's answer;
    # "{mode}/{proxy}" -> (N,) each proxy's score of the same answers
    metrics: dict[str, float]  # "{mode}/mean", "{mode}/stderr", "{mode}/length"; "kl_to_ref";
    # with proxies "{mode}/{proxy}", "{mode}/{proxy}_stderr", "{mode}/{proxy}_length_corr"
    lengths: dict[str, list[int]] = field(default_factory=dict)  # mode -> (N,) response tokens


@dataclass
class HeldOut:
    """What policies are evaluated on: the prompts and the reward that scores their answers."""

    prompts: list[Prompt]  # (N,) distinct, text or chat messages
    reward: Scorer
    reward_name: str  # the import path, or "<task> true reward"


def held_out(cfg: Config, kind: str, n: int) -> HeldOut | str:
    """The first `n` distinct held-out prompts (`data.eval_files` of `kind`, else the task's eval
    split) and the evaluation reward; or, when either is missing, the one line that says so."""
    from tandem.actors.reward import RewardScorer
    from tandem.config import RewardComponent
    from tandem.data import load_data_file, rl_prompts

    if cfg.eval.reward is None and cfg.data.task is None:
        return "held-out evaluation skipped: no evaluation reward (set eval.reward: package.module:function)"
    if cfg.data.eval_files:
        records = [r for f in cfg.data.eval_files for r in load_data_file(f, kind)]
        # Several pairs may share a prompt; repeats would understate the standard errors.
        prompts = list({json.dumps(r["prompt"], sort_keys=True): r["prompt"] for r in records}.values())[:n]
    elif cfg.data.task is not None:
        prompts = rl_prompts(cfg.data.task, n, seed=cfg.run.seed, split="eval")
    else:
        return "held-out evaluation skipped: no held-out prompts (set data.eval_files)"
    # A reward function component: the same loading, "task" default and checks of values as PPO's.
    component = RewardComponent(kind="function", path=cfg.eval.reward or "task", name="eval.reward")
    scorer = RewardScorer([component], task=cfg.data.task)
    name = cfg.eval.reward or f"{cfg.data.task} true reward"
    return HeldOut(prompts, lambda p, r: scorer.score(p, r).total, name)


def evaluate_policy(
    path: str,
    reward: Scorer,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    seed: int = 0,
    ref_path: str | None = None,
    proxies: Mapping[str, Scorer] | None = None,
) -> Evaluation:
    """Reward (mean, stderr) of greedy and sampled answers; with `ref_path`, KL(policy || ref)
    per response, estimated on the sampled answers as the sum of log pi - log pi_ref (k1, unbiased).
    `proxies` (name -> scorer, e.g. a reward model) score the same answers, so a proxy and the
    evaluation (gold) reward are compared answer by answer; each with its correlation to length."""
    from tandem.models import load_causal_lm, load_tokenizer
    from tandem.models.tokens import response_logprobs

    # One thread: the driver shares the cores with Ray actors, and an oversubscribed 2-thread
    # torch was measured 6x slower here (37.5 s against 6.4 s for 256 answers).
    torch.set_num_threads(1)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path).eval()
    rewards: dict[str, list[float]] = {}
    lengths: dict[str, list[int]] = {}
    out: dict[str, float] = {}
    for mode, sample in (("greedy", False), ("sampled", True)):
        answers = generate(model, tokenizer, prompts, max_new_tokens, sample, seed)
        rewards[mode] = reward(prompts, answers.texts)
        out[f"{mode}/mean"], out[f"{mode}/stderr"] = mean_and_stderr(rewards[mode])
        lengths[mode] = [len(r) for r in answers.response_ids]
        out[f"{mode}/length"] = statistics.fmean(lengths[mode])
        out[f"{mode}/length_corr"] = correlation(rewards[mode], lengths[mode])
        for name, proxy in (proxies or {}).items():
            rewards[f"{mode}/{name}"] = values = proxy(prompts, answers.texts)
            out[f"{mode}/{name}"], out[f"{mode}/{name}_stderr"] = mean_and_stderr(values)
            out[f"{mode}/{name}_length_corr"] = correlation(values, lengths[mode])
    if ref_path == path:
        out["kl_to_ref"] = 0.0  # its own reference: no second pass needed
    elif ref_path is not None:
        ref = load_causal_lm(ref_path).eval()
        pad = tokenizer.pad_token_id
        own = response_logprobs(model, answers.prompt_ids, answers.response_ids, pad)
        base = response_logprobs(ref, answers.prompt_ids, answers.response_ids, pad)
        out["kl_to_ref"] = statistics.fmean(sum(a) - sum(b) for a, b in zip(own, base))
    return Evaluation(rewards, out, lengths)


def paired_gain(new: Evaluation, old: Evaluation, mode: str = "sampled") -> float:
    """(new - old) in standard errors of the mean per-prompt difference: both answered the same
    prompts, so how hard each prompt is cancels out (tighter than comparing two independent means)."""
    diffs = [a - b for a, b in zip(new.rewards[mode], old.rewards[mode], strict=True)]
    mean, stderr = mean_and_stderr(diffs)
    if stderr > 0:
        return mean / stderr
    return math.copysign(math.inf, mean) if mean else 0.0


def format_table(
    results: dict[str, Evaluation], held: HeldOut, ref_name: str, gains: Sequence[tuple[str, str]]
) -> str:
    """The held-out table: one row per policy, then each (new, old) pair's paired gain."""
    lines = [
        f"{held.reward_name} on {len(held.prompts)} held-out prompts (mean +- standard error)",
        f"{'policy':8} {'sampled':>17} {'greedy':>17} {'length':>7} {'KL to ' + ref_name:>12}",
    ]
    for name, e in results.items():
        r = e.metrics
        lines.append(
            f"{name:8} {r['sampled/mean']:8.3f} +- {r['sampled/stderr']:5.3f} "
            f"{r['greedy/mean']:8.3f} +- {r['greedy/stderr']:5.3f} {r['sampled/length']:7.2f} "
            f"{r['kl_to_ref']:12.3f}"
        )
    for new, old in gains:
        sampled, greedy = (paired_gain(results[new], results[old], mode) for mode in ("sampled", "greedy"))
        lines.append(
            f"{new} - {old}: {sampled:+.1f} (sampled), {greedy:+.1f} (greedy) standard errors, paired"
        )
    return "\n".join(lines)


def compare_held_out(
    cfg: Config,
    kind: str,
    n: int,
    policies: dict[str, str],
    reference: str,
    base: str,
    gains: Sequence[tuple[str, str]],
) -> dict[str, Evaluation]:
    """Each policy (name -> path) evaluated on the same `n` held-out prompts of `kind`, with its KL
    to `reference`; prints the table (`format_table(results, held, base, gains)`) and returns the
    evaluations. {} and one line saying why without an evaluation reward or prompts."""
    held = held_out(cfg, kind, n)
    if isinstance(held, str):
        print(held)
        return {}
    results = {
        name: evaluate_policy(
            path, held.reward, held.prompts, cfg.model.max_response_len, cfg.run.seed, reference
        )
        for name, path in policies.items()
    }
    print(format_table(results, held, base, gains))
    return results


def evaluate_before_after(cfg: Config, initial: str, trained: str, job: str) -> dict[str, float]:
    """Print the held-out table of the trained model against the model it started from, and return
    `eval/true_reward/{greedy,sampled}` of the one and `eval/init_true_reward/...` of the other
    ({} with num_generate_eval 0; {} and one line saying why without an evaluation reward or prompts)."""
    if cfg.train.num_generate_eval == 0:
        return {}
    policies = {"initial": initial, job: trained}
    results = compare_held_out(
        cfg, EVAL_KINDS[job], cfg.train.num_generate_eval, policies, initial, "initial", [(job, "initial")]
    )
    out = {}
    if results:
        for prefix, name in (("eval/init_true_reward", "initial"), ("eval/true_reward", job)):
            out.update(
                {f"{prefix}/{mode}": results[name].metrics[f"{mode}/mean"] for mode in ("greedy", "sampled")}
            )
    return out
