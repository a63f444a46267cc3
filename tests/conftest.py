"""Shared fixtures: one local Ray per pytest process (each xdist worker has its own), models built
into a per-machine cache."""

from __future__ import annotations

import os

import pytest

# The embedded tiny models are built once per machine into this cache (deterministic, so reuse is safe).
os.environ.setdefault("TANDEM_CACHE", os.path.expanduser("~/.cache/tandem"))
os.environ.setdefault("WANDB_MODE", "disabled")
# A test session's Ray sees 60-70 workers come and go (two log files each). Its log monitor polls
# every worker log file ten times a second, a dead worker's too for as long as the file stays open (up
# to 200 open), and globs the folder on every poll: after 80 dead workers it used 4.1 s of CPU a
# minute, and 95 s over one two-worker `make test`. With at most 16 files open it rotates them, moving a dead worker's out of
# the folder as it closes it; with a "many files" threshold of 0 it globs every 0.5 s
# (LOG_NAME_UPDATE_INTERVAL_S), not on every pass. Together: 0.7 s a minute.
os.environ.setdefault("RAY_LOG_MONITOR_MAX_OPEN_FILES", "16")
os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")

from tandem.cluster.runtime import setup_env

setup_env()


#: The two longest files (5-6 min each under `make test`'s two workers) go first, so xdist's first two
#: work units (`--dist loadfile --no-loadscope-reorder`) put one on each worker and the short files
#: fill in around them, instead of one worker running a long file alone at the end.
LONGEST = ("tests/faults/test_kill.py", "tests/recipes/test_ppo.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in LONGEST)  # stable: the rest keep order


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray (8 logical CPUs: actors mostly wait on each other) shared by this process's tests."""
    import ray

    from tandem.cluster.runtime import init_ray
    from tandem.config import RayConfig

    init_ray(RayConfig(num_cpus=8))
    yield ray
    ray.shutdown()
