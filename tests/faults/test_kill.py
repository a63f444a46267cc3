"""kill -9 of a real process mid-run: a rollout engine (mid-generation, and idle before a weight
sync), the reward and the reference actor, then one rank of a ZeRO-3 policy group of 2, all in one
job (in-process driver, `tandem.recipes.ppo.run`), and the driver itself between steps (the CLI in a
subprocess, then `--resume`). Each job finishes its steps, logs each step once, and ends with the
per-step metrics, samples and final weights of an uninterrupted run with the same seeds. Engines and
the reward and reference actors heal in place (no job restart): a new engine gets the current weights
and version before it draws the lost prompts again with their own seeds, so it draws the same
samples. A dead learner rank restarts every role from the newest checkpoint, which resumes exactly,
so the steps after it are computed again identically. Nothing is left behind: no role's process, no
placement group.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tandem.config import load_config
from tandem.recipes import ppo
from tandem.tracking import read_metrics
from tests.faults.inject import Fault, FaultyRoles

pytestmark = pytest.mark.slow  # end to end: real Ray, vLLM and DeepSpeed processes, killed

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
JOB = [
    "wandb.mode=disabled",
    "model.max_response_len=16",
    "data.num_train=64",
    "ppo.prompts_per_step=8",
    "ppo.samples_per_prompt=4",
    "ppo.num_minibatches=2",
    f"ppo.steps={STEPS}",
    "ppo.save_every=2",
    "ppo.sample_table_every=1",
    "train.num_generate_eval=0",
    "learner.world_size=2",
    "learner.zero_stage=3",
    "learner.optim.warmup_steps=1",
    "learner.optim.lr=1e-2",
    # Fixed thread counts: the killed and the uninterrupted runs then sum in the same order.
    "learner.threads=1",
    "rollout.threads=1",
    "rollout.kv_cache_mb=32",
    "rollout.max_num_seqs=32",
    # Small shares: the two jobs run at once in the tests' 8-CPU Ray (threads are fixed above).
    "rollout.cpus_per_engine=0.5",
    "learner.cpus_per_rank=0.5",
    "reward.cpus=0.25",
    "reference.cpus=0.25",
    # NaN for one prompt of step 1, in every run: that step's update is skipped.
    "reward.components=[{kind: function, name: short, path: 'tests.recipes.rewards:short_answer_but_nan'}]",
]
KEYS = ("reward/mean", "actor/pg_loss", "kl/mean", "rollout/response_length/mean", "actor/grad_norm")
#: run name -> the faults it gets. Healed in place: the reference actor mid-score of step 1, the reward
#: actor mid-score of step 2, the engine idle during step 2's update (found dead by the weight sync,
#: which loads its replacement), its replacement mid-generation of step 3 (the next replacement loads
#: the step-2 weights, then draws the lost prompts). Then, that step healed, it restarts: policy rank 1
#: mid-update of step 3, its ZeRO-3 peer blocked in a collective with it (every role, from the step-2
#: checkpoint). One job, as `bench/faults.py` runs them: a third job beside the others took the file
#: from 482 to 552 s of CPU.
FAULTS = {
    "killed": [("reference", 1), ("reward", 2), ("engine:idle", 2), ("engine", 3), ("policy:1", 3)],
}
ROLE_CLASSES = ("RolloutEngine", "RewardScorer", "ReferenceModel", "PolicyLearner", "CriticLearner")


def _cfg(root: Path, name: str):
    return load_config(None, [*JOB, f"run.output_dir={root}", f"run.name={name}"])


def _rows(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir)


def _final_weights(run_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


def _role_processes() -> list[psutil.Process]:
    """Live processes of this test session's Ray (our descendants) running one of a job's role actors
    (Ray names them `ray::<Class>...`)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            line = " ".join(p.cmdline())
        except psutil.NoSuchProcess:
            continue
        if line.startswith("ray::") and any(c in line for c in ROLE_CLASSES):
            found.append(p)
    return found


def _wait_gone(what, timeout_s: float = 30.0) -> list:
    deadline = time.monotonic() + timeout_s
    while (left := what()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture(scope="module")
def killed(ray_session, tmp_path_factory):
    """The uninterrupted run and the killed one, at once; returns (root, summaries)."""
    from tests.recipes.test_ppo import _warm_imports

    root = tmp_path_factory.mktemp("faults")
    FaultyRoles.faults = {name: [Fault(*f) for f in faults] for name, faults in FAULTS.items()}
    _warm_imports()
    with pytest.MonkeyPatch.context() as mp, ThreadPoolExecutor(2) as pool:
        mp.setattr(ppo, "Roles", FaultyRoles)
        runs = {name: pool.submit(ppo.run, _cfg(root, name)) for name in ("straight", *FAULTS)}
        summaries = {name: run.result() for name, run in runs.items()}
    return root, summaries


def test_killed_roles_heal_or_restart_to_the_uninterrupted_run(killed):
    root, summaries = killed
    name = "killed"
    for fault in FaultyRoles.faults[name]:
        recovered = fault.restarted_at if fault.target.startswith("policy:") else fault.healed_at
        assert None not in (fault.killed_at, fault.detected_at, recovered), fault
    assert summaries[name]["steps"] == STEPS and summaries[name]["restarts"] == 1
    assert summaries["straight"]["restarts"] == 0
    rows, straight = _rows(root / name), _rows(root / "straight")
    assert [r["step"] for r in rows] == [r["step"] for r in straight] == list(range(1, STEPS + 1))
    for row, expected in zip(rows, straight):
        assert {k: row.get(k) for k in KEYS} == {k: expected.get(k) for k in KEYS}, row["step"]
    # Each row counts the heals of the roles it ran with. Step 2's: the idle engine (found dead by
    # that step's sync) and one or both single actors (one that answered before its kill is found
    # dead by the next step's call). Step 3's, redone by the roles restarted from the checkpoint: none.
    engines, actors = zip(*[(r["faults/engine_restarts"], r["faults/actor_restarts"]) for r in rows])
    assert engines == (0, 1, 0) and actors[1] >= 1 and actors[2] == 0, (engines, actors)
    assert all(r["faults/engine_restarts"] == r["faults/actor_restarts"] == 0 for r in straight)
    # One samples table per step (the recomputed ones not twice), each the uninterrupted run's: the
    # prompts drawn again by a new engine got the samples the killed one would have drawn.
    tables = [line for line in (root / name / "samples.jsonl").read_text().splitlines() if line]
    assert tables == (root / "straight" / "samples.jsonl").read_text().splitlines()
    wa, wb = _final_weights(root / "straight"), _final_weights(root / name)
    assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)


def test_a_nan_reward_skips_that_steps_update(killed):
    """Every run's reward is NaN for the 4 samples of one prompt of step 1: step 1 trains nothing
    (no update metrics, the skip counted), later steps train, and the run finishes (no exit 2)."""
    root, summaries = killed
    rows = _rows(root / "straight")
    assert summaries["straight"]["steps"] == STEPS
    assert [r["faults/nonfinite_reward_skipped"] for r in rows] == [1.0, 0.0, 0.0]
    assert rows[0]["reward/nonfinite_frac"] == 4 / 32 and "actor/pg_loss" not in rows[0]
    assert all(math.isfinite(r["actor/pg_loss"]) for r in rows[1:])


def test_nothing_is_left_behind(killed):
    from ray.util import placement_group_table

    assert not _wait_gone(_role_processes)
    live = {k: v for k, v in placement_group_table().items() if v["state"] != "REMOVED"}
    assert not live
    # Every role of every attempt (the killed ones' first attempts included) was stopped.
    made = [r.cfg.run.name for r in FaultyRoles.made]
    assert (made.count("straight"), made.count("killed")) == (1, 2)  # the killed job restarted once


def test_driver_killed_between_steps_resumes_to_the_uninterrupted_run(killed, tmp_path):
    root, _ = killed
    config = tmp_path / "job.yaml"
    config.write_text("{}\n")
    cli = [
        sys.executable,
        "-m",
        "tandem.cli",
        "ppo",
        str(config),
        *JOB,
        f"run.output_dir={tmp_path}",
        "run.name=driver",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    run_dir = tmp_path / "driver"
    # Its own session: the kill takes the driver and the local Ray it started, as a lost node would.
    first = subprocess.Popen(cli, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "step_000002" / "manifest.json").exists():
            assert first.poll() is None and time.monotonic() < deadline, "no checkpoint of step 2"
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not _wait_gone(lambda: [p for p in psutil.process_iter() if _session(p) == first.pid])
    done = subprocess.run(
        [*cli, "--resume", str(run_dir)], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows, straight = _rows(run_dir), _rows(root / "straight")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for row, expected in zip(rows, straight):
        assert {k: row.get(k) for k in KEYS} == {k: expected.get(k) for k in KEYS}, row["step"]
    wa, wb = _final_weights(root / "straight"), _final_weights(run_dir)
    assert all(wa[k].equal(wb[k]) for k in wa)


def _session(p: psutil.Process) -> int | None:
    try:
        return os.getsid(p.pid)
    except (ProcessLookupError, PermissionError):
        return None
