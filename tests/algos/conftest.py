"""Shared fixtures for the tests of ``tandem.algos``: seeded random batches with ragged masks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def ragged_mask() -> Callable[[list[int], int], torch.Tensor]:
    """``ragged_mask([3, 0, 5], 5)``: a right-padded (B, T) float64 mask with those lengths."""

    def build(lengths: list[int], length: int) -> torch.Tensor:
        positions = torch.arange(length)
        return (positions < torch.tensor(lengths).unsqueeze(-1)).to(torch.float64)

    return build
