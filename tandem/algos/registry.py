"""Name -> function registries, so callers choose an algorithm by its config name, not by if/elif.

The registries start empty here; the modules that define the algorithms (``advantages``, ``kl``,
``losses``, ``kl_control``) fill them at import, and ``tandem.algos`` imports all of them. A registry
is the only place that knows its names: the config validates its choices against ``names()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, NamedTuple, Protocol, TypeVar

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


class PairLogps(NamedTuple):
    """Sequence log-probs of N preference pairs (each (N,)): log pi(answer | prompt), summed over the
    answer's tokens, and the answers' lengths in tokens."""

    policy_chosen: Tensor  # (N,) under the policy being trained
    policy_rejected: Tensor  # (N,)
    ref_chosen: Tensor | None  # (N,) under the frozen reference; None for a reference-free loss
    ref_rejected: Tensor | None  # (N,)
    chosen_len: Tensor  # (N,) tokens of the chosen answer, float
    rejected_len: Tensor  # (N,)


class PreferenceLoss(Protocol):
    """An offline preference loss per pair: ``(pairs, beta, **options) -> (N,)``.

    Each loss reads the keyword options it needs and ignores the rest, so the learner calls any of
    them the same way. ``options``: the names of the options it reads (the config rejects an option
    set to a non-zero value for a loss that would ignore it). ``needs_reference``: it reads the
    reference log-probs (False: the learner skips the reference model altogether).
    """

    needs_reference: bool
    options: frozenset[str]

    def __call__(self, pairs: PairLogps, beta: float, **options: float) -> Tensor: ...


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


def register_preference_loss(
    name: str, *, needs_reference: bool = True, options: tuple[str, ...] = ()
) -> Callable[[Callable[..., Tensor]], PreferenceLoss]:
    """Register a per-pair preference loss under ``name`` (see ``PreferenceLoss``): ``options`` are
    the keyword options it reads, ``needs_reference`` whether it reads the reference log-probs."""

    def decorate(fn: Callable[..., Tensor]) -> PreferenceLoss:
        fn.needs_reference = needs_reference  # type: ignore[attr-defined]
        fn.options = frozenset(options)  # type: ignore[attr-defined]
        return PREFERENCE_LOSSES.register(name)(fn)  # type: ignore[arg-type]

    return decorate


def get_preference_loss(name: str) -> PreferenceLoss:
    """The per-pair preference loss called ``name``; KeyError listing the valid names otherwise."""
    return PREFERENCE_LOSSES.get(name)
