"""Process environment, Ray start/attach, and Ray's lifetime for one job."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from tandem.config import Config, RayConfig


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def core_share(sharers: int) -> int:
    """This process's share of the cores it may run on, split `sharers` ways (at least 1 thread).

    Ray gives an actor as many compute threads as Ray CPUs (1 by default) even while the node's
    other cores sit idle; in the synchronous loops a role that computes alone takes its share instead.
    """
    return max(1, len(os.sched_getaffinity(0)) // max(1, sharers))


def setup_env() -> None:
    """Environment defaults every tandem process needs, set before vLLM/DeepSpeed are imported.

    On CPU: vLLM's engine in-process (2-4 s start and 1 GB, against 20-35 s and 2.3 GB for the
    multiprocess engine) and DeepSpeed's CPU accelerator. Values the user set win.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if not cuda_available():
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def worker_env() -> dict[str, str]:
    """The env vars Ray actors get (runtime_env), so workers on other nodes see the same defaults."""
    setup_env()
    keys = (
        "RAY_USAGE_STATS_ENABLED",
        "TOKENIZERS_PARALLELISM",
        "HF_DATASETS_OFFLINE",
        "VLLM_ENABLE_V1_MULTIPROCESSING",
        "DS_ACCELERATOR",
        "TANDEM_CACHE",
        "WANDB_MODE",
    )
    return {k: os.environ[k] for k in keys if k in os.environ}


def placement_options(resources: Mapping[str, float], placement: tuple[Any, int] | None) -> dict[str, Any]:
    """Ray actor options that place a single actor: by its custom `resources`, or, colocated, in
    bundle `placement[1]` of placement group `placement[0]` (whose node the bundle already chose,
    so the actor's own custom resources are not asked for again)."""
    if placement is None:
        return {"resources": dict(resources)}
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group, bundle = placement
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, bundle)}


def init_ray(cfg: RayConfig, num_cpus: int | None = None) -> None:
    """Attach to `cfg.address` (or the job's RAY_ADDRESS), or start a local Ray sized for the job (a no-op if Ray is up).

    The local Ray gets an object-store cap: uncapped, Ray reserves about 30% of RAM in /dev/shm.
    Logical CPUs may exceed the real cores: tandem's CPU actors mostly wait on each other.
    """
    import ray

    setup_env()
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": worker_env()}
    if cfg.address:
        ray.init(address=cfg.address, runtime_env=runtime_env, log_to_driver=True)
        return
    if os.environ.get("RAY_ADDRESS"):
        # A driver started by Ray Jobs (`tandem submit`): its cluster and runtime env come with the job.
        ray.init()
        return
    ray.init(
        address="local",
        num_cpus=cfg.num_cpus or num_cpus or max(os.cpu_count() or 1, 4),
        object_store_memory=cfg.object_store_mb << 20,
        include_dashboard=False,
        runtime_env=runtime_env,
        log_to_driver=True,
    )


@contextmanager
def ray_cluster(cfg: Config, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for one job: attach, or start one with `num_cpus` logical CPUs (default: enough for the
    learner group); a Ray started here is shut down at the end."""
    import ray

    started = not ray.is_initialized()
    need = num_cpus or math.ceil(cfg.learner.world_size * cfg.learner.cpus_per_rank)
    init_ray(cfg.ray, num_cpus=max(need, os.cpu_count() or 1, 4))
    try:
        yield
    finally:
        if started:
            ray.shutdown()
