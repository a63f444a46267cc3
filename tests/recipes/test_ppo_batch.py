"""The PPO driver's pure stages: batch layout, KL-shaped advantages, metrics, against hand values."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from tandem.actors.samples import SampleBatch
from tandem.cluster.sharding import shard
from tandem.recipes.ppo_batch import RolloutBatch, compute_advantages, minibatches, pad_right, rollout_metrics


def sample(prompt_index, response_ids, logprobs, finish="stop", version=3):
    return SimpleNamespace(
        prompt_ids=[7, 8],
        response_ids=response_ids,
        logprobs=logprobs,
        response_text=" ".join(map(str, response_ids)),
        finish_reason=finish,
        weight_version=version,
        prompt_index=prompt_index,
    )


def make_batch():
    samples = [
        sample(0, [1, 2, 3], [-0.1, -0.2, -0.3]),
        sample(0, [4], [-0.5], finish="length"),
        sample(1, [5, 6], [-1.0, -2.0]),
        sample(1, [9, 9, 9], [-0.4, -0.4, -0.4]),
    ]
    return RolloutBatch.from_draw(SampleBatch.from_samples(samples), [[7, 8], [7, 9]], ["p0", "p1"])


def test_from_draw_layout():
    b = make_batch()
    assert b.prompts == ["p0", "p0", "p1", "p1"] and b.prompt_ids == [[7, 8], [7, 8], [7, 9], [7, 9]]
    assert b.response_ids.tolist() == [[1, 2, 3], [4, 0, 0], [5, 6, 0], [9, 9, 9]]
    assert [r.tolist() for r in b.responses_ids()] == [[1, 2, 3], [4], [5, 6], [9, 9, 9]]
    assert b.responses == ["1 2 3", "4", "5 6", "9 9 9"] and b.weight_versions == [3, 3, 3, 3]
    assert b.mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert b.rollout_logprobs[2].tolist() == pytest.approx([-1.0, -2.0, 0.0])
    assert b.truncated.tolist() == [False, True, False, False]
    assert b.lengths().tolist() == [3, 1, 2, 3]
    # The second of two learner ranks gets the second half, as `Roles` splits rows (`shard`).
    assert [r.tolist() for r in shard(b.responses_ids(), 2)[1]] == [[5, 6], [9, 9, 9]] and b.mask[
        2:
    ].tolist() == [
        [1, 1, 0],
        [1, 1, 1],
    ]


def test_pad_right():
    assert pad_right([[1, 2], [], [3]], value=-1).tolist() == [[1, 2], [-1, -1], [3, -1]]


def test_grpo_advantages_with_kl_penalty_by_hand():
    b = make_batch()
    b.scores = torch.tensor([1.0, 0.0, 0.5, 0.5])
    # The KL is the sampler's: pi_old (were it apart) plays no part.
    b.old_logprobs = b.rollout_logprobs + 5.0
    b.ref_logprobs = b.rollout_logprobs - 0.1 * b.mask  # k1 KL = 0.1 per response token
    m = compute_advantages(
        b, estimator="grpo", kl_estimator="k1", kl_coef=0.5, group_size=2, gamma=1.0, lam=1.0
    )
    # Sequence returns: score - 0.5 * 0.1 * length = [0.85, -0.05, 0.4, 0.35].
    # Group 0: mean 0.4, std (unbiased) = 0.45*sqrt(2) = 0.63640 -> +-0.70711; group 1: +-0.70711.
    expected = torch.tensor([0.70711, -0.70711, 0.70711, -0.70711])
    assert b.advantages[:, 0] == pytest.approx(expected, abs=1e-4)
    assert (b.advantages * (1 - b.mask)).abs().sum() == 0  # 0 off the response
    assert b.token_rewards[0].tolist() == pytest.approx([-0.05, -0.05, 0.95])  # score at the last token
    assert m["kl/mean"] == pytest.approx((0.3 + 0.1 + 0.2 + 0.3) / 4)
    assert m["kl/per_token"] == pytest.approx(0.1)


def test_with_the_kl_in_the_loss_the_reward_is_the_score_alone_and_the_kl_is_still_measured():
    b = make_batch()
    b.scores = torch.tensor([1.0, 0.0, 0.5, 0.5])
    b.ref_logprobs = b.rollout_logprobs - 0.1 * b.mask
    m = compute_advantages(
        b,
        estimator="grpo",
        kl_estimator="k1",
        kl_coef=0.5,
        group_size=2,
        gamma=1.0,
        lam=1.0,
        kl_in_reward=False,
    )
    assert b.token_rewards[0].tolist() == pytest.approx([0.0, 0.0, 1.0])
    # Returns are the scores: group 0 (1, 0) -> +-0.70711, group 1 (0.5, 0.5) -> 0 (no spread).
    assert b.advantages[:, 0] == pytest.approx(torch.tensor([0.70711, -0.70711, 0.0, 0.0]), abs=1e-4)
    assert m["kl/per_token"] == pytest.approx(0.1) and m["kl/coef"] == 0.5


def test_gae_uses_values():
    b = make_batch()
    b.scores = torch.tensor([1.0, 0.0, 0.0, 0.0])
    b.ref_logprobs = b.rollout_logprobs
    b.values = torch.full((4, 3), 0.5) * b.mask
    compute_advantages(b, estimator="gae", kl_estimator="k1", kl_coef=0.0, group_size=2, gamma=1.0, lam=1.0)
    # gamma = lam = 1: A_t = sum of future rewards - V_t = 1 - 0.5 on every token of row 0.
    assert b.advantages[0].tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert b.returns[0].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_metrics_length_correlation_and_mismatch():
    b = make_batch()
    b.scores = b.lengths().float()  # reward == length: the length trap, correlation 1
    b.reward_components = {"rm": b.scores}
    b.old_logprobs = b.rollout_logprobs + 0.01 * b.mask
    m = rollout_metrics(b, true_rewards=[1.0, 0.0, 1.0, 0.0])
    assert m["rollout/reward_length_corr"] == pytest.approx(1.0)
    assert m["rollout/logprob_mismatch"] == pytest.approx(0.01, abs=1e-6)
    assert m["rollout/response_length/mean"] == pytest.approx(2.25)
    assert m["rollout/response_length/clip_frac"] == pytest.approx(0.25)
    assert m["true_reward/mean"] == pytest.approx(0.5)
    assert m["reward/rm"] == pytest.approx(2.25)


def test_sample_batches_concat_and_a_generation_round_trips_through_json():
    import json

    from tandem.recipes.ppo_batch import Generation

    a = SampleBatch.from_samples([sample(0, [1, 2, 3], [-0.1, -0.2, -0.3])])
    b = SampleBatch.from_samples([sample(1, [4], [-0.5], finish="length", version=2)])
    both = SampleBatch.concat([a, b])
    assert both.response_ids.tolist() == [[1, 2, 3], [4, 0, 0]] and both.lengths.tolist() == [3, 1]
    assert both.weight_versions.tolist() == [3, 2] and both.truncated.tolist() == [False, True]
    gen = Generation(5, [[7, 8], [7, 9]], ["p0", "p1"], drawn=both)
    back = Generation.from_state_dict(json.loads(json.dumps(gen.state_dict())))
    x, y = gen.batch(), back.batch()
    assert back.step == 5 and x.prompts == y.prompts and x.responses == y.responses
    assert x.rollout_logprobs.equal(y.rollout_logprobs) and x.response_ids.equal(y.response_ids)
    assert x.weight_versions == y.weight_versions and x.truncated.equal(y.truncated)


def test_minibatches_are_each_epochs_shuffled_rows_cut_in_order():
    rng, plan = random.Random(7), minibatches(random.Random(7), 6, epochs=2, per_epoch=3)
    for epoch in range(2):
        order = list(range(6))
        rng.shuffle(order)  # one shuffle per epoch, from the driver's RNG, in this order
        assert plan[3 * epoch : 3 * epoch + 3] == [order[0:2], order[2:4], order[4:6]]
    assert len(plan) == 6 and sorted(plan[3] + plan[4] + plan[5]) == list(range(6))  # every row once an epoch
