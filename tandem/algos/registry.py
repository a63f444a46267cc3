"""Name -> function registries, so callers choose an algorithm by its config name, not by if/elif.

The registries start empty here; the modules that define the algorithms (``advantages``, ``kl``,
``losses``, ``kl_control``) fill them at import, and ``tandem.algos`` imports all of them. A registry
is the only place that knows its names: the config validates its choices against ``names()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from torch import Tensor

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """A named table of callables; unknown names fail with the list of valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator that files the decorated callable under ``name``; a name may be used once."""

        def decorate(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = fn
            return fn

        return decorate

    def get(self, name: str) -> F:
        """The callable registered under ``name``; KeyError listing the valid names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; valid names: {self.names()}") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)


class AdvantageEstimator(Protocol):
    """The one signature every advantage estimator is called with.

    Each estimator reads the arguments it needs and ignores the rest, so the driver can call any
    of them the same way. Shapes: ``token_rewards``, ``values``, ``mask`` (B, T).
    Returns ``(advantages, returns)``, both (B, T) and 0 where ``mask`` is 0.
    ``needs_critic``: the estimator reads ``values``, so the job must train a critic to supply them.
    """

    needs_critic: bool

    def __call__(
        self,
        *,
        token_rewards: Tensor,
        values: Tensor | None,
        mask: Tensor,
        group_size: int,
        gamma: float,
        lam: float,
    ) -> tuple[Tensor, Tensor]: ...


class KLEstimator(Protocol):
    """Per-token estimate of KL(pi || pi_ref) from sampled-token log-probs, (B, T) -> (B, T)."""

    def __call__(self, logprobs: Tensor, ref_logprobs: Tensor) -> Tensor: ...


class PolicyLoss(Protocol):
    """A policy-gradient loss: returns the scalar loss and a dict of float metrics."""

    def __call__(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float
    ) -> tuple[Tensor, dict[str, float]]: ...


class PreferenceLoss(Protocol):
    """An offline preference loss per pair, on ``h`` (N,), the chosen minus the rejected log-ratio
    of policy to reference; returns (N,)."""

    def __call__(self, h: Tensor, beta: float) -> Tensor: ...


ADV_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")
KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")
POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")
PREFERENCE_LOSSES: Registry[PreferenceLoss] = Registry("preference loss")


def register_adv_est(
    name: str, *, needs_critic: bool = False
) -> Callable[[Callable[..., tuple[Tensor, Tensor]]], AdvantageEstimator]:
    """Register an advantage estimator under ``name`` (see ``AdvantageEstimator``); ``needs_critic``
    marks one that reads critic values."""

    def decorate(fn: Callable[..., tuple[Tensor, Tensor]]) -> AdvantageEstimator:
        fn.needs_critic = needs_critic  # type: ignore[attr-defined]
        return ADV_ESTIMATORS.register(name)(fn)  # type: ignore[arg-type]

    return decorate


def get_adv_est(name: str) -> AdvantageEstimator:
    """The advantage estimator called ``name``; KeyError listing the valid names otherwise."""
    return ADV_ESTIMATORS.get(name)


def register_kl_estimator(name: str) -> Callable[[KLEstimator], KLEstimator]:
    """Register a per-token KL estimator under ``name``."""
    return KL_ESTIMATORS.register(name)


def get_kl_estimator(name: str) -> KLEstimator:
    """The KL estimator called ``name``; KeyError listing the valid names otherwise."""
    return KL_ESTIMATORS.get(name)


def register_policy_loss(name: str) -> Callable[[PolicyLoss], PolicyLoss]:
    """Register a policy loss under ``name``."""
    return POLICY_LOSSES.register(name)


def get_policy_loss(name: str) -> PolicyLoss:
    """The policy loss called ``name``; KeyError listing the valid names otherwise."""
    return POLICY_LOSSES.get(name)


def register_preference_loss(name: str) -> Callable[[PreferenceLoss], PreferenceLoss]:
    """Register a per-pair preference loss under ``name`` (see ``PreferenceLoss``)."""
    return PREFERENCE_LOSSES.register(name)


def get_preference_loss(name: str) -> PreferenceLoss:
    """The per-pair preference loss called ``name``; KeyError listing the valid names otherwise."""
    return PREFERENCE_LOSSES.get(name)
