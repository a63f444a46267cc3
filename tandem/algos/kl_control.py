"""Controllers for the KL penalty coefficient (Ziegler et al. 2019, "Fine-Tuning Language Models
from Human Preferences", sec. 2.2), checkpointable through ``state_dict``/``load_state_dict``.

A controller's state is only its current coefficient; target and horizon come from the config,
so a resumed run follows the config it was resumed with. Every controller is built with the same
arguments (``kl_coef``, ``target``, ``horizon``), so the caller never picks them by name.
"""

from __future__ import annotations

from typing import Any, Protocol

from tandem.algos.registry import Registry

# Ziegler et al. 2019 clip the proportional error to this range so one noisy batch cannot
# swing the coefficient far.
ERROR_CLIP = 0.2


class KLController(Protocol):
    """The interface the driver uses: read ``value``, ``update`` once per rollout batch.

    Constructed as ``cls(kl_coef, target=..., horizon=...)``: the initial coefficient, the target KL
    per sequence and the horizon in samples; a controller that does not adapt ignores the last two.
    """

    value: float

    def __init__(self, kl_coef: float, *, target: float, horizon: int) -> None: ...

    def update(self, current_kl: float, n_steps: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


KL_CONTROLLERS: Registry[type[KLController]] = Registry("KL controller")


@KL_CONTROLLERS.register("fixed")
class FixedKLController:
    """A constant KL coefficient; ``update`` does nothing (``target`` and ``horizon`` are unused)."""

    def __init__(self, kl_coef: float, *, target: float, horizon: int) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Keep the coefficient as it is."""

    def state_dict(self) -> dict[str, Any]:
        """The current coefficient, for checkpoints."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the coefficient from ``state_dict()``."""
        self.value = float(state["value"])


@KL_CONTROLLERS.register("adaptive")
class AdaptiveKLController:
    """Adapts the KL coefficient towards a target KL (Ziegler et al. 2019, sec. 2.2):

    ``e = clip(KL / target - 1, -0.2, 0.2)``, ``beta <- beta * (1 + e * n_steps / horizon)``.
    The paper's ``K_beta`` is ``n_steps / horizon`` here, as in its released code, so the rate of
    change is per sample rather than per update.
    """

    def __init__(self, kl_coef: float, *, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got target={target}, horizon={horizon}")
        self.value = float(kl_coef)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move the coefficient after a batch of ``n_steps`` samples whose mean KL was ``current_kl``."""
        error = min(max(current_kl / self.target - 1.0, -ERROR_CLIP), ERROR_CLIP)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        """The current coefficient, for checkpoints."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the coefficient from ``state_dict()``."""
        self.value = float(state["value"])


def make_kl_controller(kind: str, kl_coef: float, target: float, horizon: int) -> KLController:
    """Build the KL controller called ``kind`` with initial coefficient ``kl_coef``, target KL per
    sequence ``target`` and ``horizon`` in samples (see ``KLController``).

    KeyError listing the valid names for an unknown ``kind``.
    """
    return KL_CONTROLLERS.get(kind)(kl_coef, target=target, horizon=horizon)
