"""Weight sync end to end: a 2-rank ZeRO-3 DeepSpeed learner streams its weights over the gloo
broadcast group into 2 vLLM engines (real Ray, vLLM, DeepSpeed), which then score sequences exactly
as the learner does."""

from __future__ import annotations

import sys

import pytest
from ray import cloudpickle

from tandem.actors.rollout import RolloutGroup
from tandem.cluster.groups import ActorGroup
from tandem.cluster.weight_sync import WeightSync
from tandem.config import Config, LearnerConfig
from tandem.learners import SFTLearner

# Ray workers cannot import test modules: ship this module's classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

LEARNER = LearnerConfig.model_validate(
    {
        "world_size": 2,
        "zero_stage": 3,
        "micro_batch_size": 2,
        "global_batch_size": 4,
        "optim": {"lr": 0.01, "warmup_steps": 0},
    }
)
# 1 MiB buckets cut the 3.4 MB model mid-layer (q_proj in one bucket, k/v_proj in the next), which
# the engine must reassemble into its fused qkv_proj.
CFG = Config.model_validate(
    {
        "model": {"max_prompt_len": 24, "max_response_len": 12},
        "rollout": {"num_engines": 2, "kv_cache_mb": 16, "max_num_seqs": 16, "sync_bucket_mb": 1},
    }
)
TOLERANCE = 1e-4  # float32 everywhere


class PolicyRank(SFTLearner):
    """An SFT learner that can also report its logprobs (a ZeRO-3 forward: every rank calls it)."""

    def logprobs(self, prompt_ids, response_ids):
        from tandem.models.tokens import response_logprobs

        self.engine.eval()
        return response_logprobs(self.engine.module, prompt_ids, response_ids, self.pad_id)


@pytest.fixture(scope="module")
def sequences():
    from tandem.data import get_task, prompt_ids, response_ids
    from tandem.models import load_tokenizer

    tok, task = load_tokenizer(CFG.model.path), get_task("sort")
    prompts = [f"sort: {i} {(3 * i) % 10} {(7 * i) % 10}" for i in range(6)]
    return [prompt_ids(tok, p) for p in prompts], [response_ids(tok, task.solve(p)) for p in prompts]


@pytest.fixture(scope="module")
def setup(ray_session, sequences):
    learners = ActorGroup("policy", PolicyRank, 2, cpus_per_actor=1, args=(LEARNER, CFG.model.path, 100))
    started = learners.async_call("setup")  # DeepSpeed init overlaps the engines' start
    engines = RolloutGroup(CFG)
    params = learners.collect(started, "setup")[0]["params"]
    sync = WeightSync(learners, engines.engines, CFG.rollout.sync_bucket_mb)
    sync.setup()
    yield learners, engines, sync, params
    engines.shutdown()
    learners.shutdown()


class _Learner:
    def __init__(self, model):
        self.model, self.rank, self.world_size = model, 0, 1


def test_stream_round_trip_over_gloo():
    """The wire format alone (no Ray, no vLLM): every tensor arrives with its name, shape, dtype and
    values, in order, across bucket cuts by size and by dtype."""
    import threading

    import torch
    import torch.distributed as dist

    from tandem.cluster.weight_sync import BroadcastGroup, receive_stream
    from tandem.learners.sync import _buckets, init_sender, send_weights

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 600), torch.nn.Linear(600, 300), torch.nn.LayerNorm(300))
    model[2].to(torch.bfloat16)  # a dtype change forces a cut
    cuts = [[n for n, _ in b] for b in _buckets(model, 1 << 20)]
    # 0.weight is 720 kB and 1.weight too: they cannot share a 1 MiB bucket; bf16 gets its own
    assert cuts == [["0.weight", "0.bias"], ["1.weight", "1.bias"], ["2.weight", "2.bias"]]

    store = dist.TCPStore("127.0.0.1", 0, world_size=None, is_master=True, wait_for_workers=False)
    received, sent = [], []

    def receive():
        group = BroadcastGroup("127.0.0.1", store.port, 1, 2, backend="gloo", timeout_s=60)
        received.extend(receive_stream(group))

    thread = threading.Thread(target=receive)
    thread.start()
    learner = _Learner(model)
    init_sender(learner, "127.0.0.1", store.port, 2, timeout_s=60)
    sent.append(send_weights(learner, bucket_mb=1))
    thread.join(timeout=60)
    expected = list(model.named_parameters())
    assert [n for n, _ in received] == [n for n, _ in expected]
    for (_, got), (_, want) in zip(received, expected):
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want.detach())
    assert sent == [sum(p.numel() * p.element_size() for _, p in expected)]


def test_a_non_finite_weight_is_never_sent():
    """Refused before the stream starts (no group needed: nothing reaches it)."""
    import torch

    from tandem.learners.finite import NonFiniteError
    from tandem.learners.sync import send_weights

    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(NonFiniteError, match="not synced to the rollout engines"):
        send_weights(_Learner(model), bucket_mb=1)


def _train_step(learners, sequences):
    prompts, responses = sequences
    examples = [{"prompt_ids": p, "response_ids": r} for p, r in zip(prompts, responses)]
    learners.call_per_rank("train_batch", [(examples[0:2],), (examples[2:4],)])


def _max_diff(a, b):
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(abs(x - y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def _engine_logprobs(engines, sequences):
    import ray

    return ray.get([e.score.remote(*sequences) for e in engines.engines])


@pytest.mark.slow
def test_sync_makes_engines_match_learner(setup, sequences):
    learners, engines, sync, params = setup
    learner_lp = learners.call("logprobs", *sequences)
    assert _max_diff(learner_lp[0], learner_lp[1]) == 0.0  # ranks agree
    for engine_lp in _engine_logprobs(engines, sequences):  # same initial weights
        assert _max_diff(engine_lp, learner_lp[0]) < TOLERANCE

    _train_step(learners, sequences)
    updated = learners.call("logprobs", *sequences)[0]
    assert _max_diff(updated, learner_lp[0]) > 1e-2  # the update moved the policy
    for engine_lp in _engine_logprobs(engines, sequences):  # not synced yet: the engines lag
        assert _max_diff(engine_lp, updated) > 1e-2

    assert sync.sync() == [1, 1]
    # every float32 parameter crossed once (the tied lm_head is the embedding: not sent twice)
    assert {info["last_sync"]["bytes"] for info in engines.wait_ready()} == {params * 4}
    for engine_lp in _engine_logprobs(engines, sequences):
        assert _max_diff(engine_lp, updated) < TOLERANCE

    # a second round: the group is reusable and versions keep counting
    _train_step(learners, sequences)
    again = learners.call("logprobs", *sequences)[0]
    assert sync.sync() == [2, 2]
    for engine_lp in _engine_logprobs(engines, sequences):
        assert _max_diff(engine_lp, again) < TOLERANCE
    samples = engines.generate(sequences[0][:2], n=1)
    assert {s.weight_version for s in samples} == {2}


@pytest.mark.slow
def test_a_replaced_engine_gets_the_weights_then_syncs_with_the_survivor(setup, sequences):
    """(After the test above: the engines hold version 2.) kill -9 of engine 0 mid-request: its
    replacement loads the learner's weights at the others' version alone, before it draws the lost
    prompts; the next sync, over a group made again, reaches it and the survivor (whose old group
    lost a member) alike."""
    import os
    import signal

    from tandem.actors.rollout_request import replace_engine
    from tandem.cluster.calls import Callee, get_one

    learners, engines, _, _ = setup
    current = learners.call("logprobs", *sequences)[0]
    armed = []

    def arm(engine, node, load):
        armed.append(WeightSync(learners, [engine], CFG.rollout.sync_bucket_mb).sync(2))

    engines.on_replace = arm
    dead = engines.engines[0]
    pid = get_one(dead.__ray_call__.remote(lambda _: os.getpid()), "pid", 60, Callee("engine 0"))
    request = engines.submit("generate", sequences[0], n=1, seed=5)
    os.kill(pid, signal.SIGKILL)
    samples = request.results()
    assert armed == [[2]] and replace_engine(engines, dead, None) is engines.engines[0]  # healed once
    assert len(samples) == len(sequences[0]) and {s.weight_version for s in samples} == {2}
    for engine_lp in _engine_logprobs(engines, sequences):
        assert _max_diff(engine_lp, current) < TOLERANCE
    _train_step(learners, sequences)
    updated = learners.call("logprobs", *sequences)[0]
    assert WeightSync(learners, engines.engines, CFG.rollout.sync_bucket_mb).sync(3) == [3, 3]
    for engine_lp in _engine_logprobs(engines, sequences):
        assert _max_diff(engine_lp, updated) < TOLERANCE


@pytest.mark.slow
def test_a_transformers_engine_takes_the_same_stream(setup, sequences):
    """`rollout.backend: transformers` joins a broadcast group as one rank and loads the stream by
    name (tied lm_head included, through the embedding): it then scores as the learner does, down
    to float32 rounding, and samples with the new version."""
    learners, _, _, _ = setup
    cfg = CFG.model_copy(
        update={"rollout": CFG.rollout.model_copy(update={"backend": "transformers", "num_engines": 1})}
    )
    engines = RolloutGroup(cfg)
    try:
        _train_step(learners, sequences)  # away from the initial weights the engine starts with
        trained = learners.call("logprobs", *sequences)[0]
        assert _max_diff(_engine_logprobs(engines, sequences)[0], trained) > 1e-2
        assert WeightSync(learners, engines.engines, CFG.rollout.sync_bucket_mb).sync(7) == [7]
        assert _max_diff(_engine_logprobs(engines, sequences)[0], trained) < 1e-5
        samples = engines.generate(sequences[0][:2], n=2, seed=1)
        assert len(samples) == 4 and {s.weight_version for s in samples} == {7}
    finally:
        engines.shutdown()
