"""Compute threads of a learner rank: its share of the node's cores while it computes alone.

Ray gives a 1-CPU actor one compute thread even while the node's other cores sit idle, as they do
whenever the learners train: in every job's loop the other roles wait for them then.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from tandem.cluster.runtime import compute_threads, core_share

T = TypeVar("T")


def rank_threads(sharers: int = 1) -> int:
    """This rank's share of its node's cores: split among the learner ranks on the node, and
    `sharers` ways (asynchronous PPO may leave the engines their half: see `CoreHandoff`)."""
    return core_share(int(os.environ.get("LOCAL_WORLD_SIZE", "1")) * sharers)


def on_all_cores(method: Callable[..., T]) -> Callable[..., T]:
    """Run a learner method with `learner.threads` compute threads (default: `rank_threads` of the
    learner's `handoff.sharers`), then return to Ray's count. For the calls during which every other
    role waits (training, held-out loss); passes that run beside other roles (PPO's scoring) keep
    Ray's count."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        with compute_threads(self.cfg.threads or rank_threads(self.handoff.sharers)):
            return method(self, *args, **kwargs)

    return wrapper


class CoreHandoff:
    """Asynchronous PPO on CPU, `learner.threads` unset: a learner rank trains beside the engines on
    the half of its cores they leave it (`sharers` 2), and takes them all from the first layer after
    the engines have drawn the batches ahead and the scorers have scored them.

    A fixed split wastes cores either way. On all the cores from the start, a small model's many
    short kernels stall whenever one of its threads is descheduled by an engine's (2 cores, the tiny
    side-by-side model: 0.43 s a step against 0.29 s on half); on half throughout, a larger one
    leaves the engines' half idle once they are done (the 22.8M-parameter model: 22.9 s against
    18.0 s on all). The check runs before each layer's forward and, in training, its backward (on
    CPU the backward runs in the calling thread, whose thread count is the one that counts).
    """

    def __init__(self) -> None:
        self.sharers = 1  # the node's cores are split this many ways (see `on_all_cores`)
        self._done: threading.Event | None = None
        self._started = self._taken = 0.0

    def attach(self, model: torch.nn.Module) -> None:
        """Check before the layers of each of `model`'s layer lists (its transformer blocks)."""
        for layers in (m for m in model.modules() if isinstance(m, torch.nn.ModuleList)):
            for layer in layers:
                layer.register_forward_pre_hook(self._check)
                layer.register_forward_hook(self._check_in_backward)

    @contextmanager
    def beside(self, done: threading.Event | None) -> Iterator[dict[str, float]]:
        """Train on half the cores until `done` is set (None: on all of them, nothing computes
        beside). Yields a dict that receives, at the end, the seconds spent on all the cores."""
        seconds: dict[str, float] = {}
        self._done, self.sharers = done, 1 if done is None else 2
        self._started = self._taken = time.perf_counter()
        try:
            yield seconds
        finally:
            if self._done is not None:  # never taken: stop the thread waiting on the others
                self._done.set()
                self._taken = time.perf_counter()
            seconds["all_cores_s"] = time.perf_counter() - self._taken
            self._done, self.sharers = None, 1

    def _check(self, *_: Any) -> None:
        if self._done is not None and self._done.is_set():
            self._done, self.sharers, self._taken = None, 1, time.perf_counter()
            torch.set_num_threads(rank_threads(1))

    def _check_in_backward(self, module: Any, args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        if self._done is not None and isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            hidden.register_hook(self._check)
