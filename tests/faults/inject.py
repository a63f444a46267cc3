"""Fault injection for tests/faults and bench/faults.py: `Roles` that kill -9 one of their own
processes (a rollout engine, the reward or reference actor, a learner rank) once, at a chosen step,
and note when the driver noticed and when the job was back."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import ClassVar

from tandem.cluster.calls import Callee, get_one
from tandem.recipes.ppo_roles import Roles


@dataclass
class Fault:
    """kill -9 `target` ("engine", "reward", "reference" or "policy:RANK") during `step`."""

    target: str
    step: int
    killed_at: float | None = None  # time.time() of the kill
    detected_at: float | None = None  # the first role shutdown after it (the driver saw the failure)
    restarted_at: float | None = None  # every role up again (new Roles built)


def _pid(actor) -> int:
    return get_one(actor.__ray_call__.remote(lambda _: os.getpid()), "getpid", 60, Callee("test"))


class FaultyRoles(Roles):
    """`Roles` with planned faults per run name (`faults`); every instance made is in `made`."""

    faults: ClassVar[dict[str, list[Fault]]] = {}
    made: ClassVar[list[FaultyRoles]] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Read now: a busy actor answers only after its running call.
        self.pids = {
            "engine": _pid(self.rollout.engines[0]),
            "reward": _pid(self.reward),
            "reference": _pid(self.reference),
            **{f"policy:{r}": _pid(a) for r, a in enumerate(self.policy.actors)},
        }
        self._step = 0
        for fault in self.faults.get(self.cfg.run.name, []):
            if fault.detected_at is not None and fault.restarted_at is None:
                fault.restarted_at = time.time()
        FaultyRoles.made.append(self)

    def _strike(self, where: str) -> None:
        for fault in self.faults.get(self.cfg.run.name, []):
            if fault.killed_at is None and fault.step == self._step and fault.target.startswith(where):
                os.kill(self.pids[fault.target], signal.SIGKILL)
                fault.killed_at = time.time()

    def finish_generation(self, gen):
        self._step = gen.step
        self._strike("engine")  # its generate call is in flight (started just before)
        return super().finish_generation(gen)

    def score(self, batch):
        self._strike("reward")
        self._strike("reference")
        return super().score(batch)

    def update(self, role, batch):
        if role == "policy":
            self._strike("policy")
        return super().update(role, batch)

    def shutdown(self) -> None:
        for fault in self.faults.get(self.cfg.run.name, []):
            if fault.killed_at is not None and fault.detected_at is None:
                fault.detected_at = time.time()
        super().shutdown()
