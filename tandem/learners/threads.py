"""Compute threads of a learner rank: its share of the node's cores while it computes alone.

Ray gives a 1-CPU actor one compute thread even while the node's other cores sit idle, as they do
whenever the learners train: in every job's loop the other roles wait for them then.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch

T = TypeVar("T")


def rank_threads(sharers: int = 1) -> int:
    """This rank's share of its node's cores: split among the learner ranks on the node, and
    `sharers` ways (asynchronous PPO may leave the engines their half: see `CoreSplit`)."""
    from tandem.cluster.runtime import core_share

    return core_share(int(os.environ.get("LOCAL_WORLD_SIZE", "1")) * sharers)


def on_all_cores(method: Callable[..., T]) -> Callable[..., T]:
    """Run a learner method with `learner.threads` compute threads (default: `rank_threads` of the
    learner's `core_sharers`), then return to Ray's count. For the calls during which every other
    role waits (training, held-out loss); passes that run beside other roles (PPO's scoring) keep
    Ray's count."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        shared = torch.get_num_threads()
        torch.set_num_threads(self.cfg.threads or rank_threads(self.core_sharers))
        try:
            return method(self, *args, **kwargs)
        finally:
            torch.set_num_threads(shared)

    return wrapper


class CoreSplit:
    """Asynchronous PPO on CPU, `learner.threads` unset: do the learners train on all the node's
    cores, beside the engines (oversubscribed while those generate), or on the half they leave?

    It depends on the model. A small one runs many short kernels, and its threads wait for each
    other whenever one is descheduled: on 2 cores the tiny side-by-side model took 0.43 s a step on
    all cores against 0.29 s on half. A larger one spends its update in big matrix products and
    the engines finish their half early, so half the cores sit idle: the 22.8M-parameter model took
    18.0 s on all cores against 22.9 s on half. So the first two steps that overlap (2 and 3) try
    one way each, and the run keeps the faster in seconds per response token.
    """

    TRIAL: ClassVar[dict[int, int]] = {2: 2, 3: 1}  # step -> learners' core sharers tried in it

    def __init__(self, enabled: bool, state: dict | None = None) -> None:
        self.enabled = enabled
        self.seconds_per_token: dict[int, float] = {int(k): v for k, v in (state or {}).items()}

    def sharers(self, step: int) -> int | None:
        """The learners' core sharers for `step` (None: unchanged, or not deciding)."""
        if not self.enabled:
            return None
        if step in self.TRIAL:
            return self.TRIAL[step]
        return self.chosen() if len(self.seconds_per_token) == len(self.TRIAL) else None

    def chosen(self) -> int:
        return min(self.seconds_per_token, key=self.seconds_per_token.__getitem__)

    def record(self, step: int, seconds: float, tokens: float) -> None:
        if self.enabled and step in self.TRIAL:
            self.seconds_per_token[self.TRIAL[step]] = seconds / max(tokens, 1.0)

    def state_dict(self) -> dict[str, float]:
        return {str(k): v for k, v in self.seconds_per_token.items()}
