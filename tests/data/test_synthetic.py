"""Seeded datasets: splits are disjoint, and preference labels follow Bradley-Terry."""

from __future__ import annotations

import math

import pytest

from tandem.data.synthetic import bradley_terry_prob, preference_pairs, rl_prompts, sft_examples, split_of
from tandem.tasks import Task, get_task


def test_datasets_are_deterministic_and_seed_dependent():
    assert sft_examples("sort", 20, seed=3) == sft_examples("sort", 20, seed=3)
    assert rl_prompts("evens", 20, seed=3) == rl_prompts("evens", 20, seed=3)
    assert preference_pairs("evens", 20, seed=3) == preference_pairs("evens", 20, seed=3)
    assert rl_prompts("sort", 20, seed=3) != rl_prompts("sort", 20, seed=4)
    # A longer draw extends a shorter one: growing n does not reshuffle the data.
    assert rl_prompts("sort", 30, seed=3)[:20] == rl_prompts("sort", 20, seed=3)


@pytest.mark.parametrize("name", ["sort", "evens"])
def test_train_and_eval_prompts_are_disjoint(name):
    train = {p for p in rl_prompts(name, 400)} | {e["prompt"] for e in sft_examples(name, 400)}
    train |= {e["prompt"] for e in preference_pairs(name, 400)}
    held_out = set(rl_prompts(name, 200, split="eval")) | {
        e["prompt"] for e in sft_examples(name, 200, split="eval")
    }
    assert train and held_out and not train & held_out
    assert all(split_of(p) == "train" for p in train) and all(split_of(p) == "eval" for p in held_out)
    with pytest.raises(ValueError, match="split"):
        rl_prompts(name, 1, split="test")


def test_sft_examples_are_reference_answers():
    task = get_task("sort")
    for example in sft_examples(task, 50):
        assert set(example) == {"prompt", "response"}
        assert task.true_reward(example["prompt"], example["response"]) == 1.0


def test_demonstrator_slips_keep_the_prompts_and_hit_the_rate():
    task, n = get_task("sort"), 2000
    clean, noisy = sft_examples(task, n, seed=1), sft_examples(task, n, seed=1, error_rate=0.3)
    assert [e["prompt"] for e in clean] == [e["prompt"] for e in noisy]  # slips have their own stream
    slipped = [e for c, e in zip(clean, noisy) if c != e]
    # The slip is the unsorted input; an input that is already sorted slips into the right answer.
    assert all(e["response"] == e["prompt"].removeprefix("sort: ") for e in slipped)
    assert 0.25 < len(slipped) / n < 0.32  # 30% drawn, less the inputs already sorted (~8% of them)
    assert sft_examples(task, 50, seed=1, error_rate=1.0) != clean[:50]
    with pytest.raises(ValueError, match="error_rate"):
        sft_examples(task, 1, error_rate=1.5)


def test_bradley_terry_prob_by_hand():
    assert bradley_terry_prob(1.0, 0.0, 1.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert bradley_terry_prob(0.0, 0.5, 0.25) == pytest.approx(1 / (1 + math.exp(2)))
    assert bradley_terry_prob(0.3, 0.3, 0.1) == 0.5
    assert bradley_terry_prob(0.4, 0.3, 0.0) == 1.0 and bradley_terry_prob(0.3, 0.4, 0.0) == 0.0
    assert bradley_terry_prob(0.3, 0.3, 0.0) == 0.5
    assert (
        bradley_terry_prob(1e4, 0.0, 1e-3) == 1.0 and bradley_terry_prob(0.0, 1e4, 1e-3) == 0.0
    )  # no overflow
    with pytest.raises(ValueError):
        bradley_terry_prob(0.0, 1.0, -1.0)


@pytest.mark.parametrize("name", ["sort", "evens"])
def test_pairs_at_temperature_zero_choose_the_higher_annotator_score(name):
    task = get_task(name)
    pairs = preference_pairs(task, 300, seed=1, temperature=0.0)
    strict = 0
    for pair in pairs:
        assert set(pair) == {"prompt", "chosen", "rejected"} and pair["chosen"] != pair["rejected"]
        chosen = task.annotator_score(pair["prompt"], pair["chosen"])
        rejected = task.annotator_score(pair["prompt"], pair["rejected"])
        assert chosen >= rejected
        strict += chosen > rejected
    assert strict > 200  # ties are the exception


class _Coin(Task):
    """A task whose two candidates always differ by exactly 1 in annotator score."""

    name = "coin"

    def make_prompt(self, rng):
        return f"coin: {rng.randrange(10**6)}"

    def solve(self, prompt):
        return "good"

    def true_reward(self, prompt, response):
        return 1.0 if response == "good" else 0.0

    def corrupt(self, prompt, response, rng):
        return "bad" if response == "good" else "good"


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_pairs_choice_rate_matches_sigmoid(temperature):
    n = 4000
    pairs = preference_pairs(_Coin(), n, seed=0, temperature=temperature)
    rate = sum(p["chosen"] == "good" for p in pairs) / n
    expected = 1 / (1 + math.exp(-1 / temperature))
    # 4 standard errors of a binomial proportion: a seeded draw, but a fair tolerance.
    assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_evens_preferences_carry_the_length_bias():
    task = get_task("evens")
    pairs = preference_pairs(task, 1000, seed=0, temperature=0.1)
    longer = sum(len(p["chosen"].split()) > len(p["rejected"].split()) for p in pairs)
    shorter = sum(len(p["chosen"].split()) < len(p["rejected"].split()) for p in pairs)
    assert longer > 2 * shorter
    # And some pairs prefer a truly worse answer: what a reward model will learn to pay for.
    wrong = sum(
        task.true_reward(p["prompt"], p["chosen"]) < task.true_reward(p["prompt"], p["rejected"])
        for p in pairs
    )
    assert wrong > 50
