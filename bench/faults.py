"""Fault tolerance: kill -9 of the reward actor, a rollout engine (mid-generation, and idle before a
weight sync), the reference actor and one rank of a ZeRO-3 policy group of 2, each once during one
PPO job (tiny-qwen2, checkpoints every step). Per fault: the time the driver took to notice, to
recover (engines, reward and reference healed in place: a new actor, loaded and armed, its call
issued again; a learner rank: every role restarted from the newest checkpoint), and to be back
where it was killed (the killed step logged)."""

from __future__ import annotations

import tempfile

from _common import ray_up

TITLE = "faults: kill -9 mid-run, 1 engine, ZeRO-3 policy x 2 (tiny-qwen2, save_every 1)"
#: (target, step): each killed once; see tests/faults/inject.py for where in the step.
FAULTS = [("reward", 2), ("engine", 3), ("reference", 4), ("engine:idle", 5), ("policy:1", 6)]
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
    healed = f"{sum(f.healed_at is not None for f in faults)} of {len(faults)}"
    table = [
        (
            "steps, job restarts",
            f"{summary['steps']}, {summary['restarts']}",
            "",
            f"fastest step {step_s:.1f} s",
        ),
        ("faults healed in place", healed, "", "the others: a job restart"),
    ]
    for f in faults:
        healed = f.healed_at is not None
        back = f.healed_at if healed else f.restarted_at
        how = "new actor up, armed, call issued again" if healed else "every role stopped, started, placed"
        table += [
            (f"{f.target} killed at step {f.step}: detect", f.detected_at - f.killed_at, "s", "kill -> seen"),
            ("  heal" if healed else "  restart", back - f.detected_at, "s", how),
            ("  recovered", logged[f.step] - f.killed_at, "s", "kill -> the killed step logged"),
        ]
    return table
