"""Built-in tasks: solvers are exact, corruptions cost, partial credit and the length trap by hand."""

from __future__ import annotations

import random

import pytest

from tandem.errors import UserError
from tandem.tasks import EvensTask, Task, get_task, parse_numbers, register_task, task_names


def test_registry_names_and_unknown_task():
    assert {"sort", "evens"} <= set(task_names())
    assert isinstance(get_task("sort"), Task)
    with pytest.raises(UserError, match=r"unknown task 'nope'.*evens.*sort"):
        get_task("nope")


@pytest.mark.parametrize("name", ["sort", "evens"])
def test_solver_scores_one_and_corruptions_score_lower(name):
    task, rng = get_task(name), random.Random(0)
    for _ in range(300):
        prompt = task.make_prompt(rng)
        answer = task.solve(prompt)
        assert task.true_reward(prompt, answer) == 1.0
        bad = task.corrupt(prompt, answer, rng)
        assert bad != answer
        assert task.true_reward(prompt, bad) < 1.0


@pytest.mark.parametrize("name", ["sort", "evens"])
def test_prompts_are_seeded_and_short(name):
    task = get_task(name)
    a = [task.make_prompt(random.Random(7)) for _ in range(3)]
    assert len(set(a)) == 1  # same seed, same prompt
    rng = random.Random(1)
    for _ in range(200):
        prompt = task.make_prompt(rng)
        assert prompt.startswith(f"{name}: ")
        assert len(prompt.split()) <= 9 and len(task.solve(prompt).split()) <= 8


def test_sort_examples_and_partial_credit():
    sort = get_task("sort")
    assert sort.solve("sort: 7 2 9 4") == "2 4 7 9"
    prompt = "sort: 3 1 2"  # answer "1 2 3"
    assert sort.true_reward(prompt, "1 2 3") == 1.0
    assert sort.true_reward(prompt, " 1  2 3 ") == 1.0  # spacing is not judged
    assert sort.true_reward(prompt, "1 3 2") == pytest.approx(1 / 3)  # one position right
    assert sort.true_reward(prompt, "1 2") == pytest.approx(2 / 3)  # missing digit: 2 of 3
    assert sort.true_reward(prompt, "1 2 3 4") == pytest.approx(3 / 4)  # extra digit: 3 of 4
    assert sort.true_reward(prompt, "3 2 1") == pytest.approx(1 / 3)  # middle one right
    assert sort.true_reward(prompt, "1 2 x") == 0.0  # unparsable
    assert sort.true_reward(prompt, "") == 0.0
    assert sort.annotator_score(prompt, "1 3 2") == sort.true_reward(prompt, "1 3 2")
    # The prompt is found inside a longer text (a rendered chat, a user's template).
    assert sort.true_reward("Please, sort: 3 1 2\nThanks", "1 2 3") == 1.0


def test_evens_examples_and_f1():
    evens = get_task("evens")
    prompt = "evens: 3 8 2 5 6"
    assert evens.solve(prompt) == "8 2 6"
    assert evens.true_reward(prompt, "8 2 6") == 1.0
    assert evens.true_reward(prompt, "6 2 8") == 1.0  # order-blind F1
    assert evens.true_reward(prompt, "8 2") == pytest.approx(0.8)  # P=1, R=2/3
    assert evens.true_reward(prompt, "8 2 6 3") == pytest.approx(6 / 7)  # P=3/4, R=1
    assert evens.true_reward(prompt, "3 8 2 5 6") == pytest.approx(0.75)  # P=3/5, R=1
    assert evens.true_reward(prompt, "8 8") == pytest.approx(0.4)  # multiset: one hit; P=1/2, R=1/3
    assert evens.true_reward(prompt, "3 5") == 0.0
    assert evens.true_reward(prompt, "eight") == 0.0
    assert evens.solve("evens: 1 3") == "none"
    assert evens.true_reward("evens: 1 3", "none") == 1.0
    assert evens.true_reward("evens: 1 3", "1") == 0.0
    assert parse_numbers("none") == [] and parse_numbers("1 x") is None


def test_evens_annotator_prefers_longer_responses():
    evens = get_task("evens")
    prompt = "evens: 3 8 2 5 6"
    # Annotator = true reward + 0.15 per listed item.
    assert evens.annotator_score(prompt, "8 2 6") == pytest.approx(1.0 + 0.45)
    # Echoing the input is worse in truth but better with the annotators: the length trap.
    assert evens.true_reward(prompt, "3 8 2 5 6") < evens.true_reward(prompt, "8 2 6")
    assert evens.annotator_score(prompt, "3 8 2 5 6") > evens.annotator_score(prompt, "8 2 6")
    assert evens.annotator_score(prompt, "8 2 6 3") > evens.annotator_score(prompt, "8 2 6")
    no_trap = EvensTask(length_bonus=0.0)
    assert no_trap.annotator_score(prompt, "3 8 2 5 6") < no_trap.annotator_score(prompt, "8 2 6")


def test_register_task(monkeypatch):
    from tandem import tasks

    monkeypatch.setattr(tasks, "_TASKS", dict(tasks._TASKS))  # leave the real registry untouched
    custom = EvensTask(length_bonus=0.5)
    custom.name = "evens-greedy"
    assert register_task(custom) is custom
    assert get_task("evens-greedy") is custom and "evens-greedy" in task_names()
    assert get_task(custom) is custom
