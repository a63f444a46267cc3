"""What the SFT, RM and DPO recipes share: the run folder, data, the learner group, the train loop,
checkpoints and the true-reward evaluation of generations.

A run folder `<run.output_dir>/<run.name>` holds:
    config.yaml          the resolved config
    metrics.jsonl        one row per logged step (see tandem.tracking)
    checkpoints/step_N/  model/ (HF dir), deepspeed/ (optimizer + schedule), rng/, state.json
    checkpoints/latest   the name of the newest checkpoint
    final/               the trained model as an HF directory (what the next stage's model.path names)
    summary.json         the run's final numbers
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.cluster.groups import ActorGroup
from tandem.config import Config, LearnerConfig, dump_config
from tandem.errors import UserError
from tandem.tracking import Tracker

# ---------------------------------------------------------------------------------------------
# Ray and the run folder


@contextmanager
def ray_cluster(cfg: Config, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for one job: attach, or start one with `num_cpus` logical CPUs (default: enough for the
    learner group); a Ray started here is shut down at the end."""
    import ray

    from tandem.cluster.runtime import init_ray

    started = not ray.is_initialized()
    need = num_cpus or math.ceil(cfg.learner.world_size * cfg.learner.cpus_per_rank)
    init_ray(cfg.ray, num_cpus=max(need, os.cpu_count() or 1, 4))
    try:
        yield
    finally:
        if started:
            ray.shutdown()


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


def start_run(cfg: Config, job: str, resume_dir: str | None = None) -> Run:
    """Create (or reopen, when resuming) the run folder. Resuming: `run.resume: true` or
    `--resume RUN_DIR` (which also names the folder); with no checkpoint there, it starts over."""
    run_dir = Path(resume_dir) if resume_dir else Path(cfg.run.output_dir) / cfg.run.name
    checkpoints = Checkpoints(run_dir / "checkpoints", cfg.run.keep_checkpoints)
    resuming = bool(resume_dir) or cfg.run.resume
    latest = checkpoints.latest() if resuming else None
    if resume_dir and not run_dir.is_dir():
        raise UserError(f"--resume {resume_dir}: no such run folder")
    if not resuming and checkpoints.latest() is not None:
        raise UserError(
            f"run folder {run_dir} already holds checkpoints; resume it with run.resume=true "
            f"(or --resume {run_dir}), or pick another run.name"
        )
    if latest is not None:
        _check_layout(cfg, latest)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    start_step = Checkpoints.read_state(latest)["step"] if latest else 0
    tracker = Tracker(
        run_dir, cfg.wandb, cfg.run.name, job, cfg.model_dump(mode="json"), resume_step=start_step if latest else None
    )
    if latest:
        print(f"resuming {run_dir} from {latest.name} (step {start_step})")
    return Run(cfg, job, run_dir, tracker, checkpoints, latest, start_step, time.time())


class Checkpoints:
    """Resumable checkpoints `step_N/` under one folder, the newest named in `latest`."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root, self.keep = root, keep

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        return path if (path / "state.json").is_file() else None

    def save(self, groups: ActorGroup | Mapping[str, ActorGroup], step: int, state: dict[str, Any]) -> Path:
        """All ranks write their part (several groups: each in a subfolder named by its key); then
        state.json (last: its presence marks a complete checkpoint), the `latest` pointer, and old
        checkpoints are pruned."""
        path = self.root / f"step_{step:06d}"
        parts = {"": groups} if isinstance(groups, ActorGroup) else dict(groups)
        refs = {name: group.async_call("save", str(path / name)) for name, group in parts.items()}
        for name, group in parts.items():
            group.collect(refs[name], "save")
        (path / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
        (self.root / "latest").write_text(path.name)
        done = sorted(p for p in self.root.glob("step_*") if (p / "state.json").is_file())
        for old in done[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    @staticmethod
    def read_state(path: Path) -> dict[str, Any]:
        return json.loads((path / "state.json").read_text())


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
    summary = {"job": run.job, "run_dir": str(run.dir), **summary,
               "wall_s": round(time.time() - run.started_at, 1)}
    (run.dir / "summary.json").write_text(json.dumps(summary, indent=1))
    run.tracker.summary(summary)
    run.tracker.finish()
    print(f"{run.job} finished: " + ", ".join(f"{k}={_fmt(v)}" for k, v in summary.items()))
    return summary


def finish_policy_run(run: Run, result: LoopResult, initial: str) -> dict[str, Any]:
    """End a policy-training run (SFT, DPO): export the final model, score it and the model it
    started from (`initial`) by the task's true reward, write the summary."""
    if not result.finished:
        return finish_run(run, {"stopped_at": result.step})
    final = export_final(run, result.checkpoint)
    rewards = true_reward_eval(run.cfg, initial, str(final))
    if rewards:
        run.tracker.log(rewards, step=result.step)
    return finish_run(run, {"final_model": str(final), "steps": result.step, **result.last_eval, **rewards})


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# Data


def load_records(cfg: Config, kind: str, split: str) -> list[dict]:
    """Training or held-out records of `kind` ("sft" or "pairs"): the user's files when given,
    else drawn from the built-in task. Held-out: eval_files, else the task's eval split, else []."""
    from tandem.data import load_data_file, preference_pairs, sft_examples

    files = cfg.data.train_files if split == "train" else cfg.data.eval_files
    if files:
        return [r for f in files for r in load_data_file(f, kind)]
    if cfg.data.task is None:
        if split == "train":
            raise UserError("no training data: set data.task or data.train_files")
        return []
    n = cfg.data.num_train if split == "train" else cfg.data.num_eval
    if kind == "sft":
        # Held-out demonstrations stay exact: eval/loss measures distance to the right answers.
        error_rate = cfg.data.demo_error_rate if split == "train" else 0.0
        return sft_examples(cfg.data.task, n, seed=cfg.run.seed, split=split, error_rate=error_rate)
    return preference_pairs(cfg.data.task, n, seed=cfg.run.seed, temperature=cfg.data.preference_temperature,
                            split=split)


def tokenize(tokenizer: Any, records: Sequence[dict], cfg: Config) -> list[dict]:
    """Records -> token-id examples for the learners: `prompt_ids` (chat template, truncated from
    the left) and `response_ids` / `chosen_ids` + `rejected_ids` (text + EOS, truncated)."""
    from tandem.data import prompt_ids, response_ids

    max_p, max_r = cfg.model.max_prompt_len, cfg.model.max_response_len
    out = []
    for rec in records:
        example = {"prompt_ids": prompt_ids(tokenizer, rec["prompt"])[-max_p:]}
        for key in ("response", "chosen", "rejected"):
            if key in rec:
                example[f"{key}_ids"] = response_ids(tokenizer, rec[key])[:max_r]
        out.append(example)
    return out


class BatchOrder:
    """Which examples make global batch `step`: a seeded shuffle per epoch, the last partial
    batch dropped. A pure function of the step, so the step alone is the data position."""

    def __init__(self, n_examples: int, global_batch: int, epochs: int, max_steps: int | None, seed: int) -> None:
        if n_examples < global_batch:
            raise UserError(f"{n_examples} training examples are fewer than one global batch ({global_batch})")
        self.n, self.batch, self.seed = n_examples, global_batch, seed
        self.steps_per_epoch = n_examples // global_batch
        self.total_steps = self.steps_per_epoch * epochs
        if max_steps is not None:
            self.total_steps = min(self.total_steps, max_steps)

    def indices(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order[k * self.batch : (k + 1) * self.batch]


def shard(items: Sequence[Any], n: int) -> list[list[Any]]:
    """`items` in `n` contiguous parts whose sizes differ by at most one."""
    size, extra = divmod(len(items), n)
    bounds = [r * size + min(r, extra) for r in range(n + 1)]
    return [list(items[bounds[r] : bounds[r + 1]]) for r in range(n)]


# ---------------------------------------------------------------------------------------------
# The learner group and the training loop


def learner_group(role: str, learner_cls: type, cfg: LearnerConfig, *args: Any, **kwargs: Any) -> ActorGroup:
    """`cfg.world_size` ranks of `learner_cls(cfg, *args, **kwargs)`, placed and set up (process
    group, model, DeepSpeed engine)."""
    group = ActorGroup(
        role, learner_cls, cfg.world_size, cpus_per_actor=cfg.cpus_per_rank, gpus_per_actor=cfg.gpus_per_rank,
        strategy=cfg.placement, resources=cfg.resources, args=(cfg, *args), kwargs=kwargs,
    )
    try:
        group.call("setup")
    except BaseException:
        group.shutdown()
        raise
    return group


def evaluate(group: ActorGroup, examples: Sequence[dict], prefix: str = "eval/") -> dict[str, float]:
    """Held-out metrics over all ranks (each gets a contiguous share); {} without examples."""
    if len(examples) < group.world_size:
        return {}
    metrics = group.call_per_rank("evaluate", [(part,) for part in shard(examples, group.world_size)])[0]
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
            state = {"total_steps": total, "samples_seen": step * order.batch, **_layout(run.cfg.learner)}
            checkpoint = run.checkpoints.save(group, step, state)
        if stopping:
            break
    bar.close()
    if checkpoint is None:  # resumed from a finished run: nothing left to train
        raise UserError(f"{run.dir}: nothing to train and no checkpoint")
    if not last_eval and step == total:  # resumed from a finished run
        last_eval = eval_fn()
    return LoopResult(checkpoint, step, step == total, last_eval)


def fit(run: Run, cfg: Config, role: str, learner_cls: type, model_path: str, train: Sequence[dict],
        evaluate_fn: Callable[[ActorGroup], dict[str, float]], stop_after: int | None = None,
        **learner_kwargs: Any) -> LoopResult:
    """A learner group's whole job over `train` (SFT, RM, DPO): the batch order, the group, resume
    from the run's latest checkpoint, `train_loop` evaluating with `evaluate_fn(group)`; the group
    is shut down after."""
    order = BatchOrder(len(train), cfg.learner.global_batch_size, cfg.train.epochs, cfg.train.max_steps, cfg.run.seed)
    group = learner_group(role, learner_cls, cfg.learner, model_path, order.total_steps, cfg.run.seed,
                          **learner_kwargs)
    try:
        resume(run, group)
        return train_loop(run, group, train, order, lambda: evaluate_fn(group), stop_after)
    finally:
        group.shutdown()


@dataclass
class LoopResult:
    checkpoint: Path  # the last checkpoint written (or resumed from)
    step: int  # optimizer steps done
    finished: bool  # False when stopped early by `stop_after`
    last_eval: dict[str, float]  # the held-out metrics of the last evaluation


def _layout(cfg: LearnerConfig) -> dict[str, int]:
    return {"world_size": cfg.world_size, "zero_stage": cfg.zero_stage}


def _check_layout(cfg: Config, checkpoint: Path) -> None:
    """DeepSpeed's optimizer state is sharded by rank: resume with the world size and ZeRO stage
    the checkpoint was saved with."""
    state = Checkpoints.read_state(checkpoint)
    saved = {k: state[k] for k in _layout(cfg.learner) if k in state}
    if saved and saved != _layout(cfg.learner):
        raise UserError(
            f"{checkpoint} was saved with learner {saved}; resume with the same settings "
            f"(this config has {_layout(cfg.learner)})"
        )


def resume(run: Run, group: ActorGroup) -> None:
    """Restore every rank from the run's checkpoint (no-op when starting fresh)."""
    if run.resume_from is not None:
        group.call("load", str(run.resume_from))


# ---------------------------------------------------------------------------------------------
# True reward of generations (driver-side: see tandem.recipes.evaluate)


def true_reward_eval(cfg: Config, initial: str, trained: str) -> dict[str, float]:
    """`eval/true_reward/{greedy,sampled}` of the trained model and `eval/init_true_reward/...` of
    the model it started from, on held-out prompts ({} without a task or with num_generate_eval 0)."""
    from tandem.data import rl_prompts

    if cfg.data.task is None or cfg.train.num_generate_eval == 0:
        return {}
    prompts = rl_prompts(cfg.data.task, cfg.train.num_generate_eval, seed=cfg.run.seed, split="eval")
    from tandem.recipes.evaluate import evaluate_policy

    out = {}
    for prefix, path in (("eval/init_true_reward", initial), ("eval/true_reward", trained)):
        result = evaluate_policy(path, cfg.data.task, prompts, cfg.model.max_response_len, cfg.run.seed)
        out.update({f"{prefix}/{mode}": result[f"{mode}/mean"] for mode in ("greedy", "sampled")})
    return out
