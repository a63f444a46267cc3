"""Healing a single actor in place: what is healed (a death, a missed deadline), what is not (a call
that raised, one that misses its deadline again), the budget, and the call issued again."""

from __future__ import annotations

import os
import sys

import pytest
from ray import cloudpickle

from tandem.cluster.calls import RoleError
from tandem.cluster.healing import Heals, Restartable

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _error(kind: str) -> RoleError:
    return RoleError(f"reward actor {kind}", "reward actor", [], "score", kind=kind)


def test_heals_take_deaths_and_missed_deadlines_within_the_budget(capsys):
    heals = Heals("run.max_actor_restarts", 2)
    for kind in ("failed", "unplaced"):  # restarting would not help: the error itself goes on
        with pytest.raises(RoleError) as err:
            heals.begin(_error(kind))
        assert str(err.value) == f"reward actor {kind}"
    first = heals.begin(_error("died"))
    heals.done(first, "reward actor died", "started it again")
    assert first.healed_at >= first.detected_at and heals.count == 1
    assert (
        "tandem: warning: reward actor died; started it again (healed in place in" in capsys.readouterr().err
    )
    with pytest.raises(RoleError, match="missed its deadline again after a restart"):
        heals.begin(_error("late"), again=True)
    heals.begin(_error("late"))
    with pytest.raises(RoleError, match=r"no restarts in place left \(run.max_actor_restarts=2\)") as err:
        heals.begin(_error("died"))
    assert err.value.kind == "died" and heals.count == 2


class Counter:
    """Counts its calls; `exit_on` kills its own process on that call (once per process)."""

    def __init__(self) -> None:
        self.calls = 0

    def add(self, x: int, exit_on: int = 0) -> tuple[int, int]:
        self.calls += 1
        if self.calls == exit_on:
            os._exit(1)
        return x + 1, os.getpid()


def test_a_dead_actor_is_started_again_and_its_call_issued_again(ray_session):
    import ray

    heals = Heals("run.max_actor_restarts", 1)
    counter = Restartable(
        "counter", ray.remote(Counter).options(num_cpus=0.1).remote, {"CPU": 0.1}, 60, heals
    )
    counter.ready()
    assert counter.result(counter.submit("add", 1), 60)[0] == 2
    pid = counter.result(counter.submit("add", 1), 60)[1]
    # The first process dies on its 3rd call; the new one answers it (its own 1st call).
    assert counter.result(counter.submit("add", 41, 3), 60)[0] == 42 and heals.count == 1
    assert counter.result(counter.submit("add", 0), 60)[1] != pid
    with pytest.raises(RoleError, match="no restarts in place left"):  # the budget is spent
        counter.result(counter.submit("add", 0, 3), 60)
    counter.shutdown()


def test_a_call_made_before_a_heal_goes_to_the_new_actor_without_healing_it_again(ray_session):
    # As a batch scored ahead: its call was queued on the actor that died answering an earlier one.
    import ray

    heals = Heals("run.max_actor_restarts", 3)
    counter = Restartable(
        "counter", ray.remote(Counter).options(num_cpus=0.1).remote, {"CPU": 0.1}, 60, heals
    )
    counter.ready()
    # The first process dies on its 2nd call; its replacement answers that one as its own 1st call.
    # The 1st call is answered before the 2nd is made: a process that exits a moment after replying
    # may take the reply with it, and that call would then (rightly) be healed too.
    assert counter.result(counter.submit("add", 0), 60)[0] == 1
    first, queued = counter.submit("add", 1, 2), counter.submit("add", 2)
    assert counter.result(first, 60)[0] == 2 and heals.count == 1
    value, pid = counter.result(queued, 60)
    assert value == 3 and heals.count == 1
    assert counter.result(counter.submit("add", 0), 60)[1] == pid  # still the one started by the heal
    counter.shutdown()
