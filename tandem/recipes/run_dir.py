"""A job's run folder, shared by every recipe (SFT, RM, DPO, PPO): creating or resuming it,
checkpoints, the exported final model and the summary.

A run folder `<run.output_dir>/<run.name>` holds:
    config.yaml          the resolved config
    metrics.jsonl        one row per logged step (see tandem.tracking)
    checkpoints/step_N/  model/ (HF dir), deepspeed/ (optimizer + schedule), rng/ (PPO: one such
                         set per learner group, in policy/ and critic/), state.json and
                         manifest.json (see tandem.recipes.checkpoints)
    checkpoints/latest   the name of the newest checkpoint
    final/               the trained model as an HF directory (what the next stage's model.path names)
    summary.json         the run's final numbers
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.cluster.groups import ActorGroup
from tandem.cluster.runtime import ray_cluster
from tandem.config import Config, LearnerConfig, dump_config
from tandem.errors import UserError
from tandem.recipes.checkpoints import Checkpoints
from tandem.tracking import Tracker


@dataclass
class Run:
    """One job's run folder, tracker and resume point."""

    cfg: Config
    job: str
    dir: Path
    tracker: Tracker
    checkpoints: Checkpoints
    resume_from: Path | None  # the checkpoint to restore, if resuming
    start_step: int  # optimizer steps already taken
    started_at: float


def check_run_dir(cfg: Config, resume_dir: str | None = None) -> tuple[Path, Checkpoints]:
    """The run folder and its checkpoints, after the checks that read only the folder's listing:
    UserError for `--resume` of a missing folder, or a folder holding checkpoints when this is not a
    resume (`job_cluster` checks it before Ray starts, `start_run` again)."""
    run_dir = Path(resume_dir) if resume_dir else Path(cfg.run.output_dir) / cfg.run.name
    if resume_dir and not run_dir.is_dir():
        raise UserError(f"--resume {resume_dir}: no such run folder")
    checkpoints = Checkpoints(run_dir / "checkpoints", cfg.run.keep_checkpoints)
    if not (resume_dir or cfg.run.resume) and checkpoints.folders():
        raise UserError(
            f"run folder {run_dir} already holds checkpoints; resume it with run.resume=true "
            f"(or --resume {run_dir}), or pick another run.name"
        )
    return run_dir, checkpoints


@contextmanager
def job_cluster(cfg: Config, resume_dir: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """`ray_cluster` for a job, after `check_run_dir`: a job enters it once its data is loaded and
    before its run folder is touched, so that a bad row or a rerun into a finished job's folder is
    told in seconds, not after a local Ray's startup (10 s here)."""
    check_run_dir(cfg, resume_dir)
    with ray_cluster(cfg, num_cpus):
        yield


def start_run(cfg: Config, job: str, resume_dir: str | None = None) -> Run:
    """Create (or reopen, when resuming) the run folder. Resuming: `run.resume: true` or
    `--resume RUN_DIR` (which also names the folder) continues from the newest complete checkpoint;
    with no checkpoint folder there at all, it starts over. UserError as `check_run_dir`, or when
    checkpoints exist but none is complete (nothing is touched: starting over would delete the run's
    metrics)."""
    run_dir, checkpoints = check_run_dir(cfg, resume_dir)
    folders = checkpoints.folders()
    latest = checkpoints.latest() if folders else None
    if folders and latest is None:
        raise UserError(
            f"{checkpoints.root}: none of its {len(folders)} checkpoint(s) is complete (see the "
            "warnings above), so the run cannot be resumed; move the folder away to start over"
        )
    if latest is not None:
        check_layout(cfg, latest)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    start_step = Checkpoints.read_state(latest)["step"] if latest else 0
    tracker = Tracker(
        run_dir,
        cfg.wandb,
        cfg.run.name,
        job,
        cfg.model_dump(mode="json"),
        resume_step=start_step if latest else None,
    )
    if latest:
        print(f"resuming {run_dir} from {latest.name} (step {start_step})")
    return Run(cfg, job, run_dir, tracker, checkpoints, latest, start_step, time.time())


def rewind(run: Run) -> None:
    """Point `run` back at its newest complete checkpoint (the start when there is none) and drop the
    metric rows logged after it: what a job restarting its roles continues from."""
    latest = run.checkpoints.latest() if run.checkpoints.folders() else None
    run.resume_from = latest
    run.start_step = Checkpoints.read_state(latest)["step"] if latest else 0
    run.tracker.rewind(run.start_step)


def layout(cfg: LearnerConfig) -> dict[str, int]:
    """The learner layout a checkpoint records in its state.json, so that `start_run` can check it."""
    return {"world_size": cfg.world_size, "zero_stage": cfg.zero_stage}


def check_layout(cfg: Config, checkpoint: Path) -> None:
    """DeepSpeed's optimizer state is sharded by rank: resume with the world size and ZeRO stage
    the checkpoint was saved with."""
    state = Checkpoints.read_state(checkpoint)
    saved = {k: state[k] for k in layout(cfg.learner) if k in state}
    if saved and saved != layout(cfg.learner):
        raise UserError(
            f"{checkpoint} was saved with learner {saved}; resume with the same settings "
            f"(this config has {layout(cfg.learner)})"
        )


def resume(run: Run, group: ActorGroup) -> None:
    """Restore every rank from the run's checkpoint (no-op when starting fresh)."""
    if run.resume_from is not None:
        group.call("load", str(run.resume_from))


def export_final(run: Run, checkpoint: Path) -> Path:
    """`<run_dir>/final`: the checkpoint's HF model, hard-linked (no copy of the weights)."""
    final = run.dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    shutil.copytree(checkpoint / "model", final, copy_function=_link_or_copy)
    return final


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def finish_run(run: Run, summary: dict[str, Any]) -> dict[str, Any]:
    """Write summary.json, print it, close the tracker; returns the summary."""
    summary = {
        "job": run.job,
        "run_dir": str(run.dir),
        **summary,
        "wall_s": round(time.time() - run.started_at, 1),
    }
    (run.dir / "summary.json").write_text(json.dumps(summary, indent=1))
    run.tracker.summary(summary)
    run.tracker.finish()
    print(f"{run.job} finished: " + ", ".join(f"{k}={_fmt(v)}" for k, v in summary.items()))
    return summary


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
