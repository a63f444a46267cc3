"""What every config section is built from: the frozen section base and the field types checked
against `tandem.algos`' registries or imported at load time."""

from __future__ import annotations

import difflib
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


def _registered(registry: str) -> AfterValidator:
    """A name that must be registered in `tandem.algos.<registry>`: the registry is the only list of
    valid names, so adding an algorithm there makes it a valid config value with no edit here."""

    def check(name: str) -> str:
        import tandem.algos  # here, not at the top: it loads torch, paid only by configs that name an algorithm

        names = getattr(tandem.algos, registry).names()
        if name in names:
            return name
        guess = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        kind = getattr(tandem.algos, registry).kind
        raise PydanticCustomError(
            "unknown_name",
            "unknown {kind}; choose from {names}{hint}",
            {"kind": kind, "names": ", ".join(names), "hint": hint},
        )

    return AfterValidator(check)


AdvantageName = Annotated[str, _registered("ADV_ESTIMATORS")]
KLEstimatorName = Annotated[str, _registered("KL_ESTIMATORS")]
KLControllerName = Annotated[str, _registered("KL_CONTROLLERS")]
PolicyLossName = Annotated[str, _registered("POLICY_LOSSES")]
PreferenceLossName = Annotated[str, _registered("PREFERENCE_LOSSES")]
OffPolicyName = Annotated[str, _registered("OFF_POLICY_CORRECTIONS")]


def _importable_reward(spec: str | None) -> str | None:
    """A reward function's import path, imported when the job is loaded rather than when it is
    used (at the end of training, for an evaluation reward): a typo then costs seconds, not a run."""
    if spec is not None:
        from tandem.data.rewards import load_reward_fn
        from tandem.errors import UserError

        try:
            load_reward_fn(spec)
        except UserError as err:
            raise PydanticCustomError("bad_reward", "{problem}", {"problem": str(err)}) from None
    return spec


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
