"""Actor groups: N ranks of one role as Ray actors in a placement group, called all at once.

A group is how the driver talks to a role ("policy", "critic", "rm", ...): it places the ranks,
gives each the torch.distributed environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT),
dispatches one method to every rank and collects the results in rank order. Any rank that dies or
raises fails the whole call at once, with an error naming the role and rank; the other ranks, which
may be blocked in a collective with the dead one, are not waited for.

Rank 0 is created first and publishes its node's address and a free port on it; the other ranks
are created with those in their environment. So an actor's `__init__` must not start collectives:
the role's own setup method does that, once every rank exists (see `tandem.learners.base`).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Self

from tandem.cluster.calls import POLL_S, Callee, RoleError, get, get_one, node_of
from tandem.cluster.runtime import worker_env

#: Placement-group strategies Ray accepts.
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


#: A rank of a group died, raised, or did not answer in time; names the role, rank(s) and node.
ActorGroupError = RoleError


def make_placement_group(
    num_bundles: int,
    cpus_per_bundle: float,
    gpus_per_bundle: float = 0.0,
    strategy: str = "PACK",
    name: str = "",
    timeout_s: float = 300.0,
    resources: Mapping[str, float] | None = None,
    first_bundle_extra: Mapping[str, float] | None = None,
):
    """A placement group of identical bundles, ready (resources reserved) when it returns.

    `resources`: Ray custom resources of each bundle (e.g. {"node_learn": 1} pins it to nodes
    that advertise that resource). `first_bundle_extra`: resources added to bundle 0 only (the
    single actors colocated with rank 0).

    Raises ActorGroupError if the cluster cannot provide the bundles within `timeout_s` (a common
    cause: asking for more CPUs/GPUs than the cluster has).
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    if strategy not in STRATEGIES:
        raise ValueError(f"placement strategy must be one of {STRATEGIES}, got {strategy!r}")
    bundle: dict[str, float] = {"CPU": cpus_per_bundle, **(resources or {})}
    if gpus_per_bundle:
        bundle["GPU"] = gpus_per_bundle
    bundles = [dict(bundle) for _ in range(num_bundles)]
    for key, value in (first_bundle_extra or {}).items():
        if value:
            bundles[0][key] = bundles[0].get(key, 0.0) + value
    pg = placement_group(bundles, strategy=strategy, name=name)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise ActorGroupError(
            f"{name or 'placement group'}: bundles {bundles} ({strategy}) were not "
            f"available within {timeout_s:.0f}s; {cluster_resources()}",
            name,
            list(range(num_bundles)),
        )
    return pg


def cluster_resources() -> str:
    """What the cluster has, in all and free now, for errors about what could not be placed."""
    import ray

    def fmt(resources: Mapping[str, float]) -> str:
        shown = [
            f"{k} {v / 2**30:.1f} GiB" if "memory" in k else f"{k} {v:g}"
            for k, v in sorted(resources.items())
            # Ray's bookkeeping (a placement group's reserved share shows as e.g. CPU_group_<id>), not
            # what a role asks for.
            if not k.startswith(("node:", "bundle_group")) and "_group_" not in k
        ]
        return ", ".join(shown) or "nothing"

    return f"the cluster has {fmt(ray.cluster_resources())} in all; {fmt(ray.available_resources())} free"


def wait_ready(actors: Mapping[str, Any], asks: Mapping[str, float], timeout_s: float) -> dict[str, str]:
    """Wait until every actor of `actors` (by name, each asking for `asks`) is placed and built;
    returns the Ray node id of each (by name), for errors that name where a call failed.

    ActorGroupError after `timeout_s` naming those still waiting: those not placed (kind "unplaced":
    single actors outside a placement group otherwise wait for room forever) with what each asks for
    and what the cluster has, and those placed whose constructor has not returned (kind "late") with
    their process and node; at once naming the actor if a constructor raises."""
    import ray

    pending = {actor.__ray_call__.remote(node_of): name for name, actor in actors.items()}
    nodes: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        # Short waits in a loop: a blocking ray.wait would not let Ctrl-C through.
        ready, _ = ray.wait(list(pending), timeout=min(POLL_S, max(0.0, deadline - time.monotonic())))
        for ref in ready:
            name = pending.pop(ref)
            nodes[name] = get_one(ref, "startup", None, Callee(name))  # ready: raises or returns now
        if pending and time.monotonic() >= deadline:
            raise _not_ready(sorted(pending.values()), actors, asks, timeout_s)
    return nodes


def _not_ready(
    names: Sequence[str], actors: Mapping[str, Any], asks: Mapping[str, float], timeout_s: float
) -> RoleError:
    """The error for actors `names` not ready after `timeout_s`, telling those waiting for room from
    those placed and still building (a slow model load points elsewhere than a full cluster)."""
    where = _processes({name: actors[name] for name in names})
    unplaced = [name for name in names if where.get(name, "") is None]
    building = [f"{name} ({where[name]})" for name in names if where.get(name)]
    unknown = [name for name in names if name not in where]
    asked = ", ".join(f"{k} {v:g}" for k, v in asks.items())
    room = f"each asking for {asked}; {cluster_resources()}"
    parts = []
    if unplaced:
        parts.append(f"{', '.join(unplaced)} not placed within {timeout_s:.0f}s, {room}")
    if unknown:
        parts.append(f"{', '.join(unknown)} not placed or not built within {timeout_s:.0f}s, {room}")
    if building:
        parts.append(
            f"{', '.join(building)} placed but not built within {timeout_s:.0f}s: the constructor "
            "is still running (the worker's log says where; run.timeouts.startup_s sets the wait)"
        )
    kind = "late" if not (unplaced or unknown) else "unplaced"
    first = (unplaced or unknown or names)[0]
    return ActorGroupError("; and ".join(parts), first, [], "startup", kind=kind)


def _processes(actors: Mapping[str, Any]) -> dict[str, str | None]:
    """Per actor name: "process <pid> on <ip>" once Ray has given it a worker process (its
    constructor runs there), None while it waits for room; {} if Ray's actor table cannot be read.
    From the GCS table: Ray's public state API needs the dashboard, which a local Ray here runs
    without."""
    from ray.exceptions import RayError

    try:
        from ray._private.state import state

        table = {name: state.actor_table(actor._actor_id.hex()) or {} for name, actor in actors.items()}
    except (ImportError, AttributeError, RayError):  # a Ray whose private table moved: says less
        return {}
    return {
        name: f"process {info['Pid']} on {info.get('Address', {}).get('IPAddress', '?')}"
        if info.get("Pid")
        else None
        for name, info in table.items()
    }


def _bundle_nodes(pg, indices: Sequence[int]) -> list[str]:
    from ray.util.placement_group import placement_group_table

    table = placement_group_table(pg)["bundles_to_node_id"]
    return [table[i] for i in indices]


# Rank 0's rendezvous store, listening from the moment its port is published until the process
# group meets through it. A port only probed free and bound later (at `setup`) was taken meanwhile now
# and then: vLLM's gloo groups and Ray's workers bind ephemeral ports while the other roles start.
_MASTER_STORE: Any = None


def _publish_master(actor: Any) -> tuple[str, int]:
    """Runs inside rank 0 (via `__ray_call__`): its node address and the port of the rendezvous store
    it opens there, also set in its own environment (MASTER_ADDR/PORT)."""
    global _MASTER_STORE
    import ray
    import torch.distributed as dist

    addr = ray.util.get_node_ip_address()
    _MASTER_STORE = dist.TCPStore(addr, 0, world_size=None, is_master=True, wait_for_workers=False)
    port = _MASTER_STORE.port
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    return addr, port


def rendezvous_store(rank: int, timeout: timedelta) -> Any:
    """The store a rank's default process group meets through: on rank 0 of an ActorGroup the one it
    opened when it published its port; elsewhere a client of MASTER_ADDR/PORT (rank 0 outside an
    ActorGroup hosts it there, as torch's env:// rendezvous would)."""
    import torch.distributed as dist

    if _MASTER_STORE is not None:
        return _MASTER_STORE
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    return dist.TCPStore(addr, port, world_size=None, is_master=rank == 0, timeout=timeout)


class ActorGroup:
    """`num_actors` Ray actors of `actor_cls` (one rank each) for one named role.

    Args:
        role: the role's name, used in errors and in each rank's TANDEM_ROLE ("policy", "critic", ...).
        actor_cls: a plain class (wrapped with `ray.remote`) or a Ray actor class.
        num_actors: ranks (the world size of the role's process group).
        cpus_per_actor, gpus_per_actor: each rank's bundle.
        resources: Ray custom resources of each rank (pins the role to nodes that have them).
        strategy: placement strategy of a new placement group (PACK, SPREAD, ...).
        args, kwargs: constructor arguments, the same for every rank.
        env: extra environment variables of every rank.
        timeout_s: default time limit of `call` (None: wait as long as every rank is alive).
        deadlines: time limits of particular methods (by name), over `timeout_s`.
        ready_timeout_s: limit for placing the group and running the constructors.
        placement_group, bundle_indices: place the ranks in an existing placement group (colocated
            roles share one); the group then does not remove it on shutdown.
    """

    def __init__(
        self,
        role: str,
        actor_cls: type,
        num_actors: int,
        *,
        cpus_per_actor: float = 1.0,
        gpus_per_actor: float = 0.0,
        strategy: str = "PACK",
        resources: Mapping[str, float] | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        deadlines: Mapping[str, float] | None = None,
        ready_timeout_s: float = 300.0,
        placement_group: Any = None,
        bundle_indices: Sequence[int] | None = None,
    ) -> None:
        import ray

        if num_actors < 1:
            raise ValueError(f"{role}: num_actors must be >= 1, got {num_actors}")
        self.role = role
        self.world_size = num_actors
        self.timeout_s = timeout_s
        self.deadlines = dict(deadlines or {})
        self._owns_pg = placement_group is None
        self._pg = (
            placement_group
            if placement_group is not None
            else make_placement_group(
                num_actors,
                cpus_per_actor,
                gpus_per_actor,
                strategy,
                # Unique: placement-group names are cluster-wide, and jobs may share a cluster.
                name=f"{role}-{uuid.uuid4().hex[:8]}",
                timeout_s=ready_timeout_s,
                resources=resources,
            )
        )
        self._bundles = list(bundle_indices) if bundle_indices is not None else list(range(num_actors))
        if len(self._bundles) != num_actors:
            raise ValueError(f"{role}: {num_actors} actors but {len(self._bundles)} bundle indices")
        remote_cls = actor_cls if isinstance(actor_cls, ray.actor.ActorClass) else ray.remote(actor_cls)
        self._options = {"num_cpus": cpus_per_actor, "num_gpus": gpus_per_actor}
        if resources:
            self._options["resources"] = dict(resources)
        self._ctor = (tuple(args), dict(kwargs or {}))
        self._env = {**worker_env(), **(env or {}), "WORLD_SIZE": str(num_actors), "TANDEM_ROLE": role}
        self.actors: list[Any] = []
        try:
            self._start(remote_cls, ready_timeout_s)
        except BaseException:
            self.shutdown()
            raise

    def _start(self, remote_cls: Any, ready_timeout_s: float) -> None:
        nodes = _bundle_nodes(self._pg, self._bundles)
        self.actors.append(self._create(remote_cls, 0, nodes))
        self.master_addr, self.master_port = self.collect(
            [self.actors[0].__ray_call__.remote(_publish_master)], "startup", ready_timeout_s
        )[0]
        for rank in range(1, self.world_size):
            self.actors.append(self._create(remote_cls, rank, nodes))
        self.collect([a.__ray_ready__.remote() for a in self.actors], "startup", ready_timeout_s)
        self.node_ids = nodes

    def _create(self, remote_cls: Any, rank: int, nodes: list[str]) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        node = nodes[rank]
        env = dict(self._env)
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(nodes[:rank].count(node)),
            LOCAL_WORLD_SIZE=str(nodes.count(node)),
        )
        if rank > 0:
            env.update(MASTER_ADDR=self.master_addr, MASTER_PORT=str(self.master_port))
        args, kwargs = self._ctor
        return remote_cls.options(
            **self._options,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, self._bundles[rank]),
            runtime_env={"env_vars": env},
        ).remote(*args, **kwargs)

    # -- dispatch -----------------------------------------------------------------------------

    def async_call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Start `method(*args, **kwargs)` on every rank; returns their ObjectRefs in rank order."""
        return [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors]

    def async_call_per_rank(
        self,
        method: str,
        per_rank_args: Sequence[Sequence[Any]],
        per_rank_kwargs: Sequence[Mapping] | None = None,
    ) -> list[Any]:
        """Start `method(*per_rank_args[r], **per_rank_kwargs[r])` on each rank r; ObjectRefs."""
        if len(per_rank_args) != self.world_size:
            raise ValueError(f"{self.role}: {len(per_rank_args)} argument sets for {self.world_size} ranks")
        per_rank_kwargs = per_rank_kwargs or [{}] * self.world_size
        return [
            getattr(actor, method).remote(*a, **k)
            for actor, a, k in zip(self.actors, per_rank_args, per_rank_kwargs, strict=True)
        ]

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """`method(*args, **kwargs)` on every rank; the results in rank order."""
        return self.collect(self.async_call(method, *args, **kwargs), method, self.timeout_s)

    def call_per_rank(
        self,
        method: str,
        per_rank_args: Sequence[Sequence[Any]],
        per_rank_kwargs: Sequence[Mapping] | None = None,
    ) -> list[Any]:
        """`method` on each rank with that rank's arguments; the results in rank order."""
        refs = self.async_call_per_rank(method, per_rank_args, per_rank_kwargs)
        return self.collect(refs, method, self.timeout_s)

    def collect(self, refs: Sequence[Any], what: str = "call", timeout_s: float | None = None) -> list[Any]:
        """Results of one ObjectRef per rank, in rank order.

        Fails fast: the first rank to die or raise ends the wait with an ActorGroupError naming the
        role, rank and node (its peers may be stuck in a collective with it and never return). Ranks
        still running after the deadline (`timeout_s`, else the group's deadline for `what`, else its
        `timeout_s`) are named in the error too.
        """
        if timeout_s is None:
            timeout_s = self.deadlines.get(what, self.timeout_s)
        nodes = getattr(self, "node_ids", None) or [None] * len(refs)
        return get(refs, what, timeout_s, [Callee(self.role, r, nodes[r]) for r in range(len(refs))])

    # -- lifecycle ----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Kill every rank and free the placement group (if the group made it). Idempotent."""
        import ray
        from ray.util.placement_group import remove_placement_group

        # Failures here mean the thing is already gone (a dead actor, a removed group).
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.actors = []
        if self._owns_pg and self._pg is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self._pg)
            self._pg = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"ActorGroup(role={self.role!r}, world_size={self.world_size})"
