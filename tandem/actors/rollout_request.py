"""A request spread over the rollout engines, waited for while its engines heal.

`RolloutGroup.submit` cuts a request's items into contiguous slices, one per engine, and numbers each
item (and derives its sampling seed) from its place in the whole request, not in the slice. So a
slice issued again, on a new engine in the dead one's place or on a surviving engine, draws exactly
the samples the lost call would have drawn (with the same weights), and the request still answers
every item once, in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tandem.cluster.calls import Callee, RoleError, find_dead, first_done

if TYPE_CHECKING:
    from tandem.actors.rollout import RolloutGroup


@dataclass
class Share:
    """One engine's slice [start, end) of the request, and its call in flight."""

    engine: Any  # the engine actor drawing it
    start: int
    end: int
    ref: Any
    late: bool = False  # issued again after its engine missed the deadline


class RolloutRequest:
    """`method(items[a:b], *(x[a:b] for x in extra), **kwargs)` on the engines, one slice each."""

    def __init__(
        self,
        group: RolloutGroup,
        method: str,
        items: list[Any],
        extra: tuple[list[Any], ...],
        kwargs: dict[str, Any],
        timeout_s: float,
    ) -> None:
        self.group, self.method, self.items, self.extra = group, method, items, extra
        self.kwargs, self.timeout_s = kwargs, timeout_s
        self.shares: list[Share] = []
        self._results: list[Any] | None = None

    def issue(self, engine: Any, start: int, end: int) -> Any:
        """Start the slice [start, end) on `engine`; returns the call's ref. generate*/draw number
        the prompts (and derive their seeds) from the slice's place in the whole request."""
        offset = {"index_offset": start} if self.method.startswith(("generate", "draw")) else {}
        return getattr(engine, self.method).remote(
            self.items[start:end], *(x[start:end] for x in self.extra), **self.kwargs, **offset
        )

    def results(self, flat: bool = True) -> list[Any]:
        """Every slice's answer in request order: concatenated, or (`flat` False) one per slice.

        An engine that dies or misses the deadline (`timeout_s` from now, for a slice issued again
        from then) is healed (`replace_engine`) and its slice issued again
        on the engine taking its place; a failure that cannot be healed is raised."""
        if self._results is None:
            done: dict[int, Any] = {}
            deadlines = {i: time.monotonic() + self.timeout_s for i in range(len(self.shares))}
            while len(done) < len(self.shares):
                pending = [i for i in range(len(self.shares)) if i not in done]
                shares = [self.shares[i] for i in pending]
                k, result, err = first_done(
                    [s.ref for s in shares],
                    [self.method] * len(shares),
                    [deadlines[i] for i in pending],
                    [
                        Callee(self.group.name_of(s.engine), None, self.group.node_of(s.engine))
                        for s in shares
                    ],
                )
                i, share = pending[k], shares[k]
                if err is None:
                    done[i] = result
                    continue
                share.engine = replace_engine(self.group, share.engine, err, again=share.late)
                share.ref, share.late = self.issue(share.engine, share.start, share.end), err.kind == "late"
                deadlines[i] = time.monotonic() + self.timeout_s
            self._results = [done[i] for i in range(len(self.shares))]
        if flat:
            return [item for chunk in self._results for item in chunk]
        return list(self._results)


def replace_engine(
    group: RolloutGroup, engine: Any, err: RoleError, again: bool = False, armed: bool = True
) -> Any:
    """The engine to take `engine`'s calls once `err` (it died or missed its deadline) is healed:
    a new engine in its place, started as it was and, when `armed`, loaded with the weights (and
    version) the others sample with before it serves; or, when none is placed and built within
    run.timeouts.startup_s, a surviving engine. The same engine is healed once, however many
    requests find it dead. Raises when it cannot be healed (see `tandem.cluster.healing`)."""
    import ray

    from tandem.cluster.groups import wait_ready

    if engine in group.replaced:
        return group.replaced[engine]
    if engine not in group.engines or not group.options:
        raise err
    heal = group.heals.begin(err, again)
    slot = group.engines.index(engine)
    ray.kill(engine, no_restart=True)  # a stuck one too: it may still hold its calls
    new, name = group.start_engine(slot), f"rollout engine {slot}"
    r = group.cfg.rollout
    try:
        node = wait_ready(
            {name: new},
            {"CPU": r.cpus_per_engine, "GPU": r.gpus_per_engine},
            group.cfg.run.timeouts.startup_s,
        )[name]
    except RoleError as unstarted:  # "unplaced": no room; "late": placed, not built in time
        ray.kill(new, no_restart=True)
        if unstarted.kind not in ("unplaced", "late") or len(group.engines) == 1:
            raise RoleError(f"{err}; starting another failed: {unstarted}", err.role, [], err.call) from err
        new, node, why = None, None, "no room" if unstarted.kind == "unplaced" else "no time"
    if new is None:
        del group.engines[slot], group.node_ids[slot], group.options[slot]
        how = f"{why} to start another: the other {len(group.engines)} engine(s) take its share"
    else:
        group.engines[slot], group.node_ids[slot] = new, node
        how = "started another in its place" + (" with the current weights" if armed else "")
    group.replaced[engine] = new or group.engines[slot % len(group.engines)]
    if group.on_replace is not None:
        group.on_replace(new, node, armed)
    group.heals.done(heal, str(err), f"{how}; its calls issued again")
    return group.replaced[engine]


def heal_dead(group: RolloutGroup) -> None:
    """Replace the engines found dead since their last call, unarmed (for the caller about to load
    weights into every engine)."""
    engines = list(group.engines)  # as probed: a replacement may shorten the group
    callees = [Callee(f"rollout engine {i}", None, n) for i, n in enumerate(group.node_ids)]
    for i, err in find_dead(engines, callees):
        replace_engine(group, engines[i], err, armed=False)
