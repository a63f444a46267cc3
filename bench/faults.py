"""Fault tolerance: kill -9 of the reward actor, a rollout engine and one rank of a ZeRO-3 policy
group of 2, each once during one PPO job (tiny-qwen2, checkpoints every step); per fault, the time
the driver took to notice, to have every role up again, and to be back where it was killed (the
killed step logged again, the steps since the checkpoint recomputed)."""

from __future__ import annotations

import tempfile

from _common import ray_up

TITLE = "faults: kill -9 mid-run, 1 engine, ZeRO-3 policy x 2 (tiny-qwen2, save_every 1)"
#: (target, step): each killed once, a checkpoint behind.
FAULTS = [("reward", 2), ("engine", 4), ("policy:1", 6)]
STEPS = 7


def run() -> list[tuple]:
    from tandem.config import Config
    from tandem.recipes import ppo
    from tandem.recipes.ppo_roles import Roles
    from tandem.tracking import read_metrics
    from tests.faults.inject import Fault, FaultyRoles

    with tempfile.TemporaryDirectory() as out:
        cfg = Config.model_validate(
            {
                "run": {"name": "bench-faults", "output_dir": out},
                "wandb": {"mode": "disabled"},
                "train": {"num_generate_eval": 0},
                "learner": {"world_size": 2, "zero_stage": 3},
                "ppo": {"steps": STEPS, "save_every": 1},
            }
        )
        faults = [Fault(target, step) for target, step in FAULTS]
        FaultyRoles.faults = {cfg.run.name: faults}
        ray_up(max(8, Roles.cpus_needed(cfg)))
        original, ppo.Roles = ppo.Roles, FaultyRoles
        try:
            summary = ppo.run(cfg)
        finally:
            ppo.Roles = original
        logged = {r["step"]: r["time"] for r in read_metrics(f"{out}/bench-faults")}
    step_s = min(logged[s + 1] - logged[s] for s in range(1, STEPS))
    rows = [
        ("steps, restarts", f"{summary['steps']}, {summary['restarts']}", "", f"fastest step {step_s:.1f} s")
    ]
    for f in faults:
        rows += [
            (
                f"{f.target} killed at step {f.step}: detect",
                f.detected_at - f.killed_at,
                "s",
                "kill -> roles stopped",
            ),
            ("  restart", f.restarted_at - f.detected_at, "s", "every role stopped, started, placed"),
            ("  recovered", logged[f.step] - f.killed_at, "s", "kill -> the killed step logged again"),
        ]
    return rows
