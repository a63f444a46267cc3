"""Helpers shared by bench sections (not a section itself: the name starts with "_")."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def ray_up(num_cpus: int = 8) -> None:
    """A local Ray for the bench (a no-op when one is up)."""
    from tandem.cluster.runtime import init_ray
    from tandem.config import RayConfig

    init_ray(RayConfig(num_cpus=num_cpus))


def best_and_median(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Seconds of `fn()`: the best and the median of `repeats` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)
