"""Reward functions for the PPO tests, loaded by import path ("tests.recipes.rewards:short_answer")
in the reward actor, as a user's own reward would be. Ray workers import them from the driver's
working directory (the repository root when pytest runs there)."""

from __future__ import annotations

#: Responses this long (in characters) or longer score 0.
LIMIT = 64


def short_answer(prompts: list[str], responses: list[str]) -> list[float]:
    """1 for an empty response, falling linearly to 0 at LIMIT characters: a reward the untrained
    tiny model can improve on within a few steps (stop early, pick short tokens), with a spread
    inside every group of samples, so GRPO advantages are never all zero."""
    return [1.0 - min(len(r), LIMIT) / LIMIT for r in responses]


def reversed_digits(prompts: list[str], responses: list[str]) -> list[float]:
    """The evaluation reward of the tests' own task ("reverse: 3 1 4" -> "4 1 3", no built-in task):
    the fraction of positions holding the right digit, over the longer list; 0 for a response that
    is not a list of numbers."""
    from tandem.tasks import parse_numbers, prompt_numbers

    scores = []
    for prompt, response in zip(prompts, responses, strict=True):
        target, got = prompt_numbers(prompt, "reverse")[::-1], parse_numbers(response)
        right = sum(a == b for a, b in zip(got or [], target))
        scores.append(right / max(len(got or []), len(target), 1))
    return scores
