"""Fixed and adaptive KL controllers, their checkpoints, and construction by name."""

from __future__ import annotations

import pytest

from tandem.algos import AdaptiveKLController, FixedKLController, make_kl_controller


def test_adaptive_update_by_hand() -> None:
    controller = AdaptiveKLController(kl_coef=0.1, target=6.0, horizon=10000)
    # KL 9: error 9/6 - 1 = 0.5, clipped to 0.2. coef = 0.1 * (1 + 0.2 * 256 / 10000) = 0.100512.
    controller.update(current_kl=9.0, n_steps=256)
    assert controller.value == pytest.approx(0.100512)
    # KL 3: error 3/6 - 1 = -0.5, clipped to -0.2. coef = 0.100512 * (1 - 0.00512) = 0.0999973...
    controller.update(current_kl=3.0, n_steps=256)
    assert controller.value == pytest.approx(0.100512 * 0.99488)
    assert controller.value == pytest.approx(0.09999738, abs=1e-8)


def test_adaptive_update_inside_clip_range() -> None:
    controller = AdaptiveKLController(kl_coef=0.1, target=6.0, horizon=1000)
    # KL 6.6: error 0.1, unclipped. coef = 0.1 * (1 + 0.1 * 100 / 1000) = 0.101.
    controller.update(current_kl=6.6, n_steps=100)
    assert controller.value == pytest.approx(0.101)
    # KL on target: no change.
    controller.update(current_kl=6.0, n_steps=100)
    assert controller.value == pytest.approx(0.101)


def test_fixed_controller_never_moves() -> None:
    controller = FixedKLController(kl_coef=0.05, target=6.0, horizon=10)
    controller.update(current_kl=100.0, n_steps=1000)
    assert controller.value == 0.05


def test_state_dict_round_trip() -> None:
    controller = AdaptiveKLController(kl_coef=0.2, target=1.0, horizon=100)
    controller.update(current_kl=2.0, n_steps=10)
    resumed = AdaptiveKLController(kl_coef=0.2, target=1.0, horizon=100)
    resumed.load_state_dict(controller.state_dict())
    assert resumed.value == controller.value == pytest.approx(0.2 * 1.02)
    fixed = FixedKLController(0.3, target=6.0, horizon=10)
    fixed.load_state_dict({"value": 0.7})
    assert fixed.state_dict() == {"value": 0.7}


def test_make_kl_controller_by_name() -> None:
    adaptive = make_kl_controller("adaptive", kl_coef=0.1, target=6.0, horizon=10)
    assert isinstance(adaptive, AdaptiveKLController) and adaptive.value == 0.1
    fixed = make_kl_controller("fixed", kl_coef=0.2, target=6.0, horizon=10)
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.2
    with pytest.raises(KeyError, match=r"\['adaptive', 'fixed'\]"):
        make_kl_controller("pid", kl_coef=0.1, target=6.0, horizon=10)


def test_adaptive_rejects_nonpositive_target() -> None:
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(kl_coef=0.1, target=0.0, horizon=10)
