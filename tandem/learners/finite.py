"""Keeping non-finite values out of the weights: an optimizer step whose loss or gradients hold a
NaN/inf is skipped on every rank, and too many in a row end the job with a clear error.

The guard wraps the client optimizer's own `step` (the torch AdamW every learner hands DeepSpeed),
which DeepSpeed calls on every rank at each accumulation boundary, after its gradient reduction and
clipping: in ZeRO it holds this rank's fp32 partition and its gradient, without ZeRO the model's
parameters. Skipping there leaves the weights and Adam's moments as they were; DeepSpeed then
zeroes the gradients as after any step. (Gradient clipping spreads a NaN norm to every gradient, so
a NaN on one rank shows on all; the flag is all-reduced anyway, for grad_clip 0.) The learning-rate
schedule still advances one step.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import torch

from tandem.errors import UserError

logger = logging.getLogger(__name__)


class NonFiniteError(UserError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


class FiniteGuard:
    """Wraps `optimizer.step`; `bad_loss` is set by the learner before the boundary's step, `skipped`
    says whether the last step was skipped. `all_reduce(values, op)` reduces over the ranks."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        all_reduce: Callable[[list[float], str], list[float]],
        limit: int,
    ) -> None:
        self.bad_loss, self.skipped, self.in_a_row, self.limit = False, False, 0, limit
        step = optimizer.step

        def guarded(*args: Any, **kwargs: Any) -> Any:
            grads = (p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None)
            local = self.bad_loss or not all(bool(torch.isfinite(g).all()) for g in grads)
            self.skipped = all_reduce([float(local)], "max")[0] > 0
            return None if self.skipped else step(*args, **kwargs)

        optimizer.step = guarded  # an instance attribute: DeepSpeed and the scheduler call it so

    def after_step(self, rank: int, skipped_by_engine: bool) -> float:
        """Count the step just taken (`skipped_by_engine`: DeepSpeed's ZeRO-1/2 optimizer skips a
        step with an inf/NaN gradient itself, before the wrapped one is called); returns 1.0 if it
        was skipped (a metric). NonFiniteError at `limit` skipped steps in a row."""
        skipped = self.skipped or skipped_by_engine
        self.bad_loss = self.skipped = False
        if not skipped:
            self.in_a_row = 0
            return 0.0
        self.in_a_row += 1
        if rank == 0:
            logger.warning(
                "non-finite loss or gradient: optimizer step skipped (%d in a row of at most %d)",
                self.in_a_row,
                self.limit,
            )
        if self.in_a_row >= self.limit:
            raise NonFiniteError(
                f"{self.in_a_row} optimizer steps in a row had a non-finite (NaN/inf) loss or gradient, "
                "so training stopped (the weights hold the last finite step's values and were never "
                "synced with a non-finite one); lower the learning rate, check the rewards' scale, or "
                "raise ppo.max_nonfinite_steps"
            )
        return 1.0


class RewardGuard:
    """The driver's side of the same rule for rewards: a step whose scores hold a NaN/inf (a reward
    function or model gone wrong for some sample) trains nothing, since one such score spoils every
    advantage of its group and the KL controller; `limit` such steps in a row end the job."""

    def __init__(self, limit: int) -> None:
        self.limit, self.in_a_row = limit, 0

    def check(self, scores: torch.Tensor, step: int) -> bool:
        """True when every score is finite; else False (the step is skipped) with a warning, or
        NonFiniteError at the `limit`-th such step in a row."""
        bad = int((~torch.isfinite(scores)).sum())
        if not bad:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        print(
            f"tandem: warning: step {step}: {bad} of {len(scores)} rewards are NaN/inf, so the step's "
            f"updates are skipped ({self.in_a_row} in a row of at most {self.limit}, ppo.max_nonfinite_steps)",
            file=sys.stderr,
            flush=True,
        )
        if self.in_a_row >= self.limit:
            raise NonFiniteError(
                f"{self.in_a_row} steps in a row had NaN/inf rewards (step {step}: {bad} of "
                f"{len(scores)} samples), so training stopped; check the reward function or model "
                "(`reward.components`), or raise ppo.max_nonfinite_steps"
            )
        return False
