"""`tandem generate CONFIG`: sample from a model with vLLM and score the samples with the task's true reward.

Stages: resolve the model (building the embedded one if needed), load held-out prompts, start a vLLM
engine, generate, score, print.
"""

from __future__ import annotations

import argparse
import statistics
import time

from tandem.config import Config
from tandem.errors import UserError


def _prompts(cfg: Config) -> list[str]:
    from tandem.data import rl_prompts

    if cfg.data.task is None:
        raise UserError("`data.task` is null: `tandem generate` scores samples with a built-in task's true reward")
    return rl_prompts(cfg.data.task, cfg.data.num_eval, seed=cfg.run.seed, split="eval")


def main(cfg: Config, args: argparse.Namespace) -> int:
    from tandem.cluster.runtime import setup_env

    setup_env()
    from vllm import LLM, SamplingParams

    from tandem.data import get_task, prompt_ids
    from tandem.models import load_tokenizer, resolve_model

    path = resolve_model(cfg.model.path)
    tokenizer = load_tokenizer(path)
    prompts = _prompts(cfg)
    started = time.perf_counter()
    llm = LLM(
        model=path,
        dtype=cfg.model.dtype,
        enforce_eager=True,
        max_model_len=cfg.model.max_prompt_len + cfg.model.max_response_len,
        kv_cache_memory_bytes=cfg.rollout.kv_cache_mb << 20,
        max_num_seqs=cfg.rollout.max_num_seqs,
        seed=cfg.run.seed,
    )
    print(f"vLLM engine up in {time.perf_counter() - started:.1f} s")
    sampling = SamplingParams(
        temperature=cfg.rollout.sampling.temperature,
        top_p=cfg.rollout.sampling.top_p,
        top_k=cfg.rollout.sampling.top_k,
        max_tokens=cfg.model.max_response_len,
        seed=cfg.run.seed,
    )
    requests = [{"prompt_token_ids": prompt_ids(tokenizer, p)} for p in prompts]
    outputs = llm.generate(requests, sampling, use_tqdm=False)
    task = get_task(cfg.data.task)
    rewards = []
    for prompt, out in zip(prompts, outputs):
        response = out.outputs[0].text
        rewards.append(task.true_reward(prompt, response))
        print(f"{prompt!r:32} -> {response!r:28} true reward {rewards[-1]:.2f}")
    print(f"mean true reward over {len(rewards)} prompts: {statistics.fmean(rewards):.3f}")
    return 0
