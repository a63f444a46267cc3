"""Restarting a job whose roles failed: a dead engine, reward or reference actor or learner rank, a
call past its deadline, a broken weight sync. Every role is stopped (nothing is left holding CPUs,
GPUs or placement groups) and started again from the run's newest complete checkpoint, which resumes
exactly (the driver's RNG, every learner's state and the batches drawn ahead are in it), so the
steps after it are computed again as they would have been; metrics.jsonl and the sample tables drop
the rows logged after the checkpoint, so each step stays logged once.

Not retried: a user error (a reward that raises, bad data: it would fail again), a failure while
the job's roles first start (the cluster cannot hold them, or the config is wrong), and the same
failure at the same step twice in a row (a reward that never returns, an out-of-memory kill at
one batch: deterministic, so a restart only repeats it).
"""

from __future__ import annotations

import sys

from tandem.cluster.calls import RoleError
from tandem.errors import JobError, find_user_error
from tandem.recipes.run_dir import Run, rewind


def role_failure(err: BaseException) -> BaseException | None:
    """The failure of a role behind `err` (itself or what it was raised from) when a restart may heal
    it; None for a user error or anything else (a bug of the driver is not healed by restarts)."""
    from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError

    if find_user_error(err) is not None:
        return None
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, RoleError | RayActorError | GetTimeoutError | ObjectLostError):
            return cause
        cause = cause.__cause__
    return None


class Restarts:
    """The restart policy of one job: `handle` decides on each failure, and rewinds the run for the
    next attempt."""

    def __init__(self, max_restarts: int, command: str) -> None:
        self.max, self.command = max_restarts, command
        self.done = 0
        self._last: tuple[int, str, str] | None = None  # (step, role, call) of the previous failure

    def handle(self, err: Exception, run: Run, started: bool) -> bool:
        """False when `err` is not for restarts (the caller re-raises it); JobError when restarts are
        spent or would repeat the same failure; else True, with `run` rewound to its newest complete
        checkpoint (or to the start) and a one-line warning printed."""
        failure = role_failure(err)
        if failure is None or not (started or self.done):
            return False
        step = run.tracker.last_step + 1
        point = (step, getattr(failure, "role", type(failure).__name__), getattr(failure, "call", ""))
        what = f"{_first_line(failure)} at step {step}"
        if self.done >= self.max or point == self._last:
            why = (
                f"no restarts left (run.max_restarts={self.max})"
                if self.done >= self.max
                else "it failed the same way at the same step after a restart, so another would too"
            )
            latest = run.checkpoints.latest() if run.checkpoints.folders() else None
            kept = f"its newest checkpoint is {latest.name}" if latest else "it holds no checkpoint yet"
            raise JobError(
                f"{what}; {why}. The run folder {run.dir} is intact ({kept}): fix the cause, then "
                f"resume with `{self.command} --resume {run.dir}`"
            ) from err
        self.done += 1
        self._last = point
        rewind(run)
        origin = f"checkpoint {run.resume_from.name}" if run.resume_from else "the start (no checkpoint yet)"
        print(
            f"tandem: warning: {what}; restarting every role from {origin} "
            f"(restart {self.done} of {self.max})",
            file=sys.stderr,
            flush=True,
        )
        return True


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
