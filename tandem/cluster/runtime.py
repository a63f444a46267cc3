"""Process environment, Ray start/attach, and Ray's lifetime for one job."""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from tandem.config import Config, RayConfig
from tandem.errors import UserError


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def core_share(sharers: int) -> int:
    """This process's share of the cores it may run on, split `sharers` ways (at least 1 thread).

    Ray gives an actor as many compute threads as Ray CPUs (1 by default) even while the node's
    other cores sit idle; in the synchronous loops a role that computes alone takes its share instead.
    """
    return max(1, len(os.sched_getaffinity(0)) // max(1, sharers))


@contextmanager
def compute_threads(n: int) -> Iterator[None]:
    """torch computes on `n` threads inside the block, then on as many as before (the process's
    usual count: Ray's CPU share, which the calls that compute beside other roles keep)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


@contextmanager
def startup_heap() -> Iterator[None]:
    """Python's cyclic collector paused while a role imports its libraries and builds its model;
    then one collection and what survived moved out of the collector's reach (`gc.freeze`).

    Each automatic full collection scans every live object, and vLLM's, DeepSpeed's and
    transformers' imports make millions, so the collections during a start cost seconds of CPU:
    a vLLM engine for the tiny model (imports and build) came up in 5.5 s instead of 8.1 s,
    DeepSpeed's and transformers' imports took 3.2 s instead of 4.1 s, and `make test` ran 13 min 49 s
    instead of 16 min 15 s. Later collections scan only what the role allocates afterwards (vLLM
    freezes its heap after startup for the same reason).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
        if enabled:
            gc.enable()


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


def local_cpu_cap(cfg: RayConfig) -> int:
    """Most logical CPUs a local Ray sized for a job takes: `ray.max_cpus`, else 4 per core.

    Logical CPUs may exceed the cores (tandem's CPU actors mostly wait on each other; the tests run
    8 on 2 cores), but not without bound: every engine and learner holds a model in memory, and 64
    engines on 2 cores used up the RAM before the first step.
    """
    return cfg.max_cpus or 4 * len(os.sched_getaffinity(0))


def local_cpus(cfg: RayConfig, need: int) -> int:
    """Logical CPUs of a local Ray for a job whose roles take `need`: `ray.num_cpus` when set, else
    enough for the job and at least the cores (and 4), up to `local_cpu_cap`."""
    if cfg.num_cpus:
        return cfg.num_cpus
    return min(max(need, len(os.sched_getaffinity(0)), 4), local_cpu_cap(cfg))


def check_local_fit(cfg: RayConfig, need: int) -> None:
    """UserError, before Ray starts, when a local Ray cannot hold the job's roles: they would
    otherwise wait for CPUs that never come (a local Ray is the whole cluster)."""
    have = local_cpus(cfg, need)
    if need <= have:
        return
    limit = f"ray.num_cpus={cfg.num_cpus}" if cfg.num_cpus else f"ray.max_cpus={local_cpu_cap(cfg)}"
    raise UserError(
        f"the job's roles need {need} logical CPUs, but a local Ray here has {have} ({limit}, "
        f"{len(os.sched_getaffinity(0))} cores): lower rollout.num_engines or the roles' CPUs "
        "(rollout.cpus_per_engine, learner.cpus_per_rank, critic.cpus_per_rank, reward.cpus, "
        "reference.cpus), or raise ray.max_cpus to share the cores further"
    )


def _starts_local(cfg: RayConfig) -> bool:
    # RAY_ADDRESS: a driver started by Ray Jobs (`tandem submit`) joins its cluster.
    return not cfg.address and not os.environ.get("RAY_ADDRESS")


def init_ray(cfg: RayConfig, num_cpus: int | None = None) -> None:
    """Attach to `cfg.address` (or the job's RAY_ADDRESS), or start a local Ray with `local_cpus`
    for a job needing `num_cpus` (a no-op if Ray is up).

    The local Ray gets an object-store cap: uncapped, Ray reserves about 30% of RAM in /dev/shm.
    """
    import ray

    setup_env()
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": worker_env()}
    if cfg.address:
        ray.init(address=cfg.address, runtime_env=runtime_env, log_to_driver=True)
        return
    if not _starts_local(cfg):
        # The job's cluster and runtime env come with the job.
        ray.init()
        return
    ray.init(
        address="local",
        num_cpus=local_cpus(cfg, num_cpus or 0),
        object_store_memory=cfg.object_store_mb << 20,
        include_dashboard=False,
        runtime_env=runtime_env,
        log_to_driver=True,
    )


@contextmanager
def ray_cluster(cfg: Config, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for one job: attach, or start one for roles taking `num_cpus` logical CPUs (default:
    the learner group's), failing at once if a local Ray cannot hold them; a Ray started here is
    shut down at the end."""
    import ray

    started = not ray.is_initialized()
    need = num_cpus or math.ceil(cfg.learner.world_size * cfg.learner.cpus_per_rank)
    if started and _starts_local(cfg.ray):
        check_local_fit(cfg.ray, need)
    init_ray(cfg.ray, num_cpus=need)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
