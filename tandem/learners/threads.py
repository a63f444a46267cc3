"""Compute threads of a learner rank: its share of the node's cores while it computes alone.

Ray gives a 1-CPU actor one compute thread even while the node's other cores sit idle, as they do
whenever the learners train: in every job's loop the other roles wait for them then.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def rank_threads() -> int:
    """This rank's share of its node's cores: split among the learner ranks on the node. They train
    while the other roles wait, or (asynchronous PPO) beside engines that keep to half the cores and
    are done early: a learner on half the cores would leave them idle for the rest of its update."""
    from tandem.cluster.runtime import core_share

    return core_share(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def on_all_cores(method: Callable[..., T]) -> Callable[..., T]:
    """Run a learner method with `learner.threads` compute threads (default `rank_threads()`), then
    return to Ray's count. For the calls during which every other role waits (training, held-out
    loss); passes that run beside other roles (PPO's scoring) keep Ray's count."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        shared = torch.get_num_threads()
        torch.set_num_threads(self.cfg.threads or rank_threads())
        try:
            return method(self, *args, **kwargs)
        finally:
            torch.set_num_threads(shared)

    return wrapper
