"""Healing a role in place: an actor whose process died, or whose call missed its deadline, is
started again alone (the rest of the job keeps its state) and the call it held is issued again.

`Heals` is the budget and the log of one kind of role (rollout engines; the reward and reference
actors); past its limit a failure goes on as before (the whole job restarts from its newest
checkpoint, `tandem.recipes.restarts`). A call issued again after a missed deadline that misses it
again is not healed twice: a call that hangs for a reason of its own (a reward function that never
returns) would hang on any actor.

`Restartable` is a single actor healed this way: started again as at first (so it reloads its model
from its path), then its pending call issued again with the same arguments.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tandem.cluster.calls import Callee, RoleError, get_one

#: Failures that restarting the actor heals; "failed" (the call raised: it would again) and
#: "unplaced" (no room) are not.
HEALABLE = ("died", "late")


@dataclass
class Heal:
    """One healed failure: who, of which call, and when it was seen and healed (`time.time()`)."""

    role: str
    call: str
    kind: str
    detected_at: float
    healed_at: float | None = None


class Heals:
    """How often one kind of role may be healed in place (`limit`, the config `key` says where it is
    set) per start of the job's roles, and the heals done."""

    def __init__(self, key: str, limit: int) -> None:
        self.key, self.limit = key, limit
        self.events: list[Heal] = []

    @property
    def count(self) -> int:
        return len(self.events)

    def begin(self, err: RoleError, again: bool = False) -> Heal:
        """Account a heal of `err`'s actor. Raises `err` itself when restarting would not heal it
        (the call raised; no room), and a RoleError saying why when no heals are left or the call
        was issued again after a missed deadline and missed it again (`again`)."""
        if err.kind not in HEALABLE:
            raise err
        why = ""
        if self.count >= self.limit:
            why = f"no restarts in place left ({self.key}={self.limit})"
        elif again and err.kind == "late":
            why = "it missed its deadline again after a restart, so it would on any actor"
        if why:
            raise RoleError(f"{err}; {why}", err.role, err.ranks, err.call, err.nodes, err.kind) from err
        heal = Heal(err.role, err.call, err.kind, time.time())
        self.events.append(heal)
        return heal

    def done(self, heal: Heal, what: str, how: str) -> None:
        """Mark `heal` done; one warning line (Ray's own messages about the dead actor come too)."""
        heal.healed_at = time.time()
        print(
            f"tandem: warning: {what}; {how} (healed in place in {heal.healed_at - heal.detected_at:.1f} s, "
            f"restart {self.count} of {self.limit}, {self.key})",
            file=sys.stderr,
            flush=True,
        )


@dataclass
class Call:
    """A call made through a `Restartable`: kept so it can be issued again."""

    method: str
    args: tuple
    ref: Any
    actor: Any  # the actor it went to
    late: bool = False  # issued again after its actor missed the deadline


class Restartable:
    """A single actor of role `name`, made by `start()` (which places it as configured) and healed in
    place by `heals`: waited for, within `startup_s`, by `ready`."""

    def __init__(
        self,
        name: str,
        start: Callable[[], Any],
        asks: Mapping[str, float],
        startup_s: float,
        heals: Heals,
    ) -> None:
        self.name, self._start, self.asks, self.startup_s, self.heals = name, start, asks, startup_s, heals
        self.actor = start()
        self.node: str | None = None

    def ready(self) -> None:
        """Wait until the actor is placed and built (RoleError naming what it asks for otherwise)."""
        from tandem.cluster.groups import wait_ready

        self.node = wait_ready({self.name: self.actor}, self.asks, self.startup_s)[self.name]

    def submit(self, method: str, *args: Any) -> Call:
        return Call(method, args, getattr(self.actor, method).remote(*args), self.actor)

    def result(self, call: Call, timeout_s: float) -> Any:
        """The result of `call`; if the actor dies or the call misses `timeout_s`, the actor is
        started again and the call issued again (see `Heals`). A call made before an earlier
        heal (a batch scored ahead) is issued again on the new actor, without healing it again."""
        while True:
            try:
                return get_one(call.ref, call.method, timeout_s, Callee(self.name, None, self.node))
            except RoleError as err:
                if call.actor is not self.actor and err.kind in HEALABLE:
                    call.ref, call.actor = getattr(self.actor, call.method).remote(*call.args), self.actor
                    continue
                heal = self.heals.begin(err, again=call.late)
                self.restart()
                call.ref, call.actor = getattr(self.actor, call.method).remote(*call.args), self.actor
                call.late = err.kind == "late"
                self.heals.done(heal, str(err), f"started it again and issued {call.method!r} again")

    def restart(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)
        self.actor = self._start()
        self.ready()

    def shutdown(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)
