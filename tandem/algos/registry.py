"""Name -> function registries, so callers choose an algorithm by its config name, not by if/elif.

The registries start empty here; the modules that define the algorithms (``advantages``, ``kl``,
``losses``, ``kl_control``) fill them at import, and ``tandem.algos`` imports all of them.
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
    of them the same way. Shapes: ``token_rewards``, ``values``, ``mask`` (B, T); ``scores`` (B,).
    Returns ``(advantages, returns)``, both (B, T) and 0 where ``mask`` is 0.
    """

    def __call__(
        self,
        *,
        token_rewards: Tensor,
        scores: Tensor,
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


ADV_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")
KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")
POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")


def register_adv_est(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Register an advantage estimator under ``name`` (see ``AdvantageEstimator``)."""
    return ADV_ESTIMATORS.register(name)


def get_adv_est(name: str) -> AdvantageEstimator:
    """The advantage estimator called ``name``: "gae", "grpo", "rloo" or "reinforce++"."""
    return ADV_ESTIMATORS.get(name)


def register_kl_estimator(name: str) -> Callable[[KLEstimator], KLEstimator]:
    """Register a per-token KL estimator under ``name``."""
    return KL_ESTIMATORS.register(name)


def get_kl_estimator(name: str) -> KLEstimator:
    """The KL estimator called ``name``: "k1", "k2" or "k3"."""
    return KL_ESTIMATORS.get(name)


def register_policy_loss(name: str) -> Callable[[PolicyLoss], PolicyLoss]:
    """Register a policy loss under ``name``."""
    return POLICY_LOSSES.register(name)


def get_policy_loss(name: str) -> PolicyLoss:
    """The policy loss called ``name``: "ppo"."""
    return POLICY_LOSSES.get(name)
