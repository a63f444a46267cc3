"""The steps every study shares, in the order a study takes them:

    stages = train_stages(cfg, out_dir)                    # SFT and reward model, once
    arm = ppo_arm(cfg, out_dir, "kl-0.05", ["ppo.kl_coef=0.05"], stages)   # one PPO run per arm
    arm = dpo_arm(cfg, out_dir, "dpo", ["dpo.beta=0.1"], stages)           # one DPO run per arm
    held, results = evaluate(cfg, {"sft": stages.sft, "ppo": arm.final}, stages)
    write_table(out_dir, "study-name", columns, rows, summary)   # table.json, printed, W&B
    plot_points(...) / plot_steps(...)                     # PNGs in out_dir

Every run a study starts lands inside its run folder `out_dir` (`sft/`, `rm/`, `ppo-<arm>/`,
`dpo-<arm>/`), so one folder holds the whole experiment. `run_study` is what `tandem study` calls:
the folder, one Ray cluster for every stage, and the study module's `run(cfg, out_dir)`.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.config import Config, apply_overrides, dump_config
from tandem.errors import UserError
from tandem.recipes.evaluate import Evaluation, HeldOut


@dataclass
class Stages:
    """The models every arm of a study starts from and is judged by."""

    sft: str  # the SFT model directory: each arm's starting point and KL reference
    rm: str  # the reward model directory: PPO's reward, and the proxy score in evaluations


@dataclass
class Arm:
    """One trained arm of a study."""

    name: str
    run_dir: Path  # its run folder (metrics.jsonl, config.yaml, summary.json)
    final: str  # its final model directory
    checkpoints: dict[int, str]  # step -> model directory of each checkpoint the run kept
    steps: int  # the steps it trained: its final model's step
    cfg: Config  # the job it ran (the study's or `study.dpo_config`, with the arm's overrides)


def train_stages(cfg: Config, out_dir: Path) -> Stages:
    """The SFT model (`study.sft_model`, else trained by `pipeline.sft_config` into `out_dir/sft`)
    and the reward model (`study.rm_model`, else `pipeline.rm_config` into `out_dir/rm`, from the
    SFT model when `pipeline.rm_from_sft`)."""
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
    return Stages(str(sft_model), str(rm_model))


def arm_config(cfg: Config, out_dir: Path, run_name: str, overrides: Sequence[str], stages: Stages) -> Config:
    """`cfg` for one arm: its run folder `out_dir/run_name`, starting from the SFT model, no
    before/after table of its own (the study evaluates every arm on the same prompts), then the
    arm's overrides. Values `cfg` left unset stay unset (`apply_overrides`), so PPO still derives
    the batch sizes an arm's overrides change."""
    return apply_overrides(
        cfg,
        [
            f"run.output_dir={out_dir}",
            f"run.name={run_name}",
            f"model.path={stages.sft}",
            "train.num_generate_eval=0",
            *overrides,
        ],
    )


def ppo_arm(cfg: Config, out_dir: Path, name: str, overrides: Sequence[str], stages: Stages) -> Arm:
    """Run PPO from the SFT model against the reward model (`reward.components` with path "rm") with
    the arm's overrides of the study's job, in `out_dir/ppo-<name>`."""
    from tandem.recipes import ppo

    arm_cfg = arm_config(cfg, out_dir, f"ppo-{name}", overrides, stages)
    summary = ppo.run(arm_cfg, rm_path=stages.rm)
    run_dir = Path(summary["run_dir"])
    kept = {
        int(folder.name.removeprefix("step_")): str(folder / "policy" / "model")
        for folder in sorted((run_dir / "checkpoints").glob("step_*"))
        if (folder / "policy" / "model").is_dir()
    }
    return Arm(name, run_dir, summary["final_model"], kept, summary["steps"], arm_cfg)


def dpo_arm(cfg: Config, out_dir: Path, name: str, overrides: Sequence[str], stages: Stages) -> Arm:
    """Run DPO from the SFT model with `study.dpo_config` and the arm's overrides, in
    `out_dir/dpo-<name>`, with the study's seed and W&B settings; `dpo.judge_model` is the study's
    reward model (what `dpo.judge: rm` labels on-policy pairs with).

    On-policy pairs depend only on the SFT model, the seed, the prompts and the judge, so arms that
    share those share one set (`out_dir/pairs-<judge>-<num_train>-<seed>.jsonl`, copied into each
    arm's run folder, where the DPO recipe looks for them first) rather than sampling and judging
    them again."""
    from tandem.config import load_config
    from tandem.recipes import dpo

    if cfg.study.dpo_config is None:
        raise UserError("`study.dpo_arms` needs `study.dpo_config` (the DPO runs' job file)")
    base = load_config(cfg.study.dpo_config, [f"run.seed={cfg.run.seed}", f"dpo.judge_model={stages.rm}"])
    base = base.model_copy(update={"wandb": cfg.wandb})
    arm_cfg = arm_config(base, out_dir, f"dpo-{name}", overrides, stages)
    run_dir = out_dir / f"dpo-{name}"
    on_policy = arm_cfg.dpo.pairs == "policy"
    shared = out_dir / f"pairs-{arm_cfg.dpo.judge}-{arm_cfg.data.num_train}-{arm_cfg.run.seed}.jsonl"
    if on_policy and shared.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared, run_dir / "policy_pairs.jsonl")
    summary = dpo.run(arm_cfg)
    if on_policy and not shared.is_file():
        shutil.copyfile(run_dir / "policy_pairs.jsonl", shared)
    return Arm(name, run_dir, summary["final_model"], {}, summary["steps"], arm_cfg)


def rm_scorer(cfg: Config, rm_path: str):
    """The reward model as a batched scorer of (prompt, response) texts, in this process."""
    from tandem.actors.reward import RewardScorer
    from tandem.config import RewardComponent

    m = cfg.model
    scorer = RewardScorer(
        [RewardComponent(kind="model", path=rm_path, name="rm")],
        dtype=m.dtype,
        batch_size=cfg.reward.batch_size,
        max_prompt_len=m.max_prompt_len,
        max_response_len=m.max_response_len,
    )
    return lambda prompts, responses: scorer.score(prompts, responses).total


def held_out_set(cfg: Config) -> HeldOut:
    """The study's `data.num_eval` held-out prompts and evaluation reward, or a UserError."""
    from tandem.recipes.evaluate import held_out

    held = held_out(cfg, "rl", cfg.data.num_eval)
    if isinstance(held, str):
        raise UserError(f"a study needs its held-out evaluation; {held}")
    return held


def evaluate(cfg: Config, policies: dict[str, str], stages: Stages) -> tuple[HeldOut, dict[str, Evaluation]]:
    """Each policy (name -> model directory) on the same `data.num_eval` held-out prompts: the
    evaluation (gold) reward of greedy and sampled answers, the reward model's (proxy) score of the
    same answers (metrics "{mode}/rm"), lengths, and the KL to the SFT model."""
    from tandem.recipes.evaluate import evaluate_policy

    held = held_out_set(cfg)
    proxies = {"rm": rm_scorer(cfg, stages.rm)}
    results = {}
    for name, path in policies.items():
        print(f"evaluating {name} on {len(held.prompts)} held-out prompts")
        results[name] = evaluate_policy(
            path, held.reward, held.prompts, cfg.model.max_response_len, cfg.run.seed, stages.sft, proxies
        )
    return held, results


def format_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: floats to 3 decimals, None as "-", columns right-aligned to their widest cell."""
    cells = [
        [f"{v:.3f}" if isinstance(v, float) else "-" if v is None else str(v) for v in row] for row in rows
    ]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_table(
    cfg: Config,
    out_dir: Path,
    study: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    summary: dict[str, Any],
    row_summary: bool = False,
) -> Path:
    """The study's table: `out_dir/table.json` ({"columns", "rows", "summary"}), printed, and logged
    like every job's metrics (`tandem.tracking`: W&B table "study" and the run summary).

    `row_summary` (for tables of one row per policy): the W&B run summary also holds every number
    of the rows as `<first cell>/<column>`, so study runs compare side by side in W&B's run table."""
    from tandem.tracking import Tracker

    path = out_dir / "table.json"
    path.write_text(json.dumps({"columns": list(columns), "rows": rows, "summary": summary}, indent=1))
    print(format_rows(columns, rows))
    for key, value in summary.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    with Tracker(out_dir, cfg.wandb, cfg.run.name, f"study-{study}", cfg.model_dump(mode="json")) as tracker:
        tracker.table("study", list(columns), [list(r) for r in rows], step=0)
        numbers = (
            (f"{row[0]}/{column}", v)
            for row in (rows if row_summary else ())
            for column, v in zip(columns[1:], row[1:])
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        )
        tracker.summary(dict(numbers) | summary)
    return path


def pyplot():
    """matplotlib's pyplot, drawing to files."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


#: A plotted series: x values, y values, and each y's standard error (or None).
Series = tuple[Sequence[float], Sequence[float], Sequence[float] | None]


def plot_panels(
    path: Path,
    panels: dict[str, dict[str, Series]],
    xlabel: str,
    title: str,
    style: str = ".-",
    xticks: Sequence[str] | None = None,
) -> Path:
    """One PNG of side-by-side panels (panel title -> series label -> Series), error bars where
    given; `style` "o" draws points, ".-" lines through them; `xticks` names x = 0, 1, ... (policies)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (panel, series) in zip(axes[0], panels.items()):
        for label, (xs, ys, errs) in series.items():
            ax.errorbar(xs, ys, yerr=errs, fmt=style, capsize=2, label=label, markersize=4)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel(xlabel)
        if xticks is not None:
            ax.set_xticks(range(len(xticks)), xticks, rotation=20, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def step_series(run_dirs: dict[str, Path], key: str) -> dict[str, Series]:
    """Metric `key` against step from each run's metrics.jsonl (label -> Series); runs without it
    are left out."""
    from tandem.tracking import read_metrics

    out: dict[str, Series] = {}
    for label, run_dir in run_dirs.items():
        rows = [r for r in read_metrics(run_dir) if isinstance(r.get(key), (int, float))]
        if rows:
            out[label] = ([r["step"] for r in rows], [r[key] for r in rows], None)
    return out


def stderr_units(diff: float, *stderrs: float) -> float:
    """`diff` in standard errors of a difference of independent means (their errors in quadrature)."""
    scale = math.hypot(*stderrs)
    return diff / scale if scale > 0 else math.copysign(math.inf, diff) if diff else 0.0


def default_config(name: str) -> Path:
    """`configs/study-<name>.yaml` of the working directory (the repository root: its stage job files
    are named from there, as `tandem pipeline`'s are); elsewhere CONFIG must be given."""
    path = Path("configs") / f"study-{name}.yaml"
    if not path.is_file():
        raise UserError(
            f"no CONFIG given and {path} is not in the working directory: run from the repository "
            f"root or name the study's job file (`tandem study {name} FILE.yaml`)"
        )
    return path


def run_study(name: str, cfg: Config) -> dict[str, Any]:
    """What `tandem study NAME` does: create the run folder `<run.output_dir>/<run.name>` (a fresh
    one: a study's runs are not resumed), start one Ray cluster sized for the largest PPO arm, and run
    the study; returns its result."""
    from tandem.cluster.runtime import ray_cluster
    from tandem.recipes.ppo_roles import Roles

    held_out_set(cfg)  # a study without its held-out evaluation fails before it trains anything
    out_dir = Path(cfg.run.output_dir) / cfg.run.name
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"run folder {out_dir} is not empty: pick another run.name or move it away")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_config(cfg))
    arms = [apply_overrides(cfg, overrides) for overrides in cfg.study.arms.values()] or [cfg]
    module = importlib.import_module(f"tandem.studies.{name}")
    with ray_cluster(cfg, num_cpus=max(Roles.cpus_needed(a) for a in arms)):
        result = module.run(cfg, out_dir)
    print(f"study {name}: table {out_dir / 'table.json'}")
    for plot in sorted(out_dir.glob("*.png")):
        print(f"plot: {plot}")
    return result
