"""`tandem study overoptimization`: the proxy (reward model) and gold (true) reward of PPO policies
against the square root of their KL to the SFT model, as in Gao et al. 2022 ("Scaling laws for
reward model overoptimization").

One PPO run per arm (`study.arms`, e.g. KL coefficients) against the reward model; with
`study.checkpoints` every checkpoint the run kept (`ppo.save_every`, `run.keep_checkpoints`) is a
point as well as its final model, so one run traces a curve. The SFT model is every curve's origin
(KL 0). Each point's gold reward and proxy score are of the same held-out sampled answers; the KL is
estimated on them too (k1: sum of log pi - log pi_sft over the answer's tokens).

Reported per arm: the gold reward's peak (the point and its sqrt KL), its last point, and the fall
from peak to last in standard errors; the proxy's change over the same stretch. Plots:
`overoptimization.png` (gold and proxy against sqrt KL) and `overoptimization_steps.png` (the
runs' own per-step RM reward, true reward and KL).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tandem.config import Config
from tandem.errors import UserError
from tandem.recipes.evaluate import Evaluation
from tandem.studies.common import (
    Arm,
    evaluate,
    plot_panels,
    ppo_arm,
    stderr_units,
    step_series,
    train_stages,
    write_table,
)

COLUMNS = ["arm", "step", "KL to SFT", "sqrt KL", "gold", "+-", "proxy (RM)", "+-", "length"]


def points(arm: Arm, checkpoints: bool) -> dict[int, str]:
    """The arm's models to evaluate by step: its kept checkpoints (with `checkpoints`) and its final."""
    out = dict(arm.checkpoints) if checkpoints else {}
    out[arm.steps] = arm.final  # the last checkpoint is the final model: evaluated once
    return dict(sorted(out.items()))


def curve(results: dict[str, Evaluation], arm: str, steps: list[int]) -> list[dict[str, float]]:
    """The arm's points in step order, the SFT model first (step 0, KL 0)."""
    names = ["sft", *(f"{arm}@{s}" for s in steps)]
    out = []
    for step, name in zip([0, *steps], names):
        m = results[name].metrics
        kl = m["kl_to_ref"]
        out.append(
            {
                "step": step,
                "kl": kl,
                "sqrt_kl": math.sqrt(max(kl, 0.0)),  # k1 is unbiased, so a tiny KL may come out < 0
                "gold": m["sampled/mean"],
                "gold_se": m["sampled/stderr"],
                "proxy": m["sampled/rm"],
                "proxy_se": m["sampled/rm_stderr"],
                "length": m["sampled/length"],
            }
        )
    return out


def verdict(points_: list[dict[str, float]]) -> dict[str, float]:
    """Where the gold reward peaks along a curve, and how far it and the proxy move after."""
    peak = max(range(len(points_)), key=lambda i: points_[i]["gold"])
    p, last = points_[peak], points_[-1]
    return {
        "peak_step": p["step"],
        "peak_sqrt_kl": p["sqrt_kl"],
        "peak_gold": p["gold"],
        "gold_gain_at_peak_se": stderr_units(
            p["gold"] - points_[0]["gold"], p["gold_se"], points_[0]["gold_se"]
        ),
        "last_sqrt_kl": last["sqrt_kl"],
        "last_gold": last["gold"],
        "gold_fall_after_peak_se": stderr_units(p["gold"] - last["gold"], p["gold_se"], last["gold_se"]),
        "proxy_change_after_peak": last["proxy"] - p["proxy"],
    }


def plots(out_dir: Path, curves: dict[str, list[dict[str, float]]], arms: dict[str, Arm]) -> None:
    def series(key: str) -> dict:
        return {
            arm: ([p["sqrt_kl"] for p in pts], [p[key] for p in pts], [p[f"{key}_se"] for p in pts])
            for arm, pts in curves.items()
        }

    panels = {"gold reward (true, held-out)": series("gold"), "proxy reward (reward model)": series("proxy")}
    title = "Reward over-optimisation: proxy and gold reward against sqrt(KL to SFT)"
    plot_panels(out_dir / "overoptimization.png", panels, "sqrt(KL to SFT), nats^0.5", title)
    runs = {name: arm.run_dir for name, arm in arms.items()}
    steps = {
        "RM reward (rollouts)": step_series(runs, "reward/rm"),
        "true reward (rollouts)": step_series(runs, "true_reward/mean"),
        "KL to SFT (rollouts)": step_series(runs, "kl/mean"),
    }
    plot_panels(out_dir / "overoptimization_steps.png", steps, "PPO step", "The PPO runs step by step")


def run(cfg: Config, out_dir: Path) -> dict[str, Any]:
    if not cfg.study.arms:
        raise UserError("`study.arms` is empty: give the PPO runs to sweep (e.g. one per ppo.kl_coef)")
    stages = train_stages(cfg, out_dir)
    arms = {name: ppo_arm(cfg, out_dir, name, ov, stages) for name, ov in cfg.study.arms.items()}
    steps = {name: points(arm, cfg.study.checkpoints) for name, arm in arms.items()}
    policies = {"sft": stages.sft}
    for name, by_step in steps.items():
        policies |= {f"{name}@{s}": path for s, path in by_step.items()}
    _, results = evaluate(cfg, policies, stages)
    curves = {name: curve(results, name, list(by_step)) for name, by_step in steps.items()}
    rows = [
        [
            arm,
            p["step"],
            p["kl"],
            p["sqrt_kl"],
            p["gold"],
            p["gold_se"],
            p["proxy"],
            p["proxy_se"],
            p["length"],
        ]
        for arm, pts in curves.items()
        for p in pts
    ]
    summary = {f"{arm}/{k}": v for arm, pts in curves.items() for k, v in verdict(pts).items()}
    write_table(cfg, out_dir, "overoptimization", COLUMNS, rows, summary)
    plots(out_dir, curves, arms)
    return {"rows": rows, "summary": summary, "columns": COLUMNS, "curves": curves}
