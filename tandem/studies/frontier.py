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
Writes `table.json` (printed, and logged like every job) and `frontier.png` into the study's folder;
the steps it shares with the other studies are `tandem.studies.common`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tandem.config import Config
from tandem.errors import UserError
from tandem.recipes.evaluate import Evaluation
from tandem.studies.common import dpo_arm, evaluate, ppo_arm, pyplot, train_stages, write_table

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


def dpo_family(cfg: Config) -> str:
    """A DPO arm's series on the plot: its loss, DPOP term and pairs (e.g. "DPO, offline pairs")."""
    pairs = "offline pairs" if cfg.dpo.pairs == "task" else f"on-policy pairs, {cfg.dpo.judge}-judged"
    dpop = f" + DPOP (lambda {cfg.dpo.dpop_lambda:g})" if cfg.dpo.dpop_lambda else ""
    return f"{cfg.dpo.loss.upper()}{dpop}, {pairs}"


def chosen_logp_shift(run_dir: Path | None) -> float | None:
    """A DPO run's last training value of `logps/chosen_shift`, the mean change of the chosen
    answers' log-prob from the reference (None for runs that log none)."""
    from tandem.tracking import read_metrics

    if run_dir is None:
        return None
    values = [r["train/logps/chosen_shift"] for r in read_metrics(run_dir) if "train/logps/chosen_shift" in r]
    return values[-1] if values else None


def table_rows(
    families: dict[str, str], run_dirs: dict[str, Path], results: dict[str, Evaluation]
) -> list[list[Any]]:
    """One row per policy (`families`: name -> its series, in table order), in `COLUMNS` order;
    `run_dirs` holds the trained arms' run folders."""
    rows = []
    for name, family in families.items():
        m = results[name].metrics
        rows.append(
            [
                name,
                family,
                m["kl_to_ref"],
                m["sampled/mean"],
                m["sampled/stderr"],
                m["greedy/mean"],
                m["greedy/stderr"],
                m["sampled/length"],
                chosen_logp_shift(run_dirs.get(name)),
            ]
        )
    return rows


def plot_frontier(path: Path, rows: Sequence[Sequence[Any]], reward_name: str) -> Path:
    """True reward (sampled, +- standard error) against KL to the SFT model, one series per family."""
    plt = pyplot()
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


def run(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Train every arm, evaluate each with the SFT model on the same held-out prompts, write the
    table (`table.json`, printed, logged) and `frontier.png`; returns {"columns", "rows", "reward",
    "prompts", "plot"}."""
    if not cfg.study.arms and not cfg.study.dpo_arms:
        raise UserError("`tandem study frontier` needs arms: set study.arms (PPO) and/or study.dpo_arms")
    stages = train_stages(cfg, out_dir)
    ppo = [ppo_arm(cfg, out_dir, name, o, stages) for name, o in cfg.study.arms.items()]
    dpo = [dpo_arm(cfg, out_dir, name, o, stages) for name, o in cfg.study.dpo_arms.items()]
    families = {"sft": "SFT"} | {a.name: "PPO" for a in ppo} | {a.name: dpo_family(a.cfg) for a in dpo}
    policies = {"sft": stages.sft} | {a.name: a.final for a in (*ppo, *dpo)}
    held, results = evaluate(cfg, policies, stages)
    rows = table_rows(families, {a.name: a.run_dir for a in (*ppo, *dpo)}, results)
    bad = [r[0] for r in rows if not all(math.isfinite(v) for v in r[2:5])]
    if bad:
        raise UserError(f"frontier: arms {bad} have a non-finite reward, KL or standard error")
    print("KL to the SFT model on the sampled answers")
    summary = {"reward": held.reward_name, "prompts": len(held.prompts)}
    write_table(cfg, out_dir, "frontier", COLUMNS, rows, summary, row_summary=True)
    plot = plot_frontier(out_dir / "frontier.png", rows, held.reward_name)
    print(f"plot: {plot}")
    return {"columns": list(COLUMNS), "rows": rows, **summary, "plot": str(plot)}
