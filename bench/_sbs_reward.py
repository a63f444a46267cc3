"""The side-by-side bench's reward, the same function on both sides: the fraction of positions where
the numbers of the response equal the prompt's numbers sorted (0 without any number).

Not the sort task's true reward, which scores 0 for anything but a clean list: untrained models
never earn it, and with no reward signal the runs would measure only the KL term (which tandem puts
in the reward and TRL in the loss, so their response lengths part). Partial credit keeps both
sides' lengths comparable, as the team's `side_by_side/run.sh` measures.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NUMBER = re.compile(r"\d+")


def partial_sort(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    out = []
    for prompt, response in zip(prompts, responses, strict=True):
        target = sorted(int(x) for x in _NUMBER.findall(prompt.split(":", 1)[-1]))
        got = [int(x) for x in _NUMBER.findall(response)]
        hits = sum(1 for i, t in enumerate(target) if i < len(got) and got[i] == t)
        out.append(hits / len(target) if got and target else 0.0)
    return out
