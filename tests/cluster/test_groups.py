"""Actor groups: rank environment, results in rank order, per-rank args, fail-fast errors."""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from ray import cloudpickle

from tandem.cluster.groups import ActorGroup, ActorGroupError

# Ray workers cannot import test modules: ship this module's classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Worker:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def env(self) -> dict:
        keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TANDEM_ROLE")
        return {k: os.environ.get(k) for k in keys}

    def echo(self, x: int, scale: int = 1) -> tuple[str, int, int]:
        time.sleep(0.05 * (3 - int(os.environ["RANK"])))  # later ranks answer first
        return self.tag, int(os.environ["RANK"]), x * scale

    def die_on(self, rank: int) -> None:
        if int(os.environ["RANK"]) == rank:
            os._exit(1)
        time.sleep(60)  # a peer blocked in a collective with the dead rank

    def fail_on(self, rank: int) -> None:
        if int(os.environ["RANK"]) == rank:
            raise ValueError("boom")
        time.sleep(60)

    def sleep(self, s: float) -> None:
        time.sleep(s)


@pytest.fixture(scope="module")
def group(ray_session):
    with ActorGroup("worker", Worker, 3, cpus_per_actor=0.5, args=("t",)) as g:
        yield g


def test_rank_env_and_master(group):
    envs = group.call("env")
    assert [e["RANK"] for e in envs] == ["0", "1", "2"]
    assert {e["WORLD_SIZE"] for e in envs} == {"3"}
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1", "2"]  # one node
    assert {e["MASTER_PORT"] for e in envs} == {str(group.master_port)}
    assert {e["MASTER_ADDR"] for e in envs} == {group.master_addr}
    assert {e["TANDEM_ROLE"] for e in envs} == {"worker"}


def test_results_in_rank_order(group):
    assert group.call("echo", 5, scale=2) == [("t", 0, 10), ("t", 1, 10), ("t", 2, 10)]
    assert group.call_per_rank("echo", [(1,), (2,), (3,)]) == [("t", 0, 1), ("t", 1, 2), ("t", 2, 3)]
    refs = group.async_call("echo", 1)
    assert [r[1] for r in group.collect(refs)] == [0, 1, 2]


def test_timeout_names_ranks(group):
    with pytest.raises(ActorGroupError, match=r"worker: rank\(s\) \[0, 1, 2\] did not finish 'sleep'"):
        group.collect(group.async_call("sleep", 3), "sleep", timeout_s=0.5)


def test_raising_rank_is_named(ray_session):
    with ActorGroup("critic", Worker, 2, cpus_per_actor=0.5, args=("t",)) as g:
        t0 = time.monotonic()
        with pytest.raises(ActorGroupError, match="critic rank 1 failed in 'fail_on': ValueError: boom"):
            g.call("fail_on", 1)
        assert time.monotonic() - t0 < 30


def test_dead_rank_is_named_fast(ray_session):
    with ActorGroup("policy", Worker, 2, cpus_per_actor=0.5, args=("t",)) as g:
        t0 = time.monotonic()
        with pytest.raises(ActorGroupError, match="policy rank 1 died during 'die_on'") as info:
            g.call("die_on", 1)
        assert info.value.role == "policy" and info.value.ranks == [1]
        assert time.monotonic() - t0 < 30  # not the 60 s its peer sleeps


def test_unplaceable_group_fails_naming_the_ask_and_the_cluster(ray_session):
    with pytest.raises(ActorGroupError, match="not available within") as info:
        ActorGroup("huge", Worker, 2, cpus_per_actor=1000, ready_timeout_s=1, args=("t",))
    assert "'CPU': 1000" in str(info.value) and "the cluster has CPU 8, memory" in str(info.value)


def test_unplaceable_single_actors_fail_within_the_deadline(ray_session):
    import ray

    from tandem.cluster.groups import wait_ready

    fits = ray.remote(Worker).options(num_cpus=0.1).remote("a")
    # Built first: on a loaded machine a worker process may take longer than the 2 s deadline to
    # start, and it would be named too.
    wait_ready({"rollout engine 0": fits}, {"CPU": 0.1}, timeout_s=60)
    too_big = ray.remote(Worker).options(num_cpus=64).remote("b")
    t0 = time.monotonic()
    with pytest.raises(ActorGroupError) as info:
        wait_ready({"rollout engine 0": fits, "rollout engine 1": too_big}, {"CPU": 64}, timeout_s=2)
    took = time.monotonic() - t0
    ray.kill(fits)
    ray.kill(too_big)
    message = str(info.value)
    assert message.startswith("rollout engine 1 not placed within 2s, each asking for CPU 64;")
    assert "the cluster has CPU 8, memory" in message
    assert 2 <= took < 10


class SlowBuild:
    """An actor whose constructor says it has started (a file), then takes a minute: a model load."""

    def __init__(self, started: str) -> None:
        Path(started).write_text(str(os.getpid()))
        time.sleep(60)


def test_actors_placed_but_still_building_are_told_from_unplaced_ones(ray_session, tmp_path):
    """A slow constructor is not a full cluster: the message names the building actor's process, and
    only the unplaced one with the cluster's resources; with none unplaced the kind is "late"."""
    import ray

    from tandem.cluster.groups import wait_ready

    started = tmp_path / "started"
    slow = ray.remote(SlowBuild).options(num_cpus=0.1).remote(str(started))
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:  # its process is up, building
        time.sleep(0.1)
    pid = int(started.read_text())
    too_big = ray.remote(Worker).options(num_cpus=64).remote("b")
    try:
        with pytest.raises(ActorGroupError) as both:
            wait_ready({"reference actor": slow, "reward actor": too_big}, {"CPU": 64}, timeout_s=1)
        with pytest.raises(ActorGroupError) as alone:
            wait_ready({"reference actor": slow}, {"CPU": 0.1}, timeout_s=1)
    finally:
        ray.kill(slow)
        ray.kill(too_big)
    building = f"reference actor (process {pid} on "
    message = str(both.value)
    assert message.startswith("reward actor not placed within 1s, each asking for CPU 64; the cluster has")
    assert f"; and {building}" in message
    assert message.endswith(
        "placed but not built within 1s: the constructor is still running "
        "(the worker's log says where; run.timeouts.startup_s sets the wait)"
    )
    assert (both.value.kind, both.value.role) == ("unplaced", "reward actor")
    assert str(alone.value).startswith(building) and "cluster has" not in str(alone.value)
    assert (alone.value.kind, alone.value.role, alone.value.call) == ("late", "reference actor", "startup")


def test_rank_zero_holds_the_port_it_publishes(monkeypatch):
    """Rank 0's rendezvous store listens on the published port from then on, so no process starting
    before the learners' `setup` (vLLM's gloo groups, Ray's workers) can take it."""
    import socket

    from tandem.cluster import groups

    monkeypatch.setattr(groups, "_MASTER_STORE", None)
    monkeypatch.setenv("MASTER_ADDR", "")
    monkeypatch.setenv("MASTER_PORT", "")
    addr, port = groups._publish_master(None)
    with socket.socket() as s, pytest.raises(OSError):
        s.bind((addr, port))
    assert groups.rendezvous_store(0, timedelta(seconds=5)) is groups._MASTER_STORE
