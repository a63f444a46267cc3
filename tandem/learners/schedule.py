"""The learning-rate schedule of every learner: linear warmup, then cosine decay to a floor."""

from __future__ import annotations

import math


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """The factor on the peak lr for optimizer step `step` (0-based: the step about to be taken).

    Warmup: `(step + 1) / warmup_steps` for the first `warmup_steps` steps, so the first update is
    small but not zero. Then cosine from 1 down to `min_lr_ratio`, reached on the last step
    (`total_steps - 1`) and held after it (Loshchilov & Hutter 2017, "SGDR", eq. 5, one cycle).
    A run with no step left to decay over (`total_steps <= warmup_steps + 1`) stays at the peak.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps - 1
    progress = 0.0 if decay_steps <= 0 else min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
