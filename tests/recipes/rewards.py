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
