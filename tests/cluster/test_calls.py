"""The one way to wait on remote calls: deadlines, errors naming role, rank, node and call, and no
other blocking wait in tandem."""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import pytest
from ray import cloudpickle

from tandem.cluster.calls import (
    POLL_S,
    Callee,
    RoleError,
    find_dead,
    first_done,
    get,
    get_one,
    node_of,
    when_done,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

PACKAGE = Path(__file__).resolve().parents[2] / "tandem"


def test_no_blocking_ray_wait_outside_the_layer():
    """`ray.get` only in tandem/cluster/calls.py (after `ray.wait` said the result is there), `ray.wait`
    only in tandem/cluster/: every other wait goes through `calls.get`, which has a deadline."""
    found = {
        (str(p.relative_to(PACKAGE.parent)), n, call)
        for p in PACKAGE.rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        for call in re.findall(r"\bray\.(get|wait)\(", line)
    }
    allowed = {
        f for f in found if f[0] == "tandem/cluster/calls.py" or (f[2] == "wait" and "/cluster/" in f[0])
    }
    assert found - allowed == set()
    assert any(f[0] == "tandem/cluster/calls.py" and f[2] == "get" for f in found)  # the check reads calls


class Slow:
    def nap(self, s: float) -> float:
        time.sleep(s)
        return s

    def die(self) -> None:
        import os

        os._exit(1)


@pytest.fixture(scope="module")
def slow(ray_session):
    import ray

    actors = [ray.remote(Slow).options(num_cpus=0.1).remote() for _ in range(2)]
    nodes = [get_one(a.__ray_call__.remote(node_of), "startup", 60, Callee("slow")) for a in actors]
    yield actors, nodes
    for a in actors:
        ray.kill(a)


def test_results_in_order_and_a_deadline_naming_role_rank_node_and_call(slow):
    import ray

    actors, nodes = slow
    callees = [Callee("napper", r, nodes[r]) for r in range(2)]
    assert get([a.nap.remote(0.2 * (2 - r)) for r, a in enumerate(actors)], "nap", 30, callees) == [0.4, 0.2]
    started = time.monotonic()
    with pytest.raises(RoleError) as err:
        get([actors[0].nap.remote(0.0), actors[1].nap.remote(30)], "nap", 1.5, callees)
    assert time.monotonic() - started < 5  # the deadline, not the call's 30 s
    address = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == nodes[1])
    assert str(err.value) == f"napper rank 1 did not finish 'nap' within 2s (node {address})"
    assert (err.value.role, err.value.ranks, err.value.call) == ("napper", [1], "nap")


def test_a_death_fails_at_once_naming_the_dead_one(ray_session):
    import ray

    doomed = ray.remote(Slow).options(num_cpus=0.1).remote()
    survivor = ray.remote(Slow).options(num_cpus=0.1).remote()
    started = time.monotonic()
    with pytest.raises(RoleError, match=r"^reward actor died during 'score': ") as err:
        get(
            [survivor.nap.remote(60), doomed.die.remote()],
            "score",
            120,
            [Callee("ref"), Callee("reward actor")],
        )
    assert time.monotonic() - started < 30 and err.value.role == "reward actor"
    assert err.value.kind == "died"
    ray.kill(survivor)


def test_first_done_answers_each_call_its_own_way(ray_session):
    """The first call to end, as a result, a death or its own missed deadline, named; the others keep
    running (what a healing caller needs)."""
    import ray

    doomed, napper = (ray.remote(Slow).options(num_cpus=0.1).remote() for _ in range(2))
    callees = [Callee("fast"), Callee("doomed"), Callee("late")]
    now = time.monotonic()
    refs = [napper.nap.remote(0.1), doomed.die.remote(), napper.nap.remote(30)]
    i, result, err = first_done(refs[:1] + refs[2:], ["nap"] * 2, [now + 30, now + 30], callees[::2])
    assert (i, result, err) == (0, 0.1, None)
    i, result, err = first_done(refs[1:], ["die", "nap"], [now + 60, None], callees[1:])
    assert (i, result, err.kind, err.role) == (0, None, "died", "doomed")
    late = time.monotonic()
    i, result, err = first_done(refs[2:], ["nap"], [late + 1.5], callees[2:])
    assert (i, err.kind, str(err)) == (0, "late", "late did not finish 'nap' in time")
    assert time.monotonic() - late < 5
    # The busy napper (its 30 s nap queued the probe) is not taken for dead.
    assert [(i, e.kind) for i, e in find_dead([napper, doomed], callees[:2])] == [(1, "died")]
    ray.kill(napper)


def test_when_done_is_set_once_every_call_has_finished_or_failed(ray_session):
    import ray

    napper, doomed = (ray.remote(Slow).options(num_cpus=0.1).remote() for _ in range(2))
    started = time.monotonic()
    done = when_done([napper.nap.remote(0.2), napper.nap.remote(1.0), doomed.die.remote()])
    assert not done.is_set()
    assert done.wait(30) and time.monotonic() - started >= 1.2  # the naps run in turn
    # Set by the caller: the thread stops waiting on calls that do not end.
    when_done([napper.nap.remote(60)]).set()
    time.sleep(2.5 * POLL_S)
    assert not [t for t in threading.enumerate() if t.name == "when_done"]
    ray.kill(napper)


class Waiter:
    def wait_for(self, refs: list) -> bool:
        """In an actor, as a learner waits on the calls computing beside it (refs in a list reach
        it as refs, not their results)."""
        return when_done(refs).wait(30)


def test_when_done_in_an_actor_given_refs_in_a_list(ray_session):
    import ray

    napper = ray.remote(Slow).options(num_cpus=0.1).remote()
    waiter = ray.remote(Waiter).options(num_cpus=0.1).remote()
    started = time.monotonic()
    assert get_one(waiter.wait_for.remote([napper.nap.remote(0.5)]), "wait_for", 60, Callee("waiter"))
    assert time.monotonic() - started >= 0.5
    ray.kill(napper)
    ray.kill(waiter)
