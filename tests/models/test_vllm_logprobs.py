"""The key agreement: vLLM's logprobs of the tokens it samples equal transformers' in float32.

PPO's importance ratios and KL penalty compare the generator's logprobs with the learner's; on the
embedded models the two engines must agree, or every later number is off.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch

from tandem.data.chat import prompt_ids
from tandem.data.synthetic import rl_prompts
from tandem.models import load_causal_lm, load_tokenizer

pytestmark = pytest.mark.slow  # end to end: real Ray, vLLM and DeepSpeed processes

TOLERANCE = 1e-4


def _hf_logprobs(model, sequences: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
    """Logprob of each response token given everything before it, for (prompt, response) pairs:
    one float32 forward of the right-padded batch (causal attention: padding after a token cannot
    change it, and every row starts at position 0)."""
    rows = [prompt + response for prompt, response in sequences]
    width = max(map(len, rows))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])  # (B, T)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])  # (B, T)
    with torch.no_grad():
        logprobs = torch.log_softmax(
            model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1
        )  # (B, T, V)
    out = []
    for row, (prompt, response) in enumerate(sequences):
        positions = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)  # each predicts the next
        out.append(logprobs[row, positions, torch.tensor(response)])
    return out


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_vllm_sampled_logprobs_match_transformers(name, model_dirs):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
    from vllm import LLM, SamplingParams

    tokenizer = load_tokenizer(name)
    prompts = [prompt_ids(tokenizer, p) for p in rl_prompts("sort", 2) + rl_prompts("evens", 2)]
    llm = LLM(
        model=str(model_dirs[name]),
        dtype="float32",
        enforce_eager=True,
        max_model_len=128,
        kv_cache_memory_bytes=64 << 20,
        max_num_seqs=8,
        seed=0,
    )
    try:
        params = SamplingParams(n=4, temperature=1.0, max_tokens=16, logprobs=0)
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    finally:
        del llm  # one engine at a time: free it before the next architecture's
        gc.collect()

    sequences, vllm_logprobs = [], []
    for prompt, output in zip(prompts, outputs):
        assert len(output.outputs) == 4
        for completion in output.outputs:
            response = list(completion.token_ids)
            sequences.append((prompt, response))
            # logprobs=0: one {token_id: Logprob} per position, holding the sampled token.
            vllm_logprobs.append(
                torch.tensor([completion.logprobs[i][t].logprob for i, t in enumerate(response)])
            )
    hf_logprobs = _hf_logprobs(load_causal_lm(name).eval(), sequences)
    worst = max((v - h).abs().max().item() for v, h in zip(vllm_logprobs, hf_logprobs))
    sampled = sum(len(r) for _, r in sequences)
    print(f"{name}: {sampled} sampled tokens, max |vLLM - HF| logprob = {worst:.2e}")
    assert sampled > 50 and worst < TOLERANCE


def test_a_compiled_engine_samples_with_the_weights_loaded_in_place(model_dirs):
    """`rollout.enforce_eager: false` on CPU (torch.compile): after an in-place load of other weights,
    as every weight sync does, the engine samples with the new weights' logprobs, not stale ones
    held in the compiled graph."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
    from tandem.actors.rollout import RolloutEngine
    from tandem.actors.vllm_ext import load_in_place
    from tandem.config import ModelConfig, RolloutConfig

    model = ModelConfig(path=str(model_dirs["tiny-qwen2"]), max_prompt_len=32, max_response_len=16)
    engine = RolloutEngine(model, RolloutConfig(enforce_eager=False, kv_cache_mb=16, max_num_seqs=8))
    try:
        assert engine.llm.llm_engine.vllm_config.model_config.enforce_eager is False
        torch.manual_seed(0)
        moved = load_causal_lm("tiny-qwen2").eval()
        with torch.no_grad():
            for p in moved.parameters():
                p.add_(0.05 * torch.randn_like(p))
        weights = [(name, p.detach().clone()) for name, p in moved.state_dict().items()]
        engine.llm.collective_rpc(lambda worker: load_in_place(worker, iter(weights)))
        engine.llm.reset_prefix_cache()
        prompts = [prompt_ids(engine.tokenizer, p) for p in rl_prompts("sort", 4)]
        samples = engine.generate(prompts, n=2, seed=1)
    finally:
        del engine
        gc.collect()
    sequences = [(s.prompt_ids, s.response_ids) for s in samples]
    drawn = [torch.tensor(s.logprobs) for s in samples]
    worst = max((d - h).abs().max().item() for d, h in zip(drawn, _hf_logprobs(moved, sequences)))
    stale = max(
        (d - h).abs().max().item()
        for d, h in zip(drawn, _hf_logprobs(load_causal_lm("tiny-qwen2").eval(), sequences))
    )
    assert worst < TOLERANCE and stale > 1e-2, (worst, stale)


def test_the_transformers_engine_answers_greedy_and_scores_as_vllm_does():
    """`rollout.backend: transformers` and vLLM on the same weights: the same greedy answers, and
    logprobs (sampled and scored) equal to vLLM's float32 tolerance."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
    from tandem.actors.rollout import RolloutEngine
    from tandem.actors.transformers_engine import TransformersEngine
    from tandem.config import ModelConfig, RolloutConfig

    model = ModelConfig(max_prompt_len=32, max_response_len=16)
    rollout = RolloutConfig(kv_cache_mb=16, max_num_seqs=8)
    ours = TransformersEngine(model, rollout.model_copy(update={"backend": "transformers"}))
    theirs = RolloutEngine(model, rollout)
    try:
        prompts = [prompt_ids(ours.tokenizer, p) for p in rl_prompts("sort", 6)]
        a, b = ours.generate(prompts, greedy=True), theirs.generate(prompts, greedy=True)
        sequences = [s.prompt_ids for s in a], [s.response_ids for s in a]
        scored = ours.score(*sequences), theirs.score(*sequences)
    finally:
        del theirs
        gc.collect()
    assert [s.response_ids for s in a] == [s.response_ids for s in b]
    drawn = max(abs(x - y) for s, t in zip(a, b) for x, y in zip(s.logprobs, t.logprobs))
    rescored = max(abs(x - y) for s, t in zip(*scored) for x, y in zip(s, t))
    assert drawn < TOLERANCE and rescored < TOLERANCE, (drawn, rescored)
