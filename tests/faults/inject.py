"""Fault injection for tests/faults and bench/faults.py: `Roles` that kill -9 one of their own
processes (a rollout engine, the reward or reference actor, a learner rank) once, at a chosen step,
and note when the driver noticed and when the job was back: healed in place (the role alone started
again) or restarted (every role, from the newest checkpoint)."""

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
    """kill -9 `target` during `step`: "engine" (engine 0, mid-generation), "engine:idle" (engine 0
    during the policy update, so the weight sync finds it dead), "reward" or "reference" (mid-score),
    "policy:RANK" (mid-update)."""

    target: str
    step: int
    killed_at: float | None = None  # time.time() of the kill
    detected_at: float | None = None  # the driver saw the failure (a heal began, or roles stopped)
    restarted_at: float | None = None  # every role up again (new Roles built)
    healed_at: float | None = None  # the role alone started again and its call issued again


def _pid(actor) -> int:
    return get_one(actor.__ray_call__.remote(lambda _: os.getpid()), "getpid", 60, Callee("test"))


class FaultyRoles(Roles):
    """`Roles` with planned faults per run name (`faults`); every instance made is in `made`."""

    faults: ClassVar[dict[str, list[Fault]]] = {}
    made: ClassVar[list[FaultyRoles]] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Read now: a busy actor answers only after its running call.
        self.pids = {f"policy:{r}": _pid(a) for r, a in enumerate(self.policy.actors)}
        self._read_pids()
        self._step = 0
        for fault in self.faults.get(self.cfg.run.name, []):
            if fault.detected_at is not None and fault.healed_at is None and fault.restarted_at is None:
                fault.restarted_at = time.time()
        FaultyRoles.made.append(self)

    def _read_pids(self) -> None:
        """The pids of the single actors still to be killed, read while they are idle (again after
        one was healed). Not those killed already: scored as soon as drawn, the reward or reference
        may have answered before its kill, and is then found dead only by the next step's call."""
        pending = {f.target for f in self.faults.get(self.cfg.run.name, []) if f.killed_at is None}
        engine = self.rollout.engines[0]
        actors = {
            "engine": engine,
            "engine:idle": engine,
            "reward": self.reward.actor,
            "reference": self.reference.actor,
        }
        self.pids |= {target: _pid(actor) for target, actor in actors.items() if target in pending}

    def _strike(self, *targets: str) -> None:
        for fault in self.faults.get(self.cfg.run.name, []):
            kind = "policy" if fault.target.startswith("policy:") else fault.target
            if fault.killed_at is None and fault.step == self._step and kind in targets:
                os.kill(self.pids[fault.target], signal.SIGKILL)
                fault.killed_at = time.time()

    def _note_heals(self) -> None:
        """Faults healed in place: the heal that followed each kill."""
        heals = sorted(self.rollout.heals.events + self.actor_heals.events, key=lambda h: h.detected_at)
        for fault in self.faults.get(self.cfg.run.name, []):
            role = "rollout engine" if fault.target.startswith("engine") else f"{fault.target} actor"
            if fault.killed_at is not None and fault.detected_at is None:
                later = (h for h in heals if h.detected_at >= fault.killed_at and h.role.startswith(role))
                heal = next(later, None)
                if heal is not None:
                    fault.detected_at, fault.healed_at = heal.detected_at, heal.healed_at

    def finish_generation(self, gen):
        self._step = gen.step
        self._strike("engine")  # its generate call is in flight (started just before)
        try:
            return super().finish_generation(gen)
        finally:
            self._note_heals()

    def score(self, batch):
        self._strike("reward", "reference")
        try:
            return super().score(batch)
        finally:
            self._note_heals()

    def update(self, role, batch, beside=()):
        if role == "policy":
            self._strike("policy", "engine:idle")
        return super().update(role, batch, beside)

    def sync_weights(self) -> None:
        super().sync_weights()
        self._note_heals()
        self._read_pids()  # every actor idle now (engines just loaded the weights)

    def shutdown(self) -> None:
        for fault in self.faults.get(self.cfg.run.name, []):
            if fault.killed_at is not None and fault.detected_at is None:
                fault.detected_at = time.time()
        super().shutdown()
