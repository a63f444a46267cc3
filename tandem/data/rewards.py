"""Reward functions by import spec, and the built-in tasks' true rewards in that form.

The contract for every reward function, built-in or user-supplied, is batched:

    fn(prompts: list[str], responses: list[str]) -> list[float]

Batched because a user's reward may be a model or a remote call that wants the whole batch at once.
A user plugs one in without code changes with the spec "package.module:function".
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from tandem.errors import UserError
from tandem.tasks import get_task

RewardFn = Callable[[list[str], list[str]], list[float]]


def task_reward(name: str, annotator: bool = False) -> RewardFn:
    """The batched true reward of a built-in task (or, with `annotator`, the annotators' score,
    which for `evens` includes their length bias)."""
    task = get_task(name)
    score = task.annotator_score if annotator else task.true_reward

    def reward(prompts: list[str], responses: list[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [score(p, r) for p, r in zip(prompts, responses)]

    reward.__name__ = f"{task.name}_{'annotator_score' if annotator else 'reward'}"
    reward.__doc__ = f"Batched {'annotator score' if annotator else 'true reward'} of task {task.name!r}."
    return reward


#: "tandem.data.rewards:sort_reward": the sort task's true reward, batched.
sort_reward: RewardFn = task_reward("sort")
#: "tandem.data.rewards:evens_reward": the evens task's true reward (no length bias), batched.
evens_reward: RewardFn = task_reward("evens")


def load_reward_fn(spec: str) -> RewardFn:
    """Import the reward function named by `spec` = "package.module:function".

    The attribute part may be dotted ("module:obj.method"). UserError, naming the spec, when it is
    malformed, the module cannot be imported, or the attribute is missing or not callable.
    """
    module_name, sep, attr_path = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not module_name.strip() or not attr_path.strip() or ":" in attr_path:
        raise UserError(
            f"reward function spec {spec!r} is malformed; expected 'package.module:function', "
            "e.g. 'tandem.data.rewards:sort_reward'"
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        # The `tandem` console script, unlike `python -m`, leaves the working directory off the path,
        # where Ray's workers find a user's module; the driver should find it there too. Appended:
        # it must not shadow installed packages.
        sys.path.append(os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        # Distinguish the user's module being absent from a dependency missing inside it.
        missing = err.name or ""
        what = "not found" if module_name == missing or module_name.startswith(missing + ".") else str(err)
        raise UserError(f"reward function {spec!r}: cannot import module {module_name!r}: {what}") from err
    except Exception as err:  # a user module may fail at import in any way; report it, not crash
        raise UserError(f"reward function {spec!r}: importing {module_name!r} failed: {err!r}") from err
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise UserError(f"reward function {spec!r}: {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"reward function {spec!r} is not callable (got {type(obj).__name__})")
    return obj
