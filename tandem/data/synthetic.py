"""Seeded datasets drawn from a built-in task: SFT demonstrations, preference pairs, RL prompts.

Train and eval splits are disjoint by construction: every prompt belongs to exactly one split, by a
stable hash of its text (1 in `EVAL_BUCKETS` goes to eval), and each split's stream only keeps its
own prompts. So held-out prompts never appear in training, even for tasks with few distinct prompts.
Each dataset kind also draws from its own random stream, so changing `n` for one kind leaves the
others unchanged.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Literal

from tandem.tasks import Task, get_task

Split = Literal["train", "eval"]

#: One prompt in this many belongs to the eval split.
EVAL_BUCKETS = 10


def _digest(text: str) -> int:
    # sha256, not hash(): Python salts str hashes per process, and Ray actors must agree.
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def split_of(prompt: str) -> Split:
    """The split a prompt belongs to (a pure function of its text)."""
    return "eval" if _digest(prompt) % EVAL_BUCKETS == 0 else "train"


def _stream(task: Task, purpose: str, seed: int, split: Split) -> random.Random:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return random.Random(_digest(f"{task.name}/{purpose}/{split}/{seed}"))


def _prompts(task: Task, rng: random.Random, split: Split):
    while True:
        prompt = task.make_prompt(rng)
        if split_of(prompt) == split:
            yield prompt


def rl_prompts(task: str | Task, n: int, seed: int = 0, split: Split = "train") -> list[str]:
    """`n` prompts for RL rollouts (repeats possible, as in any i.i.d. draw)."""
    task = get_task(task)
    gen = _prompts(task, _stream(task, "rl", seed, split), split)
    return [next(gen) for _ in range(n)]


def sft_examples(
    task: str | Task, n: int, seed: int = 0, split: Split = "train", error_rate: float = 0.0
) -> list[dict]:
    """`n` demonstrations `{"prompt": str, "response": str}` answered by the reference solver.

    With `error_rate`, that fraction of the demonstrations carries a slip of the simulated
    demonstrator (`task.slip`): people who write demonstrations err, while the same people
    comparing two answers mostly pick the better one, which is why RLHF can beat SFT
    (Ouyang et al. 2022). The slips draw from their own stream: the prompts do not change.
    """
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
    task = get_task(task)
    gen = _prompts(task, _stream(task, "sft", seed, split), split)
    slips = _stream(task, "sft-slips", seed, split)
    examples = []
    for prompt in (next(gen) for _ in range(n)):
        answer = task.solve(prompt)
        if slips.random() < error_rate:
            answer = task.slip(prompt, answer, slips)
        examples.append({"prompt": prompt, "response": answer})
    return examples


def bradley_terry_prob(score_a: float, score_b: float, temperature: float) -> float:
    """P(a preferred over b) = sigmoid((s_a - s_b) / temperature); temperature 0 is a hard choice
    (ties 0.5). The Bradley-Terry model of a noisy annotator (Bradley & Terry 1952; the preference
    model of Ouyang et al. 2022, eq. 1)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    diff = score_a - score_b
    if temperature == 0:
        return 1.0 if diff > 0 else 0.0 if diff < 0 else 0.5
    z = diff / temperature
    # Written so that exp never overflows for large |z|.
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def _candidates(task: Task, prompt: str, rng: random.Random) -> tuple[str, str]:
    reference = task.solve(prompt)
    # Half the pairs pit the reference against a corruption, half two corruptions: the reward
    # model then sees comparisons among wrong answers too, as real annotators would.
    first = reference if rng.random() < 0.5 else task.corrupt(prompt, reference, rng)
    for _ in range(8):
        second = task.corrupt(prompt, reference, rng)
        if second != first:
            return first, second
    return first, task.corrupt(prompt, first, rng)  # corrupt() never returns its input


def preference_pairs(
    task: str | Task, n: int, seed: int = 0, temperature: float = 0.1, split: Split = "train"
) -> list[dict]:
    """`n` pairs `{"prompt", "chosen", "rejected"}` labelled by simulated annotators.

    For each prompt, two distinct candidates (the reference and/or corruptions of it) are compared
    by their annotator scores with `bradley_terry_prob`; `temperature` sets the annotators' noise
    (0 = always the higher score). For `evens` the annotators' length bias carries into the labels.
    """
    task = get_task(task)
    rng = _stream(task, "pairs", seed, split)
    gen = _prompts(task, rng, split)
    pairs = []
    for _ in range(n):
        prompt = next(gen)
        a, b = _candidates(task, prompt, rng)
        p_a = bradley_terry_prob(
            task.annotator_score(prompt, a), task.annotator_score(prompt, b), temperature
        )
        chosen, rejected = (a, b) if rng.random() < p_a else (b, a)
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs
