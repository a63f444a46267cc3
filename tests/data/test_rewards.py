"""Reward functions by spec: the built-ins, and errors that name the spec."""

from __future__ import annotations

import sys

import pytest

from tandem.data.rewards import evens_reward, load_reward_fn, sort_reward, task_reward
from tandem.errors import UserError


def test_builtin_rewards_are_batched_true_rewards():
    assert sort_reward(["sort: 3 1 2", "sort: 3 1 2"], ["1 2 3", "1 3 2"]) == pytest.approx([1.0, 1 / 3])
    assert evens_reward(["evens: 3 8 2 5 6"] * 2, ["8 2 6", "3 8 2 5 6"]) == pytest.approx([1.0, 0.75])
    annotator = task_reward("evens", annotator=True)
    assert annotator(["evens: 3 8 2 5 6"], ["3 8 2 5 6"]) == pytest.approx([0.75 + 5 * 0.15])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        sort_reward(["a", "b"], ["c"])


def test_load_reward_fn_resolves_specs():
    assert load_reward_fn("tandem.data.rewards:sort_reward") is sort_reward
    assert load_reward_fn("tandem.data.rewards:evens_reward") is evens_reward
    # A dotted attribute path reaches into an object.
    assert load_reward_fn("os:path.join") is sys.modules["os"].path.join


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("tandem.data.rewards", "malformed"),
        ("tandem.data.rewards:", "malformed"),
        (":sort_reward", "malformed"),
        ("a:b:c", "malformed"),
        ("tandem.no_such_module:fn", "cannot import module 'tandem.no_such_module': not found"),
        ("tandem.data.rewards:no_such_fn", "has no attribute 'no_such_fn'"),
        ("tandem.data.synthetic:EVAL_BUCKETS", "not callable"),
    ],
)
def test_load_reward_fn_errors_name_the_spec(spec, match):
    with pytest.raises(UserError, match=match) as err:
        load_reward_fn(spec)
    assert repr(spec) in str(err.value)


def test_load_reward_fn_reports_a_failing_user_module(tmp_path, monkeypatch):
    (tmp_path / "broken_reward_mod.py").write_text("import not_installed_dependency_xyz\n")
    (tmp_path / "raising_reward_mod.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="No module named 'not_installed_dependency_xyz'"):
        load_reward_fn("broken_reward_mod:fn")
    with pytest.raises(UserError, match="boom"):
        load_reward_fn("raising_reward_mod:fn")


def test_load_reward_fn_finds_a_module_in_the_working_directory(tmp_path, monkeypatch):
    # As under the `tandem` console script: the working directory is not on the path.
    (tmp_path / "cwd_reward_mod.py").write_text(
        "def fn(prompts, responses):\n    return [1.0] * len(prompts)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert load_reward_fn("cwd_reward_mod:fn")(["p"], ["r"]) == [1.0]
    assert sys.path[-1] == str(tmp_path)  # appended: installed packages keep precedence
