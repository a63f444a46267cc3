"""Shared fixtures: one local Ray per pytest process (each xdist worker has its own), models built
into a per-machine cache."""

from __future__ import annotations

import os

import pytest

# The embedded tiny models are built once per machine into this cache (deterministic, so reuse is safe).
os.environ.setdefault("TANDEM_CACHE", os.path.expanduser("~/.cache/tandem"))
os.environ.setdefault("WANDB_MODE", "disabled")

from tandem.cluster.runtime import setup_env

setup_env()


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray (8 logical CPUs: actors mostly wait on each other) shared by this process's tests."""
    import ray

    from tandem.cluster.runtime import init_ray
    from tandem.config import RayConfig

    init_ray(RayConfig(num_cpus=8))
    yield ray
    ray.shutdown()
