"""Splitting a list of work over the ranks of a group: each rank gets one contiguous part."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def shard(items: Sequence[Any], n: int) -> list[list[Any]]:
    """`items` in `n` contiguous parts whose sizes differ by at most one."""
    size, extra = divmod(len(items), n)
    bounds = [r * size + min(r, extra) for r in range(n + 1)]
    return [list(items[bounds[r] : bounds[r + 1]]) for r in range(n)]
