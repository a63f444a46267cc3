"""Built-in synthetic tasks with a known true reward, and the registry that names them.

Each task is small enough for a ~1M-parameter model to learn in minutes on a laptop CPU, and has
everything an RLHF run needs without human data: a prompt generator, a reference solver (the SFT
demonstrations), a true reward (to measure what RLHF really achieved), an annotator score (what the
simulated annotators who label preference pairs judge by) and a corruption operator (to make the
alternative responses that annotators compare).

`evens` carries a deliberate LENGTH TRAP: its annotators like longer answers, so a reward model
trained on their preferences learns a length bias, and PPO against that model can reward-hack by
listing extra numbers while the true reward falls.

A top-level module, below both `tandem.data` (the datasets drawn from the tasks, their rewards) and
`tandem.models` (the embedded tokenizer is trained on the built-in tasks' text): neither imports
the other.
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from collections import Counter

from tandem.errors import UserError

_NUMBER = re.compile(r"^\d+$")


def parse_numbers(text: str) -> list[int] | None:
    """Parse a response of space-separated non-negative integers; None if any token is not one.

    "none" (and the empty string) mean the empty list, so a task whose answer is empty has a
    response the model can write.
    """
    tokens = text.split()
    if tokens == ["none"]:
        return []
    if not all(_NUMBER.match(t) for t in tokens):
        return None
    return [int(t) for t in tokens]


def format_numbers(numbers: list[int]) -> str:
    """The canonical response text for a list of numbers ("none" for an empty list)."""
    return " ".join(str(n) for n in numbers) if numbers else "none"


def prompt_numbers(prompt: str, keyword: str) -> list[int]:
    """The numbers after `keyword:` in a prompt; searched, not matched, so the prompt may be embedded
    in a longer text (a chat rendering, a user's own template)."""
    match = re.search(rf"{keyword}:((?:\s+\d+)*)", prompt)
    if match is None:
        raise ValueError(f"not a {keyword!r} prompt: {prompt!r}")
    return [int(t) for t in match.group(1).split()]


class Task(ABC):
    """A synthetic task: prompts, reference answers, a true reward and simulated annotators."""

    #: Registry name, also the prompt's leading keyword.
    name: str = ""

    @abstractmethod
    def make_prompt(self, rng: random.Random) -> str:
        """Draw one prompt using only `rng` (so a seeded stream of prompts is reproducible)."""

    @abstractmethod
    def solve(self, prompt: str) -> str:
        """The reference answer (the SFT demonstration); scores 1.0 under `true_reward`."""

    @abstractmethod
    def true_reward(self, prompt: str, response: str) -> float:
        """What we really want, in [0, 1]; hidden from the learner, used to evaluate runs."""

    def annotator_score(self, prompt: str, response: str) -> float:
        """What simulated annotators judge by; the true reward unless the task sets a trap."""
        return self.true_reward(prompt, response)

    @abstractmethod
    def corrupt(self, prompt: str, response: str, rng: random.Random) -> str:
        """A plausible but different alternative to `response` (never equal to it)."""

    def slip(self, prompt: str, answer: str, rng: random.Random) -> str:
        """A simulated demonstrator's mistake in writing `answer` (see `sft_examples(error_rate=)`)."""
        return self.corrupt(prompt, answer, rng)

    def corpus(self, rng: random.Random, n: int) -> list[str]:
        """`n` prompt/answer texts: what the embedded tokenizer is trained on."""
        texts = []
        for _ in range(n):
            prompt = self.make_prompt(rng)
            answer = self.solve(prompt)
            texts += [prompt, answer, self.corrupt(prompt, answer, rng)]
        return texts


class SortTask(Task):
    """ "sort: 7 2 9 4" -> "2 4 7 9" (3-6 digits).

    True reward: the fraction of positions that hold the right digit, over the longer of the two
    lists (so missing and extra digits both cost), 1.0 only for the exact answer, and 0 for a
    response that is not a list of numbers. The graded signal gives RL something to climb.
    """

    name = "sort"

    def __init__(self, min_len: int = 3, max_len: int = 6) -> None:
        self.min_len, self.max_len = min_len, max_len

    def make_prompt(self, rng: random.Random) -> str:
        digits = [rng.randrange(10) for _ in range(rng.randint(self.min_len, self.max_len))]
        return f"sort: {' '.join(map(str, digits))}"

    def solve(self, prompt: str) -> str:
        return format_numbers(sorted(prompt_numbers(prompt, self.name)))

    def true_reward(self, prompt: str, response: str) -> float:
        target = sorted(prompt_numbers(prompt, self.name))
        got = parse_numbers(response)
        if not got or not target:
            return 1.0 if got == target else 0.0
        right = sum(a == b for a, b in zip(got, target))
        return right / max(len(got), len(target))

    def slip(self, prompt: str, answer: str, rng: random.Random) -> str:
        """The demonstrator pastes the list back unsorted. A slip of the whole answer, not of one
        digit: judging it takes no more than seeing that the list is out of order, which a reward
        model the policy's size learns well, while its judgement of which digits belong is weak
        (PPO against it drifts to wrong digits wherever the KL penalty lets it)."""
        return format_numbers(prompt_numbers(prompt, self.name))

    def corrupt(self, prompt: str, response: str, rng: random.Random) -> str:
        numbers = parse_numbers(response) or sorted(prompt_numbers(prompt, self.name))
        for _ in range(8):
            candidate = list(numbers)
            kind = rng.randrange(5)
            i = rng.randrange(len(candidate)) if candidate else 0
            if kind == 0 and len(candidate) > 1:  # the slip a learner makes most: an adjacent swap
                i = min(i, len(candidate) - 2)
                candidate[i], candidate[i + 1] = candidate[i + 1], candidate[i]
            elif kind == 1 and candidate:
                del candidate[i]
            elif kind == 2:
                candidate.insert(i, rng.randrange(10))
            elif kind == 3 and candidate:
                candidate[i] = rng.randrange(10)
            else:  # echo the input unsorted
                candidate = prompt_numbers(prompt, self.name)
            text = format_numbers(candidate)
            if text != response.strip():
                return text
        return format_numbers(numbers + [rng.randrange(10)])  # longer, so always different


class EvensTask(Task):
    """ "evens: 3 8 2 5 6" -> "8 2 6" (list the even numbers in order; "none" if there are none).

    True reward: F1 between the listed numbers and the correct ones, counted as multisets (order
    is ignored: the trap below is about length, and order-blind F1 keeps the signal simple);
    0 for a response that is not a list of numbers.

    LENGTH TRAP: annotator score = true reward + `length_bonus` * number of listed items. With the
    default 0.15, adding odd numbers to a correct answer of 3+ items pleases annotators more than
    it costs in F1, so a reward model fit to their preferences pays for length.
    """

    name = "evens"

    def __init__(self, min_len: int = 4, max_len: int = 7, length_bonus: float = 0.15) -> None:
        self.min_len, self.max_len, self.length_bonus = min_len, max_len, length_bonus

    def make_prompt(self, rng: random.Random) -> str:
        while True:
            digits = [rng.randrange(10) for _ in range(rng.randint(self.min_len, self.max_len))]
            # At least one even and one odd: an answer to learn, and a number to pad it with.
            if any(d % 2 == 0 for d in digits) and any(d % 2 for d in digits):
                return f"evens: {' '.join(map(str, digits))}"

    def _target(self, prompt: str) -> list[int]:
        return [n for n in prompt_numbers(prompt, self.name) if n % 2 == 0]

    def solve(self, prompt: str) -> str:
        return format_numbers(self._target(prompt))

    def true_reward(self, prompt: str, response: str) -> float:
        target = self._target(prompt)
        got = parse_numbers(response)
        if got is None:
            return 0.0
        if not got or not target:
            return 1.0 if got == target else 0.0
        hits = sum((Counter(got) & Counter(target)).values())
        if hits == 0:
            return 0.0
        precision, recall = hits / len(got), hits / len(target)
        return 2 * precision * recall / (precision + recall)

    def annotator_score(self, prompt: str, response: str) -> float:
        got = parse_numbers(response) or []
        return self.true_reward(prompt, response) + self.length_bonus * len(got)

    def corrupt(self, prompt: str, response: str, rng: random.Random) -> str:
        inputs = prompt_numbers(prompt, self.name)
        numbers = parse_numbers(response)
        if numbers is None:
            numbers = self._target(prompt)
        odds = [n for n in inputs if n % 2] or [1]
        for _ in range(8):
            candidate = list(numbers)
            kind = rng.randrange(4)
            i = rng.randrange(len(candidate) + 1)
            if kind == 0:  # pad with an odd number from the prompt: the longer answer annotators like
                candidate.insert(i, rng.choice(odds))
            elif kind == 1:  # echo the whole input
                candidate = list(inputs)
            elif kind == 2 and candidate:
                del candidate[min(i, len(candidate) - 1)]
            else:
                candidate.insert(i, rng.randrange(10))
            text = format_numbers(candidate)
            if text != response.strip():
                return text
        return format_numbers(numbers + [rng.choice(odds)])


#: The tasks that ship with tandem, in name order. The embedded tokenizer is trained on exactly
#: these instances, so a task a user registers (even under a built-in name) cannot change it.
BUILTIN_TASKS: tuple[Task, ...] = (EvensTask(), SortTask())
_TASKS: dict[str, Task] = {task.name: task for task in BUILTIN_TASKS}


def task_names() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_TASKS)


def register_task(task: Task) -> Task:
    """Add a task to the registry under `task.name` (replacing one of the same name)."""
    if not task.name:
        raise ValueError("a task needs a non-empty name")
    _TASKS[task.name] = task
    return task


def get_task(name: str | Task) -> Task:
    """The registered task called `name` (a Task passes through); UserError lists valid names."""
    if isinstance(name, Task):
        return name
    try:
        return _TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(task_names())}") from None
