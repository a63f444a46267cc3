"""`tandem study frontier`: PPO and DPO on one reward-KL frontier (Rafailov et al. 2023, fig. 2).

Every arm starts from the same SFT model and is judged on the same held-out prompts by the task's
true reward; the x axis is its KL to the SFT model (nats per answer, on its sampled answers). The
arms (`configs/study-frontier.yaml`):
  - PPO against the reward model at several KL coefficients (`study.arms`);
  - DPO at several betas (`study.dpo_arms`, each overriding `study.dpo_config`), on the task's
    offline pairs and on on-policy pairs (two samples of the SFT model per prompt) judged by the
    reward model (`dpo.pairs: policy`, `dpo.judge: rm`: online DPO's one round), and with the DPOP
    term (`dpo.dpop_lambda`, Pal et al. 2024), which keeps DPO from lowering the chosen answers'
    likelihood. Every DPO arm gets `dpo.judge_model` = the study's reward model.
Writes `table.json` (printed, and logged like every job) and `frontier.png` into the study's folder.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.config import Config, dump_config, load_config
from tandem.errors import UserError
from tandem.recipes.evaluate import Evaluation

COLUMNS = (
    "arm",
    "family",
    "kl_to_sft",
    "true_reward",
    "stderr",
    "greedy",
    "greedy_stderr",
    "length",
    "chosen_logp_shift",
)


@dataclass
class Arm:
    """One trained policy of the study."""

    name: str
    family: str  # its series on the plot ("PPO", "DPO offline pairs", ...)
    model: str  # its model directory
    run_dir: Path | None  # its run folder (None for the SFT model)


def train_stages(cfg: Config, out_dir: Path) -> tuple[str, str]:
    """(SFT model, reward model): `study.sft_model` / `study.rm_model`, else trained with
    `pipeline.sft_config` / `pipeline.rm_config` into `out_dir/sft` and `out_dir/rm` (the reward
    model from the SFT model when `pipeline.rm_from_sft`)."""
    from tandem.recipes import rm, sft
    from tandem.recipes.pipeline import stage_config

    where = (f"run.output_dir={out_dir}",)
    sft_model = cfg.study.sft_model
    if sft_model is None:
        sft_cfg = stage_config(cfg, cfg.pipeline.sft_config, "sft", (*where, "run.name=sft"))
        sft_model = sft.run(sft_cfg)["final_model"]
    rm_model = cfg.study.rm_model
    if rm_model is None:
        init = (f"model.path={sft_model}",) if cfg.pipeline.rm_from_sft else ()
        rm_cfg = stage_config(cfg, cfg.pipeline.rm_config, "rm", (*where, "run.name=rm", *init))
        rm_model = rm.run(rm_cfg)["final_model"]
    return str(sft_model), str(rm_model)


def _arm_overrides(out_dir: Path, run_name: str, sft: str) -> list[str]:
    # Each arm's before/after table is skipped: the study evaluates every arm on the same prompts.
    return [
        f"run.output_dir={out_dir}",
        f"run.name={run_name}",
        f"model.path={sft}",
        "train.num_generate_eval=0",
    ]


def ppo_arm(cfg: Config, out_dir: Path, name: str, overrides: Sequence[str], sft: str, rm: str) -> Arm:
    """PPO from the SFT model against the reward model, the study's job with the arm's overrides,
    in `out_dir/ppo-<name>`."""
    from tandem.recipes import ppo

    # The study's job as its files and overrides set it (unset batch sizes stay derived), plus the arm's.
    job = out_dir / "study-job.yaml"
    job.write_text(dump_config(cfg, only_set=True))
    arm_cfg = load_config(job, [*_arm_overrides(out_dir, f"ppo-{name}", sft), *overrides])
    summary = ppo.run(arm_cfg, rm_path=rm)
    return Arm(name, "PPO", summary["final_model"], Path(summary["run_dir"]))


def _family(cfg: Config) -> str:
    pairs = "offline pairs" if cfg.dpo.pairs == "task" else f"on-policy pairs, {cfg.dpo.judge}-judged"
    dpop = f" + DPOP (lambda {cfg.dpo.dpop_lambda:g})" if cfg.dpo.dpop_lambda else ""
    return f"{cfg.dpo.loss.upper()}{dpop}, {pairs}"


def dpo_arm(cfg: Config, out_dir: Path, name: str, overrides: Sequence[str], sft: str, rm: str) -> Arm:
    """DPO from the SFT model with `study.dpo_config` and the arm's overrides, in `out_dir/dpo-<name>`.

    On-policy pairs depend only on the SFT model, the seed, the prompts and the judge, so arms that
    share those share one set (`out_dir/pairs-*.jsonl`, seeded into each arm's run folder, where
    the DPO recipe looks for them first) rather than sampling and judging them again."""
    from tandem.recipes import dpo

    if cfg.study.dpo_config is None:
        raise UserError("`study.dpo_arms` needs `study.dpo_config` (the DPO runs' job file)")
    base = [f"run.seed={cfg.run.seed}", f"dpo.judge_model={rm}"]
    arm_cfg = load_config(
        cfg.study.dpo_config, [*base, *_arm_overrides(out_dir, f"dpo-{name}", sft), *overrides]
    )
    arm_cfg = arm_cfg.model_copy(update={"wandb": cfg.wandb})
    run_dir = out_dir / f"dpo-{name}"
    shared = out_dir / f"pairs-{arm_cfg.dpo.judge}-{arm_cfg.data.num_train}-{arm_cfg.run.seed}.jsonl"
    if arm_cfg.dpo.pairs == "policy" and shared.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared, run_dir / "policy_pairs.jsonl")
    summary = dpo.run(arm_cfg)
    if arm_cfg.dpo.pairs == "policy" and not shared.is_file():
        shutil.copyfile(run_dir / "policy_pairs.jsonl", shared)
    return Arm(name, _family(arm_cfg), summary["final_model"], run_dir)


def chosen_logp_shift(run_dir: Path | None) -> float | None:
    """A DPO run's last training value of `logps/chosen_shift`, the mean change of the chosen
    answers' log-prob from the reference (None for runs that log none)."""
    from tandem.tracking import read_metrics

    if run_dir is None:
        return None
    values = [r["train/logps/chosen_shift"] for r in read_metrics(run_dir) if "train/logps/chosen_shift" in r]
    return values[-1] if values else None


def table_rows(arms: Sequence[Arm], results: dict[str, Evaluation]) -> list[list[Any]]:
    """One row per arm, in `COLUMNS` order."""
    rows = []
    for arm in arms:
        m = results[arm.name].metrics
        rows.append(
            [
                arm.name,
                arm.family,
                m["kl_to_ref"],
                m["sampled/mean"],
                m["sampled/stderr"],
                m["greedy/mean"],
                m["greedy/stderr"],
                m["sampled/length"],
                chosen_logp_shift(arm.run_dir),
            ]
        )
    return rows


def format_rows(rows: Sequence[Sequence[Any]]) -> str:
    """The table as text: floats to 3 decimals, columns right-aligned."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else "-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths))]
    return "\n".join(lines + ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells])


def plot_frontier(path: Path, rows: Sequence[Sequence[Any]], reward_name: str) -> Path:
    """True reward (sampled, +- standard error) against KL to the SFT model, one series per family."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    families: dict[str, list[Sequence[Any]]] = {}
    for row in rows:
        families.setdefault(row[1], []).append(row)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for family, points in families.items():
        points = sorted(points, key=lambda r: r[2])
        style = "o-" if family == "PPO" else "s--" if len(points) > 1 else "D"
        ax.errorbar(
            [r[2] for r in points],
            [r[3] for r in points],
            yerr=[r[4] for r in points],
            fmt=style,
            capsize=3,
            markersize=5,
            label=family,
        )
        for r in points:
            ax.annotate(r[0], (r[2], r[3]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("KL to the SFT model (nats per answer)")
    ax.set_ylabel(f"held-out {reward_name} (sampled)")
    ax.set_title("Reward-KL frontier: PPO and DPO from one SFT model", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def log_table(cfg: Config, out_dir: Path, rows: list[list[Any]]) -> None:
    """The table logged like every job's metrics (`tandem.tracking`: `frontier.jsonl`, W&B table)."""
    from tandem.tracking import Tracker

    with Tracker(out_dir, cfg.wandb, cfg.run.name, "study-frontier", cfg.model_dump(mode="json")) as tracker:
        tracker.table("frontier", list(COLUMNS), rows, step=0)
        tracker.summary({f"{r[0]}/{k}": v for r in rows for k, v in zip(COLUMNS[2:], r[2:]) if v is not None})


def run(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Train every arm, evaluate each with the SFT model on the same held-out prompts, write the
    table (`table.json`, printed, logged) and `frontier.png`; returns {"columns", "rows", "plot"}."""
    from tandem.recipes.evaluate import evaluate_policy, held_out

    if not cfg.study.arms and not cfg.study.dpo_arms:
        raise UserError("`tandem study frontier` needs arms: set study.arms (PPO) and/or study.dpo_arms")
    held = held_out(cfg, "rl", cfg.data.num_eval)
    if isinstance(held, str):
        raise UserError(f"the frontier study needs a held-out evaluation; {held}")
    sft, rm = train_stages(cfg, out_dir)
    arms = [Arm("sft", "SFT", sft, None)]
    arms += [ppo_arm(cfg, out_dir, name, o, sft, rm) for name, o in cfg.study.arms.items()]
    arms += [dpo_arm(cfg, out_dir, name, o, sft, rm) for name, o in cfg.study.dpo_arms.items()]
    results = {}
    for arm in arms:
        print(f"frontier: evaluating {arm.name} on {len(held.prompts)} held-out prompts")
        results[arm.name] = evaluate_policy(
            arm.model, held.reward, held.prompts, cfg.model.max_response_len, cfg.run.seed, sft
        )
    rows = table_rows(arms, results)
    bad = [r[0] for r in rows if not all(math.isfinite(v) for v in r[2:5])]
    if bad:
        raise UserError(f"frontier: arms {bad} have a non-finite reward, KL or standard error")
    out = {"columns": list(COLUMNS), "rows": rows, "reward": held.reward_name, "prompts": len(held.prompts)}
    (out_dir / "table.json").write_text(json.dumps(out, indent=1))
    print(
        f"{held.reward_name} on {len(held.prompts)} held-out prompts; KL to the SFT model on sampled answers"
    )
    print(format_rows(rows))
    log_table(cfg, out_dir, rows)
    plot = plot_frontier(out_dir / "frontier.png", rows, held.reward_name)
    print(f"plot: {plot}")
    return out | {"plot": str(plot)}
