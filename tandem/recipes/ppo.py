"""`tandem ppo CONFIG` (alias `tandem train`): PPO (or GRPO, RLOO, REINFORCE++) against a reward, with
a KL penalty to the frozen reference, as a single-controller loop over Ray actors.

One step: generate (vLLM engines) -> score (reward actor, reference actor, the policy's pi_old pass
or, synchronous, its first training forward, critic values, all at once) -> shape rewards and
advantages -> critic update -> policy update -> weight sync -> log -> checkpoint. Roles are built by
`tandem.recipes.ppo_roles`. A role that dies, fails or misses a deadline restarts every role from the
newest checkpoint (`tandem.recipes.restarts`).
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from math import nan
from typing import Any

import torch

from tandem.algos import make_kl_controller
from tandem.config import Config
from tandem.data.records import BatchOrder, load_prompts
from tandem.learners.finite import RewardGuard
from tandem.recipes.ppo_batch import Generation, RolloutBatch, compute_advantages, rollout_metrics
from tandem.recipes.ppo_config import ppo_job_config
from tandem.recipes.ppo_roles import Roles
from tandem.recipes.restarts import Restarts
from tandem.recipes.run_dir import Run, finish_run, job_cluster, layout, start_run


class CpuClock:
    """Busy CPU seconds of the whole node per stage (all processes: every role, not only the driver),
    from the kernel's counters; `utilisation()` gives each stage's busy share of the node's cores."""

    def __init__(self) -> None:
        import psutil

        self._cores = psutil.cpu_count() or 1
        self.busy: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    @staticmethod
    def now() -> float:
        import psutil

        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    def utilisation(self) -> dict[str, float]:
        # The kernel counts in 10 ms ticks: a shorter stage's share would be noise.
        return {
            f"perf/cpu_util/{stage}": self.busy[stage] / (self.wall[stage] * self._cores)
            for stage in self.busy
            if self.wall[stage] >= 0.1
        }


@contextmanager
def timed(timings: dict[str, float], stage: str, cpu: CpuClock | None = None):
    started, busy = time.perf_counter(), CpuClock.now() if cpu else 0.0
    yield
    timings[f"timing/{stage}"] = wall = time.perf_counter() - started
    if cpu:
        cpu.busy[stage], cpu.wall[stage] = CpuClock.now() - busy, wall


def train(cfg: Config, roles: Roles, run: Run, prompts: list[str], stop_after: int | None = None) -> int:
    """The PPO loop from `run.start_step` to `ppo.steps`; returns the last step done.

    With `ppo.max_staleness` K >= 1 the engines draw the batches of the next K steps while this one
    is scored and trained: a batch is started as soon as its step is within K of the one training,
    with the weights the engines hold then (they load new ones only after it, since an engine runs
    its calls in order). K = 0 is the same loop with each batch started when its step begins.
    """
    from tqdm.auto import tqdm

    p = cfg.ppo
    kl_ctl = make_kl_controller(p.kl_controller, p.kl_coef, target=p.kl_target, horizon=p.kl_horizon)
    order = BatchOrder(
        len(prompts),
        p.prompts_per_step,
        epochs=-(-p.steps * p.prompts_per_step // len(prompts)),
        max_steps=p.steps,
        seed=cfg.run.seed,
    )
    rewards = RewardGuard(p.max_nonfinite_steps)
    ahead: dict[int, Generation] = {}  # step -> its batch, being drawn or drawn
    state: dict[str, Any] = {}
    if run.resume_from is not None:
        state = roles.restore(run.resume_from)
        kl_ctl.load_state_dict(state["kl_controller"])
        ahead = {g["step"]: Generation.from_state_dict(g) for g in state.get("ahead", [])}
    # On CPU the learners train beside the draws ahead on half the cores, and take the engines'
    # half when those are done (`CoreHandoff`; not with `learner.threads` set).
    hand_off = p.max_staleness and not cfg.learner.gpus_per_rank

    def start(first: int, last: int) -> None:
        for s in range(first, min(last, p.steps) + 1):
            if s not in ahead:
                ahead[s] = roles.start_generation(s, [prompts[i] for i in order.indices(s - 1)])

    step = run.start_step
    bar = tqdm(total=p.steps, initial=step, desc="ppo", unit="step", dynamic_ncols=True)
    for step in range(run.start_step + 1, p.steps + 1):
        t: dict[str, float] = {}
        cpu, step_started = CpuClock(), time.perf_counter()
        start(step, step)
        with timed(t, "generate", cpu):
            batch = roles.finish_generation(ahead.pop(step))
        start(step + 1, step + p.max_staleness)  # drawn while this batch is scored and trained
        with timed(t, "score", cpu):
            true_rewards = roles.score(batch)
        if finite := rewards.check(batch.scores, step):
            beside = [ref for g in ahead.values() for ref in g.calls()] if hand_off else []
            metrics = _learn(cfg, roles, batch, true_rewards, kl_ctl, t, cpu, step, beside)
        else:  # nothing trained: the weights and KL controller stay; the sync still counts the step
            metrics = {"reward/nonfinite_frac": (~torch.isfinite(batch.scores)).float().mean().item()}
        with timed(t, "weight_sync", cpu):
            roles.sync_weights()
        metrics |= {
            "faults/engine_restarts": roles.rollout.heals.count,
            "faults/actor_restarts": roles.actor_heals.count,
            "faults/nonfinite_reward_skipped": float(not finite),
        }
        metrics |= t | _throughput(batch, t) | cpu.utilisation()
        metrics |= _overhead(metrics, time.perf_counter() - step_started)
        run.tracker.log(metrics, step=step)
        if step % p.sample_table_every == 0 or step == p.steps:
            run.tracker.table(
                "samples",
                ["prompt", "response", "reward"],
                [[q, r, s] for q, r, s in zip(batch.prompts, batch.responses, batch.scores.tolist())][:16],
                step=step,
            )
        bar.update(1)
        bar.set_postfix(
            reward=f"{metrics.get('reward/mean', nan):.3f}", kl=f"{metrics.get('kl/mean', nan):.3f}"
        )
        stopping = stop_after is not None and step >= stop_after
        if step == p.steps or stopping or (p.save_every and step % p.save_every == 0):
            # The policy's layout too: `start_run` refuses to resume it under another (a clear error,
            # not DeepSpeed's failure to load optimizer shards saved by a different world size).
            # Batches drawn ahead are kept whole: the weights they were drawn with are gone.
            roles.save(
                run,
                step,
                {
                    "kl_controller": kl_ctl.state_dict(),
                    "samples_seen": step * len(batch),
                    "ahead": [ahead[s].state_dict() for s in sorted(ahead)],
                    **layout(cfg.learner),
                },
            )
        if stopping:
            break
    roles.finish_sync()  # the last stream's failure is the job's
    bar.close()
    return step


def _learn(
    cfg: Config,
    roles: Roles,
    batch: RolloutBatch,
    true_rewards: list[float] | None,
    kl_ctl: Any,
    t: dict[str, float],
    cpu: CpuClock,
    step: int,
    beside: list[Any],
) -> dict[str, float]:
    """Advantages, then the critic's and the policy's updates on `batch`; their metrics. `beside`:
    the calls computing meanwhile (see `PolicyLearner.train_rollout`)."""
    p = cfg.ppo
    with timed(t, "advantages", cpu):
        kl_metrics = compute_advantages(
            batch,
            estimator=p.advantage,
            kl_estimator=p.kl_estimator,
            kl_coef=kl_ctl.value,
            group_size=p.samples_per_prompt,
            gamma=p.gamma,
            lam=p.lam,
            kl_in_reward=p.kl_penalty == "reward",
        )
    metrics = rollout_metrics(batch, true_rewards)  # before the update: pi_old is the sampler
    staleness = torch.tensor([step - 1 - v for v in batch.weight_versions], dtype=torch.float32)
    metrics |= {
        "offpolicy/staleness_mean": staleness.mean().item(),
        "offpolicy/staleness_max": staleness.max().item(),
    }
    if roles.critic is not None:
        with timed(t, "critic_update", cpu):
            metrics |= roles.update("critic", batch, beside)
    with timed(t, "policy_update", cpu):
        metrics |= roles.update("policy", batch, beside)
    kl_ctl.update(kl_metrics["kl/mean"], len(batch))
    return metrics | kl_metrics


def _overhead(m: dict[str, float], wall: float) -> dict[str, float]:
    """Orchestration's share of a step: the driver's time outside every stage, plus, in the update
    stages, the time the learners were not computing (shipping rows, waiting on calls)."""
    stages = sum(m[k] for k in m if k.startswith("timing/") and k != "timing/step")
    update = m.get("timing/policy_update", 0.0) + m.get("timing/critic_update", 0.0)
    learners = m.get("perf/actor_learner_s", 0.0) + m.get("perf/critic_learner_s", 0.0)
    return {"perf/overhead_frac": (wall - stages + max(update - learners, 0.0)) / wall}


def _throughput(batch: RolloutBatch, t: dict[str, float]) -> dict[str, float]:
    tokens = float(batch.lengths().sum())
    train_s = t.get("timing/policy_update", 0.0) + t.get("timing/critic_update", 0.0)
    step_s = sum(t.values())
    return {
        "perf/generate_tokens_per_s": tokens / max(t["timing/generate"], 1e-9),
        "perf/train_tokens_per_s": tokens / max(train_s, 1e-9),
        "perf/samples_per_s": len(batch) / max(step_s, 1e-9),
        "timing/step": step_s,
    }


def run(
    cfg: Config,
    resume_dir: str | None = None,
    stop_after: int | None = None,
    rm_path: str | None = None,
    *,
    prompts: list[str | list[dict]] | None = None,
) -> dict[str, Any]:
    """The whole PPO job; returns its summary (also `<run_dir>/summary.json`). `prompts`: already
    read (`tandem.recipes.pipeline` reads every stage's data before any stage trains)."""
    cfg = ppo_job_config(cfg)
    if prompts is None:  # first: a bad row fails before Ray starts or the run folder is touched
        prompts = load_prompts(cfg)
    with job_cluster(cfg, resume_dir, Roles.cpus_needed(cfg)):
        return _run_job(cfg, prompts, resume_dir, stop_after, rm_path)


def _run_job(
    cfg: Config,
    prompts: list[str | list[dict]],
    resume_dir: str | None,
    stop_after: int | None,
    rm_path: str | None,
) -> dict[str, Any]:
    """`run` once Ray is up: the run folder, the roles (started again from the newest checkpoint
    after a failure), then the held-out table."""
    run = start_run(cfg, "ppo", resume_dir)
    # The run folder's config.yaml is the resolved job: resuming from it needs no other file.
    restarts = Restarts(cfg.run.max_restarts, f"tandem ppo {run.dir / 'config.yaml'}")
    while True:
        roles = None
        try:
            with Roles(cfg, rm_path) as roles:  # every role stopped on the way out, failed or not
                step = train(cfg, roles, run, prompts, stop_after)
                final = roles.export_final(run) if step == cfg.ppo.steps else None
            break
        except Exception as err:
            if not restarts.handle(err, run, started=roles is not None):
                raise
    summary = {"steps": step, **({"final_model": str(final)} if final else {"stopped_at": step})}
    summary["restarts"] = restarts.done
    if final:  # the held-out table: the trained policy against the one it started from
        from tandem.models import resolve_model
        from tandem.recipes.evaluate import evaluate_before_after

        # Into the summary (and W&B's), not metrics.jsonl: one row per PPO step stays one row.
        summary |= evaluate_before_after(cfg, resolve_model(cfg.model.path), str(final), "ppo")
    return finish_run(run, summary)


def main(cfg: Config, args: argparse.Namespace) -> int:
    run(cfg, getattr(args, "resume", None))
    return 0
