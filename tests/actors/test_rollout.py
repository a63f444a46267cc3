"""Rollout engines (real vLLM in Ray actors) and the reference actor: samples, their logprobs, order
over several engines."""

from __future__ import annotations

import pytest

from tandem.actors.rollout import RolloutGroup, _split
from tandem.actors.samples import Sample
from tandem.cluster.runtime import core_share
from tandem.config import Config

CFG = Config.model_validate(
    {
        "model": {"max_prompt_len": 24, "max_response_len": 12},
        "rollout": {"num_engines": 2, "kv_cache_mb": 16, "max_num_seqs": 32},
    }
)
PROMPTS = [f"sort: {i} {7 - i} {i % 3}" for i in range(7)]


@pytest.fixture(scope="module")
def tokenizer():
    from tandem.models import load_tokenizer

    return load_tokenizer(CFG.model.path)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    from tandem.data.chat import prompt_ids

    return [prompt_ids(tokenizer, p) for p in PROMPTS]


@pytest.fixture(scope="module")
def group(ray_session):
    group = RolloutGroup(CFG)
    yield group
    group.shutdown()


@pytest.fixture(scope="module")
def samples(group, prompt_ids) -> list[Sample]:
    return group.generate(prompt_ids, n=3)


@pytest.fixture(scope="module")
def reference(ray_session):
    """The frozen reference in its own actor, as PPO starts it."""
    from tandem.actors.reference import make_reference_actor

    ref = make_reference_actor(CFG, cpus=0.5)
    yield ref
    ray_session.kill(ref)


def test_split_is_contiguous_and_balanced():
    assert _split(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert _split(1, 2) == [(0, 1), (1, 1)]


def test_engines_report_startup(group):
    infos = group.wait_ready()
    assert len(infos) == 2 and all(0 < i["startup_s"] < 120 and i["weight_version"] == 0 for i in infos)
    # On CPU each engine computes on its share of the node's cores, not on Ray's 1 CPU.
    assert all(i["threads"] == core_share(2) for i in infos)


def test_samples_are_prompt_major_and_complete(samples, prompt_ids, tokenizer):
    assert [s.prompt_index for s in samples] == [i for i in range(len(PROMPTS)) for _ in range(3)]
    for s in samples:
        assert s.prompt_ids == prompt_ids[s.prompt_index]
        assert 1 <= len(s.response_ids) <= CFG.model.max_response_len
        assert len(s.logprobs) == len(s.response_ids) and all(lp <= 0 for lp in s.logprobs)
        assert s.finish_reason in ("stop", "length") and s.weight_version == 0
        assert (s.finish_reason == "stop") == (s.response_ids[-1] == tokenizer.eos_token_id)
        assert s.response_text == tokenizer.decode(s.response_ids, skip_special_tokens=True)
    # sampling at temperature 1 from a random model: the 3 samples of a prompt are not all equal
    assert any(
        len({tuple(s.response_ids) for s in samples[i : i + 3]}) > 1 for i in range(0, len(samples), 3)
    )


def test_rollout_logprobs_match_reference_actor(ray_session, samples, reference):
    """The sampler's logprobs equal a transformers forward over the same tokens (the frozen reference
    in its own actor), token for token: the premise of PPO's importance ratio on CPU float32."""
    from tandem.models import load_tokenizer
    from tandem.models.rows import Rows

    rows = Rows.from_ids(
        [s.prompt_ids for s in samples],
        [s.response_ids for s in samples],
        load_tokenizer("tiny-qwen2").pad_token_id,
    )
    ref_lp = ray_session.get(reference.logprobs.remote(ray_session.put(rows)))  # via the object store, as PPO
    assert ref_lp.shape == tuple(rows["mask"].shape)
    worst = max(abs(a - b) for s, r in zip(samples, ref_lp) for a, b in zip(s.logprobs, r))
    assert worst < 1e-4
    assert (ref_lp[rows["mask"].numpy() == 0] == 0).all()  # padding stays 0


def test_scoring_chained_on_the_draws_equals_scoring_the_batch(
    ray_session, group, prompt_ids, tokenizer, reference
):
    """PPO hands the reference and reward actors the engines' answers as refs, before they are drawn
    (Ray runs the calls once they are): the same numbers as the driver's batch scored afterwards."""
    import numpy as np

    from tandem.actors.reward import make_reward_actor
    from tandem.models.rows import Rows
    from tandem.recipes.ppo_batch import Generation

    # The task's reward scores nearly every answer of a random model 0: one of length instead.
    path = "tests.recipes.rewards:short_answer"
    cfg = Config.model_validate(
        CFG.model_dump() | {"reward": {"components": [{"kind": "function", "path": path}]}}
    )
    request = group.submit("draw", prompt_ids, n=2, seed=5)
    draws = [share.ref for share in request.shares]
    assert len(draws) == 2  # both engines' answers, in request order
    reward = make_reward_actor(cfg)
    chained = [
        reference.logprobs_of_draws.remote(prompt_ids, *draws),
        reward.score_draws.remote(PROMPTS, *draws),
    ]
    batch = Generation(1, prompt_ids, PROMPTS, request=request).batch()
    rows = Rows.from_ids(batch.prompt_ids, batch.responses_ids(), tokenizer.pad_token_id)
    direct = [
        reference.logprobs.remote(ray_session.put(rows)),
        reward.score.remote(batch.prompts, batch.responses),
    ]
    (ref_chained, reward_chained), (ref_direct, reward_direct) = (
        ray_session.get(chained),
        ray_session.get(direct),
    )
    ray_session.kill(reward)
    assert np.array_equal(ref_chained, ref_direct) and ref_direct.shape == tuple(batch.mask.shape)
    assert reward_chained == reward_direct and len(reward_direct.total) == 2 * len(PROMPTS)
    assert len(set(reward_direct.total)) > 1  # real scores of real answers, not a constant


def test_engine_score_equals_sample_logprobs(ray_session, group, samples):
    # One engine scores every sample, also those another engine drew (they hold the same weights).
    scored = ray_session.get(
        group.engines[0].score.remote([s.prompt_ids for s in samples], [s.response_ids for s in samples])
    )
    worst = max(abs(a - b) for s, r in zip(samples, scored) for a, b in zip(s.logprobs, r))
    assert worst < 1e-4


def test_greedy_is_the_same_on_every_engine(group, prompt_ids):
    """Engines hold the same weights: greedy answers do not depend on which engine got the prompt."""
    import ray

    one_engine = ray.get(group.engines[1].generate.remote(prompt_ids, greedy=True))
    spread = group.generate(prompt_ids, greedy=True)
    assert [s.response_ids for s in spread] == [s.response_ids for s in one_engine]


def test_seeded_sampling_is_reproducible_and_engine_independent(group, prompt_ids):
    import ray

    spread = group.generate(prompt_ids, n=2, seed=7)
    one_engine = ray.get(group.engines[0].generate.remote(prompt_ids, n=2, seed=7))
    assert [s.response_ids for s in spread] == [s.response_ids for s in one_engine]
    # seeds follow the prompt's place in the request: a repeated prompt still gets fresh samples
    first, second = group.generate([prompt_ids[0]] * 2, seed=7)
    assert first.response_ids != second.response_ids


def test_long_prompts_are_truncated_from_the_left(group):
    long_prompt = list(range(10, 10 + 3 * CFG.model.max_prompt_len))
    (sample,) = group.generate([long_prompt], max_tokens=2)
    assert sample.prompt_ids == long_prompt[-CFG.model.max_prompt_len :]


def _pid(engine) -> int:
    import os

    from tandem.cluster.calls import Callee, get_one

    return get_one(engine.__ray_call__.remote(lambda _: os.getpid()), "pid", 60, Callee("e"))


def _kill(pid: int) -> None:
    import os
    import signal

    os.kill(pid, signal.SIGKILL)


def test_a_killed_engine_heals_and_its_prompts_get_the_same_samples(group, prompt_ids, capsys):
    """kill -9 of an engine mid-request: a new engine in its place draws its prompts again, with their
    seeds, so the request answers exactly the uninterrupted samples; with no room for a new one, the
    surviving engine takes the share, with the same result. (Last in the module: it changes `group`.)"""
    expected = group.generate(prompt_ids, n=2, seed=11)
    dead = group.engines[0]
    pid = _pid(dead)  # before the request: it answers once its call is done
    request = group.submit("generate", prompt_ids, n=2, seed=11)
    _kill(pid)
    assert request.results() == expected
    assert group.heals.count == 1 and dead not in group.engines and len(group.engines) == 2
    assert [i["weight_version"] for i in group.wait_ready()] == [0, 0]
    assert "rollout engine 0 died during 'generate'" in capsys.readouterr().err
    # No room for another engine (a resource no node has) within the startup deadline: the other
    # engine draws the dead one's slice as well.
    group.cfg = Config.model_validate({**CFG.model_dump(), "run": {"timeouts": {"startup_s": 2}}})
    group.options[0] = {**group.options[0], "resources": {"no_such_node": 1}}
    pid = _pid(group.engines[0])
    request = group.submit("generate", prompt_ids, n=2, seed=11)
    _kill(pid)
    assert request.results() == expected
    assert group.heals.count == 2 and len(group.engines) == 1
    assert "no room to start another: the other 1 engine(s) take its share" in capsys.readouterr().err
