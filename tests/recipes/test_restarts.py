"""The restart policy of a job whose roles failed: which failures restart, the run rewound to its
newest checkpoint (metrics after it dropped), and the error once restarts are spent."""

from __future__ import annotations

import json

import pytest

from tandem.cluster.calls import RoleError
from tandem.config import load_config
from tandem.errors import JobError, UserError
from tandem.recipes.restarts import Restarts, role_failure
from tandem.recipes.run_dir import start_run


def _run(tmp_path):
    cfg = load_config(None, ["wandb.mode=disabled", f"run.output_dir={tmp_path}", "run.name=r"])
    return start_run(cfg, "ppo")


def _died(role: str = "policy", call: str = "train_rollout") -> RoleError:
    return RoleError(f"{role} rank 1 died during {call!r}", role, [1], call)


def test_role_failures_restart_user_errors_and_bugs_do_not():
    died = _died()
    assert role_failure(died) is died
    wrapped = RuntimeError("while scoring")
    wrapped.__cause__ = died
    assert role_failure(wrapped) is died
    user = RoleError("reward actor failed in 'score': RewardError: ...", "reward actor", [], "score")
    user.__cause__ = UserError("reward component 'x' raised ValueError")  # the user's own error
    assert role_failure(user) is None
    assert role_failure(KeyError("a driver bug")) is None


def test_restart_rewinds_to_the_newest_checkpoint_or_the_start(tmp_path, capsys):
    run = _run(tmp_path)
    for step in (1, 2, 3):
        run.tracker.log({"x": step}, step=step)
        run.tracker.table("samples", ["a"], [[step]], step=step)
    restarts = Restarts(2, "tandem ppo cfg.yaml")
    assert not restarts.handle(_died(), run, started=False)  # the first start: the config or the cluster
    assert restarts.handle(_died(), run, started=True)
    assert (run.resume_from, run.start_step) == (None, 0)  # no checkpoint yet: from the start
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == ""
    assert (tmp_path / "r" / "samples.jsonl").read_text() == ""
    assert capsys.readouterr().err.strip() == (
        "tandem: warning: policy rank 1 died during 'train_rollout' at step 4; restarting every role "
        "from the start (no checkpoint yet) (restart 1 of 2)"
    )
    run.tracker.log({"x": 1}, step=1)
    run.tracker.log({"x": 2}, step=2)
    folder = run.checkpoints.root / "step_000001"  # a complete checkpoint of step 1
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"step": 1}))
    from tandem.recipes.checkpoints import write_manifest

    write_manifest(folder)
    assert restarts.handle(_died("rollout engine 0", "generate"), run, started=True)
    assert (run.resume_from, run.start_step) == (folder, 1)
    assert [json.loads(line)["step"] for line in (tmp_path / "r" / "metrics.jsonl").open()] == [1]
    assert "restarting every role from checkpoint step_000001 (restart 2 of 2)" in capsys.readouterr().err
    with pytest.raises(JobError) as err:
        restarts.handle(_died("reward actor", "score"), run, started=True)
    assert str(err.value) == (
        "reward actor rank 1 died during 'score' at step 2; no restarts left (run.max_restarts=2). The "
        f"run folder {run.dir} is intact (its newest checkpoint is step_000001): fix the cause, then "
        f"resume with `tandem ppo cfg.yaml --resume {run.dir}`"
    )


def test_the_same_failure_at_the_same_step_is_not_retried(tmp_path):
    run = _run(tmp_path)
    restarts = Restarts(5, "tandem ppo cfg.yaml")
    hang = RoleError("reward actor did not finish 'score' within 600s", "reward actor", [], "score")
    assert restarts.handle(hang, run, started=True)
    with pytest.raises(JobError, match="failed the same way at the same step after a restart"):
        restarts.handle(hang, run, started=True)
