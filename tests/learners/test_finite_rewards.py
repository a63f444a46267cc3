"""The driver's guard on rewards: a step with a NaN/inf score trains nothing (counted, warned), and
`ppo.max_nonfinite_steps` such steps in a row end the job with a clear error."""

from __future__ import annotations

import pytest
import torch

from tandem.errors import find_user_error
from tandem.learners.finite import NonFiniteError, RewardGuard

NAN, INF = float("nan"), float("inf")


def test_steps_with_nonfinite_rewards_are_skipped_then_fail_in_a_row(capsys):
    guard = RewardGuard(limit=2)
    assert guard.check(torch.tensor([0.5, 1.0]), step=1)
    assert not guard.check(torch.tensor([0.5, NAN, INF]), step=2)
    assert guard.in_a_row == 1
    assert "step 2: 2 of 3 rewards are NaN/inf, so the step's updates are skipped (1 in a row" in (
        capsys.readouterr().err
    )
    assert guard.check(torch.tensor([0.0]), step=3) and guard.in_a_row == 0  # a finite step resets it
    assert not guard.check(torch.tensor([NAN]), step=4)
    with pytest.raises(NonFiniteError, match=r"2 steps in a row had NaN/inf rewards \(step 5: 1 of 1") as err:
        guard.check(torch.tensor([-INF]), step=5)
    assert find_user_error(err.value) is err.value  # exit 2, and no job restart
