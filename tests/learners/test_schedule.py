"""The warmup + cosine learning-rate schedule, against hand-computed values."""

from __future__ import annotations

import pytest

from tandem.config import LearnerConfig
from tandem.learners import deepspeed_config, lr_multiplier


def test_warmup_then_cosine_to_floor():
    # warmup 2, 6 steps, floor 0.1: warmup 1/2, 2/2; cosine over steps 2..5 (progress 0, 1/3, 2/3, 1):
    # 0.1 + 0.9 * (1 + cos(pi * p)) / 2 = 1.0, 0.775, 0.325, 0.1; held at 0.1 after the end.
    got = [lr_multiplier(s, warmup_steps=2, total_steps=6, min_lr_ratio=0.1) for s in range(8)]
    assert got == pytest.approx([0.5, 1.0, 1.0, 0.775, 0.325, 0.1, 0.1, 0.1])


def test_no_warmup_and_degenerate_lengths():
    assert lr_multiplier(0, 0, 3, 0.0) == pytest.approx(1.0)
    assert lr_multiplier(1, 0, 3, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(2, 0, 3, 0.0) == pytest.approx(0.0)
    assert lr_multiplier(0, 0, 1, 0.1) == 1.0  # a one-step run trains at the peak
    assert lr_multiplier(3, 4, 4, 0.1) == 1.0  # all warmup


def test_deepspeed_config_batching():
    cfg = LearnerConfig(
        world_size=2, zero_stage=3, precision="bf16", micro_batch_size=4, global_batch_size=32
    )
    ds = deepspeed_config(cfg, world_size=2)
    assert (
        ds["train_batch_size"],
        ds["train_micro_batch_size_per_gpu"],
        ds["gradient_accumulation_steps"],
    ) == (32, 4, 4)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    assert "optimizer" not in ds  # a client torch AdamW (fused on GPU), no JIT-built DeepSpeed optimizer
