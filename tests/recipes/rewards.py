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


#: The prompt `short_answer_but_nan` scores NaN: one of step 1's in tests/faults.
NAN_PROMPT = "sort: 5 4 4"


def short_answer_but_nan(prompts: list[str], responses: list[str]) -> list[float]:
    """`short_answer`, but NaN for every sample of NAN_PROMPT: a reward gone wrong for one prompt,
    at the same step whichever process scores it (a restarted reward actor too)."""
    scores = short_answer(prompts, responses)
    return [float("nan") if p == NAN_PROMPT else s for p, s in zip(prompts, scores, strict=True)]


def reverse_score(prompts: list[str], responses: list[str]) -> list[float]:
    """The evaluation reward of the tests' own task ("reverse: 3 1 4" -> "4 1 3", no built-in task).
    Half: the digits in the right places (over the longer list; none for a response that is not a
    list of numbers). Half: how close the answer's length in characters is to the right answer's,
    so that even the garbage of an untrained model scores, differently for every prompt."""
    from tandem.tasks import parse_numbers, prompt_numbers

    scores = []
    for prompt, response in zip(prompts, responses, strict=True):
        target = prompt_numbers(prompt, "reverse")[::-1]
        got, text = parse_numbers(response) or [], " ".join(map(str, target))
        places = sum(a == b for a, b in zip(got, target)) / max(len(got), len(target), 1)
        length = 1 - abs(len(response) - len(text)) / max(len(response), len(text), 1)
        scores.append((places + length) / 2)
    return scores
