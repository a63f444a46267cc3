"""How big a local Ray gets, the job that cannot fit in it failing before Ray starts, and a role's
startup heap kept out of the collector's reach."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

from tandem.cluster.runtime import check_local_fit, local_cpus, startup_heap
from tandem.config import RayConfig
from tandem.errors import UserError

REPO = Path(__file__).resolve().parents[2]
CORES = len(os.sched_getaffinity(0))


def test_a_local_ray_fits_the_job_up_to_four_cpus_per_core():
    assert local_cpus(RayConfig(), need=1) == max(CORES, 4)
    assert local_cpus(RayConfig(), need=4 * CORES) == 4 * CORES
    assert local_cpus(RayConfig(), need=67) == min(67, 4 * CORES)  # was 67 on any machine
    assert local_cpus(RayConfig(max_cpus=100), need=67) == 67
    assert local_cpus(RayConfig(num_cpus=3), need=67) == 3  # the user's number is kept


def test_a_job_that_cannot_fit_is_refused_naming_need_and_limit():
    check_local_fit(RayConfig(max_cpus=8), need=8)
    with pytest.raises(
        UserError, match=r"need 67 logical CPUs, but a local Ray here has 8 \(ray.max_cpus=8,"
    ):
        check_local_fit(RayConfig(max_cpus=8), need=67)
    with pytest.raises(UserError, match=r"has 4 \(ray.num_cpus=4,.*rollout.num_engines"):
        check_local_fit(RayConfig(num_cpus=4), need=5)


def test_too_many_engines_is_an_error_before_any_process_starts():
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "ppo", "configs/ppo.yaml", f"rollout.num_engines={64 * CORES}"],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    took = time.monotonic() - started
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"the job's roles need {64 * CORES + 3} logical CPUs" in out.stderr
    assert "Traceback" not in out.stderr and "Started a local Ray" not in out.stderr
    assert took < 60, took


def test_a_startup_runs_without_collections_and_leaves_its_survivors_frozen_and_its_garbage_collected():
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    frozen, was_enabled = gc.get_freeze_count(), gc.isenabled()
    gc.enable()
    try:
        with startup_heap():
            assert not gc.isenabled()
            kept = [Cycle() for _ in range(1000)]  # what a start builds and keeps
            dropped = weakref.ref(Cycle())  # and its garbage (a cycle: only the collector frees it)
            garbage = gc.get_count()[0]
            assert dropped() is not None
        assert gc.isenabled() and garbage > 1000  # no automatic collection ran inside
        assert gc.get_freeze_count() >= frozen + len(kept)
        assert dropped() is None  # collected before the freeze, not frozen with the rest
        gc.disable()
        with startup_heap():
            pass
        assert not gc.isenabled()  # a caller's disabled collector stays so
    finally:
        gc.unfreeze()  # this test process's heap goes back under the collector
        if was_enabled:
            gc.enable()
