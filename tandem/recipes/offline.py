"""Training a learner group over a fixed set of examples, the loop the SFT, RM and DPO recipes share
(PPO, which makes its examples as it goes, has its own loop in `tandem.recipes.ppo`).

`fit` is a whole job: the learner group, resume, `train_loop` (train, log, evaluate, checkpoint),
shutdown. The run folder it writes is `tandem.recipes.run_dir`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.cluster.groups import ActorGroup
from tandem.cluster.sharding import shard
from tandem.config import Config, LearnerConfig
from tandem.data.records import BatchOrder
from tandem.errors import UserError
from tandem.recipes.run_dir import Run, export_final, finish_run, layout, resume


@dataclass
class LoopResult:
    checkpoint: Path  # the last checkpoint written (or resumed from)
    step: int  # optimizer steps done
    finished: bool  # False when stopped early by `stop_after`
    last_eval: dict[str, float]  # the held-out metrics of the last evaluation


def learner_group(role: str, learner_cls: type, cfg: LearnerConfig, *args: Any, **kwargs: Any) -> ActorGroup:
    """`cfg.world_size` ranks of `learner_cls(cfg, *args, **kwargs)`, placed and set up (process
    group, model, DeepSpeed engine)."""
    group = ActorGroup(
        role,
        learner_cls,
        cfg.world_size,
        cpus_per_actor=cfg.cpus_per_rank,
        gpus_per_actor=cfg.gpus_per_rank,
        strategy=cfg.placement,
        resources=cfg.resources,
        args=(cfg, *args),
        kwargs=kwargs,
    )
    try:
        group.call("setup")
    except BaseException:
        group.shutdown()
        raise
    return group


def eval_loss(group: ActorGroup, examples: Sequence[dict], prefix: str = "eval/") -> dict[str, float]:
    """Held-out loss and the learner's metrics over all ranks (each gets a contiguous share);
    {} without examples."""
    if len(examples) < group.world_size:
        return {}
    metrics = group.call_per_rank("eval_loss", [(part,) for part in shard(examples, group.world_size)])[0]
    return {prefix + k: v for k, v in metrics.items()}


def train_loop(
    run: Run,
    group: ActorGroup,
    examples: Sequence[dict],
    order: BatchOrder,
    eval_fn: Callable[[], dict[str, float]],
    stop_after: int | None = None,
) -> LoopResult:
    """Optimizer steps from `run.start_step` to `order.total_steps`: train, log, evaluate every
    `eval_every`, checkpoint every `save_every` and at the end.

    `stop_after` ends the loop early at that step, as if the job were killed after its
    checkpoint (how the tests exercise resume)."""
    from tqdm.auto import tqdm

    train_cfg, total = run.cfg.train, order.total_steps
    if run.start_step == 0:
        run.tracker.log(eval_fn(), step=0)
    checkpoint, last_eval, step = run.resume_from, {}, run.start_step
    bar = tqdm(total=total, initial=run.start_step, desc=run.job, unit="step", mininterval=1.0)
    for step in range(run.start_step + 1, total + 1):
        started = time.perf_counter()
        batch = [examples[i] for i in order.indices(step - 1)]
        train = group.call_per_rank("train_batch", [(part,) for part in shard(batch, group.world_size)])[0]
        row = {f"train/{k}": v for k, v in train.items()}
        row["timing/step"] = time.perf_counter() - started
        if step % train_cfg.eval_every == 0 or step == total:
            last_eval = eval_fn()
            row.update(last_eval)
        if step % train_cfg.log_every == 0 or step == total or any(k.startswith("eval/") for k in row):
            run.tracker.log(row, step=step)
        bar.update(1)
        bar.set_postfix(loss=f"{train['loss']:.4f}")
        stopping = stop_after is not None and step >= stop_after
        if step == total or stopping or (train_cfg.save_every and step % train_cfg.save_every == 0):
            state = {"total_steps": total, "samples_seen": step * order.batch, **layout(run.cfg.learner)}
            checkpoint = run.checkpoints.save(group, step, state)
        if stopping:
            break
    bar.close()
    if checkpoint is None:  # resumed from a finished run: nothing left to train
        raise UserError(f"{run.dir}: nothing to train and no checkpoint")
    if not last_eval and step == total:  # resumed from a finished run
        last_eval = eval_fn()
    return LoopResult(checkpoint, step, step == total, last_eval)


def fit(
    run: Run,
    cfg: Config,
    role: str,
    learner_cls: type,
    model_path: str,
    train: Sequence[dict],
    evaluate_fn: Callable[[ActorGroup], dict[str, float]],
    stop_after: int | None = None,
    **learner_kwargs: Any,
) -> LoopResult:
    """A learner group's whole job over `train` (SFT, RM, DPO): the batch order, the group, resume
    from the run's latest checkpoint, `train_loop` evaluating with `evaluate_fn(group)`; the group
    is shut down after."""
    order = BatchOrder(
        len(train), cfg.learner.global_batch_size, cfg.train.epochs, cfg.train.max_steps, cfg.run.seed
    )
    group = learner_group(
        role, learner_cls, cfg.learner, model_path, order.total_steps, cfg.run.seed, **learner_kwargs
    )
    try:
        resume(run, group)
        return train_loop(run, group, train, order, lambda: evaluate_fn(group), stop_after)
    finally:
        group.shutdown()


def finish_policy_run(run: Run, result: LoopResult, initial: str) -> dict[str, Any]:
    """End a policy-training run (SFT, DPO): export the final model, score it and the model it
    started from (`initial`) by the evaluation reward (printing the table), write the summary."""
    from tandem.recipes.evaluate import evaluate_before_after

    if not result.finished:
        return finish_run(run, {"stopped_at": result.step})
    final = export_final(run, result.checkpoint)
    rewards = evaluate_before_after(run.cfg, initial, str(final), run.job)
    if rewards:
        run.tracker.log(rewards, step=result.step)
    return finish_run(run, {"final_model": str(final), "steps": result.step, **result.last_eval, **rewards})
