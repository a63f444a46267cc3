"""The one way tandem waits on remote calls: every wait has a deadline, and every failure names who.

`get` waits for the results of calls made on Ray actors, in short polls (so Ctrl-C reaches the
driver), and fails at the first of them to die or raise, or when the deadline passes, with a
`RoleError` naming the role, the rank (for ranks of a group), the node and the call. The other calls
are not waited for: they may be stuck in a collective with the one that failed.

Ray's own blocking `ray.get` appears in tandem only here (tests/cluster/test_calls.py checks), once
`ray.wait` has said the result is there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Longest single wait (signals such as Ctrl-C are handled between waits).
POLL_S = 1.0


class RoleError(RuntimeError):
    """A role's actor died, raised, or did not answer a call within its deadline; the message names
    the role, rank(s), node and call, and `kind` says which: "died" (its process is gone), "late"
    (past the deadline), "failed" (the call raised) or "unplaced" (no room to start it), since only
    the first two are healed by restarting the actor. `ActorGroupError` is this error."""

    def __init__(
        self,
        message: str,
        role: str,
        ranks: Sequence[int],
        call: str = "",
        nodes: Sequence[str] = (),
        kind: str = "failed",
    ) -> None:
        super().__init__(message)
        self.role, self.ranks, self.call, self.nodes = role, list(ranks), call, list(nodes)
        self.kind = kind


@dataclass(frozen=True)
class Callee:
    """Who answers a call, for errors: a role, its rank (None for a single actor), its Ray node id."""

    role: str
    rank: int | None = None
    node_id: str | None = None

    def __str__(self) -> str:
        return self.role if self.rank is None else f"{self.role} rank {self.rank}"


def get(
    refs: Sequence[Any], call: str, timeout_s: float | None, callees: Callee | Sequence[Callee]
) -> list[Any]:
    """The results of `refs` (one call each, made on `callees[i]`, or all on one callee), in order.

    RoleError at once when one of them died or raised (the user's exception stays reachable as the
    error's `__cause__`), or when some are still running after `timeout_s` (None: no deadline, for
    calls that only wait on others that have one)."""
    import ray

    who = [callees] * len(refs) if isinstance(callees, Callee) else list(callees)
    if len(who) != len(refs):
        raise ValueError(f"{call!r}: {len(refs)} calls but {len(who)} callees")
    results: list[Any] = [None] * len(refs)
    pending = {ref: i for i, ref in enumerate(refs)}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        left = POLL_S if deadline is None else min(POLL_S, max(0.0, deadline - time.monotonic()))
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=left)
        if not ready and deadline is not None and time.monotonic() >= deadline:
            late = [who[i] for i in sorted(pending.values())]
            raise _error(late, f"did not finish {call!r} within {timeout_s:.0f}s", call, "late")
        for ref in ready:
            i = pending.pop(ref)
            results[i] = _result(ref, call, who[i])
    return results


def first_done(
    refs: Sequence[Any], calls: Sequence[str], deadlines: Sequence[float | None], callees: Sequence[Callee]
) -> tuple[int, Any, RoleError | None]:
    """Wait for the first of `refs` to finish, fail or pass its own deadline (a `time.monotonic()`
    time, None for none): (its index, its result, None), or (its index, None, the RoleError naming
    it). For callers that heal one failed call and keep waiting on the others."""
    import ray

    while True:
        now = time.monotonic()
        for i, deadline in enumerate(deadlines):
            if deadline is not None and now >= deadline:
                return i, None, _error([callees[i]], f"did not finish {calls[i]!r} in time", calls[i], "late")
        soonest = min((d for d in deadlines if d is not None), default=now + POLL_S)
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=min(POLL_S, max(0.0, soonest - now)))
        if ready:
            i = list(refs).index(ready[0])
            try:
                return i, _result(ready[0], calls[i], callees[i]), None
            except RoleError as err:
                return i, None, err


def when_done(refs: Sequence[Any]) -> threading.Event:
    """An event a daemon thread sets once every one of `refs` has finished (answered, raised or lost
    its actor), without fetching their results: for a process that changes course when other roles
    stop computing (`tandem.learners.threads.CoreHandoff`). Their failures are for whoever waits on
    the results. Setting the event early tells the thread to stop waiting."""
    import ray

    done = threading.Event()

    def wait() -> None:
        while not done.is_set():
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=POLL_S, fetch_local=False)
            if len(ready) == len(refs):
                done.set()

    threading.Thread(target=wait, name="when_done", daemon=True).start()
    return done


def find_dead(
    actors: Sequence[Any], callees: Sequence[Callee], wait_s: float = 0.25
) -> list[tuple[int, RoleError]]:
    """(index, RoleError) of those of `actors` found dead, by a no-op call each: a dead actor's fails
    at once, a live one's answers or (busy) waits its turn; not waited for past `wait_s`."""
    import ray

    refs = [a.__ray_call__.remote(_nothing) for a in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
    dead = []
    for ref in ready:
        i = refs.index(ref)
        try:
            _result(ref, "probe", callees[i])
        except RoleError as err:
            dead.append((i, err))
    return dead


def _nothing(actor_self: Any) -> None:
    return None


def _result(ref: Any, call: str, callee: Callee) -> Any:
    """The result of a finished call; RoleError if its actor died or it raised."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    try:
        return ray.get(ref)
    except RayActorError as e:
        raise _error([callee], f"died during {call!r}: {_first_line(e)}", call, "died") from e
    except RayTaskError as e:
        raise _error([callee], f"failed in {call!r}: {_cause(e)}", call) from e


def get_one(ref: Any, call: str, timeout_s: float | None, callee: Callee) -> Any:
    """`get` of a single call."""
    return get([ref], call, timeout_s, callee)[0]


def node_of(actor_self: Any) -> str:
    """Runs inside an actor (via `__ray_call__`): the Ray node id it runs on."""
    import ray

    return ray.get_runtime_context().get_node_id()


def _error(callees: list[Callee], what: str, call: str, kind: str = "failed") -> RoleError:
    first = callees[0]
    ranks = [c.rank for c in callees if c.rank is not None]
    if first.rank is None or len(callees) == 1:
        who = str(first)
    else:
        who = f"{first.role}: rank(s) {ranks}"
    nodes = [c.node_id for c in callees if c.node_id]
    where = f" (node {', '.join(sorted({_address(n) for n in nodes}))})" if nodes else ""
    return RoleError(f"{who} {what}{where}", first.role, ranks, call, nodes, kind)


def _address(node_id: str) -> str:
    """A node's IP address (what people can find), else its Ray id."""
    import ray

    try:
        return next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)
    except (StopIteration, KeyError, RuntimeError):
        return node_id[:12]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _cause(err: BaseException) -> str:
    """The user-level exception inside a RayTaskError (type and message), not Ray's wrapping."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return _first_line(err)
