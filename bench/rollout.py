"""Rollout throughput of one vLLM engine (a Ray actor) on the embedded tiny model."""

from __future__ import annotations

import time

from _common import ray_up

TITLE = "rollout: one vLLM engine, tiny-qwen2, sampling at temperature 1"
PROMPTS, SAMPLES, MAX_TOKENS = 64, 4, 32


def run() -> list[tuple]:
    from tandem.actors.rollout import RolloutGroup
    from tandem.config import Config
    from tandem.data import prompt_ids, rl_prompts
    from tandem.models import load_tokenizer

    ray_up()
    cfg = Config.model_validate(
        {"model": {"max_response_len": MAX_TOKENS}, "rollout": {"max_num_seqs": PROMPTS * SAMPLES}}
    )
    tok = load_tokenizer(cfg.model.path)
    prompts = [prompt_ids(tok, p) for p in rl_prompts("sort", PROMPTS, seed=0, split="eval")]
    group = RolloutGroup(cfg)
    try:
        startup = group.wait_ready()[0]["startup_s"]
        group.generate(prompts[:4], n=1)  # warm-up (first-call kernel setup)
        started = time.perf_counter()
        samples = group.generate(prompts, n=SAMPLES)
        seconds = time.perf_counter() - started
    finally:
        group.shutdown()
    tokens = sum(len(s.response_ids) for s in samples)
    return [
        ("engine startup", startup, "s", "LLM() in the actor, in-process engine"),
        ("generate", seconds, "s", f"{PROMPTS} prompts x {SAMPLES} samples, <= {MAX_TOKENS} tokens each"),
        ("response tokens", tokens, "tokens", ""),
        ("throughput", tokens / seconds, "tokens/s", "response tokens / generate time"),
    ]
