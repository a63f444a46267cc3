"""`rollout.backend: transformers` in-process: its samples, their logprobs and its sampling law,
against the model's own forward. (Against a vLLM engine: tests/models/test_vllm_logprobs.py, which
runs vLLM in-process after the tests that set torch's threads, which vLLM's CPU worker forbids;
its weight sync over the broadcast group: tests/cluster/test_weight_sync.py.)"""

from __future__ import annotations

import pytest
import torch

from tandem.actors.rollout import RolloutEngine, engine_class
from tandem.actors.transformers_engine import TransformersEngine
from tandem.config import Config, RolloutConfig

CFG = Config.model_validate(
    {
        "model": {"max_prompt_len": 24, "max_response_len": 12},
        "rollout": {"backend": "transformers", "max_num_seqs": 5, "kv_cache_mb": 16},
    }
)
PROMPTS = [f"sort: {i} {7 - i} {i % 3}" for i in range(4)]


@pytest.fixture(scope="module")
def engine() -> TransformersEngine:
    return engine_class(CFG.rollout)(CFG.model, CFG.rollout, seed=0)


@pytest.fixture(scope="module")
def prompt_ids(engine):
    from tandem.data.chat import prompt_ids

    return [prompt_ids(engine.tokenizer, p) for p in PROMPTS]


def test_the_backend_is_chosen_by_config():
    assert engine_class(CFG.rollout) is TransformersEngine
    assert engine_class(RolloutConfig()) is RolloutEngine
    with pytest.raises(ValueError, match="tensor_parallel_size must be 1"):
        RolloutConfig(backend="transformers", tensor_parallel_size=2)


def test_samples_carry_the_models_logprobs_and_end_where_they_stop(engine, prompt_ids):
    from tandem.models import load_causal_lm
    from tandem.models.tokens import response_logprobs

    # 4 prompts x 3 in batches of 5: rows of one prompt straddle batches
    samples = engine.generate(prompt_ids, n=3, seed=11)
    assert [s.prompt_index for s in samples] == [i for i in range(4) for _ in range(3)]
    model = load_causal_lm(CFG.model.path).eval()
    pad = engine.tokenizer.pad_token_id
    expected = response_logprobs(
        model, [s.prompt_ids for s in samples], [s.response_ids for s in samples], pad
    )
    for sample, want in zip(samples, expected):
        assert len(sample.logprobs) == len(sample.response_ids) > 0
        assert max(abs(a - b) for a, b in zip(sample.logprobs, want)) < 1e-5
        stops = [t for t in sample.response_ids if t in engine.stop_ids.tolist()]
        if sample.finish_reason == "stop":  # EOS ends the response and is kept
            assert stops == [sample.response_ids[-1]]
        else:
            assert sample.finish_reason == "length" and not stops
            assert len(sample.response_ids) == CFG.model.max_response_len
    assert sample.response_text == engine.tokenizer.decode(sample.response_ids, skip_special_tokens=True)


def test_seeded_samples_do_not_depend_on_how_the_request_is_split(engine, prompt_ids):
    whole = engine.generate(prompt_ids, n=2, seed=3)
    halves = engine.generate(prompt_ids[:1], n=2, seed=3) + engine.generate(
        prompt_ids[1:], n=2, seed=3, index_offset=1
    )
    assert [s.response_ids for s in whole] == [s.response_ids for s in halves]
    assert [s.prompt_index for s in whole] == [s.prompt_index for s in halves]
    assert whole[0].response_ids != whole[1].response_ids  # each sample its own generator
    assert [s.response_ids for s in engine.generate(prompt_ids, n=2, seed=4)] != [
        s.response_ids for s in whole
    ]


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, -1, 1.0), (0.5, 4, 1.0), (1.0, -1, 0.6)])
def test_first_tokens_follow_the_filtered_tempered_distribution(prompt_ids, temperature, top_k, top_p):
    """4000 one-token draws of one prompt against the law computed by hand from the logits:
    softmax(logits / T) over the top-k tokens, or over the fewest top tokens whose mass reaches p."""
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    rollout = RolloutConfig.model_validate(
        {**CFG.rollout.model_dump(), "max_num_seqs": 1000, "sampling": sampling}
    )
    engine = TransformersEngine(CFG.model, rollout)
    with torch.no_grad():
        # The untrained model's law is nearly flat (top token 0.5%), where a wrong temperature
        # hardly shows: scaling the final norm scales the logits 8x (top tokens 19%, 14%, 8%).
        engine.model.model.norm.weight.mul_(8)
        logits = engine.model(torch.tensor([prompt_ids[0]])).logits[0, -1]
    probs = (logits / temperature).softmax(-1)
    ranked = probs.argsort(descending=True)
    if top_k > 0:
        keep = ranked[:top_k]
    else:  # the nucleus: every token whose higher-ranked mass is still below p
        above = probs[ranked].cumsum(0) - probs[ranked]
        keep = ranked[above < top_p]
    law = torch.zeros_like(probs)
    law[keep] = probs[keep] / probs[keep].sum()
    draws = engine.generate(prompt_ids[:1], n=4000, max_tokens=1, seed=0)
    counts = torch.bincount(torch.tensor([s.response_ids[0] for s in draws]), minlength=len(law))
    assert set(counts.nonzero()[:, 0].tolist()) <= set(keep.tolist())
    # Total variation over the 8 likeliest tokens and the rest as one bin (over every token, 4000
    # draws of a spread-out law are 0.1 off by chance alone): a biased sampler is off by more.
    top = law.argsort(descending=True)[:8]
    seen, want = counts[top] / 4000, law[top]
    assert 0.5 * ((seen - want).abs().sum() + (seen.sum() - want.sum()).abs()) < 0.04
