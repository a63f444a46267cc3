"""Helpers shared by bench sections (not a section itself: the name starts with "_")."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Self


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


class PeakMemory:
    """Peak memory of this process and all its descendants (Ray's GCS, raylet and actors when Ray
    was started here), sampled every `interval_s` in a thread. PSS counts a page shared by several
    processes (torch's libraries, the object store) once, split among them; the RSS sum counts it
    in each, so it overstates. The 8 GiB budget is about PSS."""

    def __init__(self, interval_s: float = 0.5, root_pid: int | None = None) -> None:
        import threading

        self.interval_s, self.root_pid = interval_s, root_pid
        self.peak_pss = self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        root = psutil.Process(self.root_pid)
        while not self._stop.is_set():
            pss = rss = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    info = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                pss, rss = pss + info.pss, rss + info.rss
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
