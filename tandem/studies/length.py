"""`tandem study length`: a reward model learns its annotators' length bias, PPO against it inflates
length, and each mitigation (a config switch usable in any job) is measured against that.

On the `evens` task the annotators add 0.15 per listed item to the true reward (F1), so padding a
correct answer with an odd number pleases them. The study trains an SFT model and a reward model on
those preferences, then one PPO run per arm (`study.arms`; the FIRST arm is the unmitigated
baseline, the others its mitigations, e.g. `reward.length_penalty`, `reward.length_debias`) and one
DPO run per DPO arm (`study.dpo_arms`, the first their baseline: plain DPO; length-controlled losses
join as further arms). It reports:
  - the reward model's bias: its score's correlation with length on the SFT model's held-out
    answers (beside the true reward's), and its verdict on a correct answer padded with one odd
    number (the true reward falls; a biased model pays);
  - each policy's held-out true reward (sampled and greedy, with standard errors), length, reward
    model score and KL to the SFT model;
  - each mitigation's share of the baseline's length inflation removed, and its true reward against
    the baseline's in standard errors of the per-prompt differences (both answered the same prompts).
Plots: `length_steps.png` (length, RM reward, true reward against step, per PPO arm),
`length_mitigations.png` (length and true reward per policy), `rm_length_bias.png` (RM score against
length of the SFT and baseline answers).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tandem.config import Config
from tandem.errors import UserError
from tandem.recipes.evaluate import Evaluation, mean_and_stderr, paired_gain
from tandem.studies.common import (
    Series,
    Stages,
    dpo_arm,
    evaluate,
    plot_panels,
    ppo_arm,
    rm_scorer,
    step_series,
    train_stages,
    write_table,
)

COLUMNS = [
    "policy",
    "true (sampled)",
    "+-",
    "true (greedy)",
    "+-",
    "length",
    "RM score",
    "RM-length r",
    "KL to SFT",
    "inflation removed",
    "true vs baseline (se)",
]


def padding_probe(cfg: Config, stages: Stages, n: int) -> dict[str, float]:
    """The reward model's and the true reward's verdicts on a correct answer against the same answer
    padded with one odd number of the prompt (what the annotators' bias pays for), on `n` held-out
    prompts: mean change of each, and the share of prompts where the reward model prefers the padded one."""
    from tandem.data import get_task, rl_prompts
    from tandem.tasks import format_numbers, prompt_numbers

    task, rng = get_task("evens"), random.Random(cfg.run.seed)
    prompts = rl_prompts(task, n, seed=cfg.run.seed, split="eval")
    correct = [task.solve(p) for p in prompts]
    padded = []
    for p, answer in zip(prompts, correct):
        odds = [x for x in prompt_numbers(p, "evens") if x % 2]
        numbers = [int(x) for x in answer.split()] if answer != "none" else []
        numbers.insert(rng.randrange(len(numbers) + 1), rng.choice(odds))
        padded.append(format_numbers(numbers))
    rm = rm_scorer(cfg, stages.rm)
    rm_gain = [b - a for a, b in zip(rm(prompts, correct), rm(prompts, padded))]
    true_gain = [task.true_reward(p, b) - task.true_reward(p, a) for p, a, b in zip(prompts, correct, padded)]
    return {
        "probe/rm_gain_from_padding": mean_and_stderr(rm_gain)[0],
        "probe/rm_prefers_padded": sum(g > 0 for g in rm_gain) / n,
        "probe/true_gain_from_padding": mean_and_stderr(true_gain)[0],
    }


def rows_and_summary(
    results: dict[str, Evaluation], baseline: str, mitigations: list[str]
) -> tuple[list[list[Any]], dict[str, Any]]:
    """The table's rows (one per policy) and the mitigations' verdicts against `baseline`:
    inflation removed = 1 - (length - SFT's) / (baseline's length - SFT's), sampled answers."""
    sft_len, base = results["sft"].metrics["sampled/length"], results[baseline]
    inflation = base.metrics["sampled/length"] - sft_len
    summary: dict[str, Any] = {
        "rm_length_corr_sft": results["sft"].metrics["sampled/rm_length_corr"],
        "true_length_corr_sft": results["sft"].metrics["sampled/length_corr"],
        "length_inflation_baseline": inflation,
        "true_gain_baseline_vs_sft_se": paired_gain(base, results["sft"]),
    }
    rows = []
    for name, e in results.items():
        m = e.metrics
        removed = gain = None  # blank in the rows of the SFT and baseline policies
        if name in mitigations:
            # No inflation to remove (the baseline did not grow longer): no share to report.
            removed = 1 - (m["sampled/length"] - sft_len) / inflation if inflation > 0 else None
            gain = paired_gain(e, base)
            summary[f"{name}/inflation_removed"], summary[f"{name}/true_vs_baseline_se"] = removed, gain
            summary[f"{name}/meets_goal"] = removed is not None and removed >= 0.5 and gain >= -2
        rows.append(
            [
                name,
                m["sampled/mean"],
                m["sampled/stderr"],
                m["greedy/mean"],
                m["greedy/stderr"],
                m["sampled/length"],
                m["sampled/rm"],
                m["sampled/rm_length_corr"],
                m["kl_to_ref"],
                removed,
                gain,
            ]
        )
    return rows, summary


def plots(out_dir: Path, arms: dict[str, Path], results: dict[str, Evaluation], baseline: str) -> None:
    steps = {
        "response length (tokens)": step_series(arms, "rollout/response_length/mean"),
        "reward model score": step_series(arms, "reward/rm"),
        "true reward": step_series(arms, "true_reward/mean"),
    }
    plot_panels(out_dir / "length_steps.png", steps, "PPO step", "PPO against a length-biased reward model")
    names = list(results)

    def by_policy(key: str, err: str | None = None) -> Series:
        m = [results[n].metrics for n in names]
        return list(range(len(names))), [r[key] for r in m], [r[err] for r in m] if err else None

    side = {
        "held-out length (tokens)": {mode: by_policy(f"{mode}/length") for mode in ("sampled", "greedy")},
        "held-out true reward": {
            mode: by_policy(f"{mode}/mean", f"{mode}/stderr") for mode in ("sampled", "greedy")
        },
    }
    title = "Mitigations side by side (mean +- standard error)"
    plot_panels(out_dir / "length_mitigations.png", side, "policy", title, "o", xticks=names)
    scatter = {
        "reward model score": {
            n: (results[n].lengths["sampled"], results[n].rewards["sampled/rm"], None)
            for n in ("sft", baseline)
        },
        "true reward": {
            n: (results[n].lengths["sampled"], results[n].rewards["sampled"], None) for n in ("sft", baseline)
        },
    }
    plot_panels(
        out_dir / "rm_length_bias.png", scatter, "response length (tokens)", "Scores against length", "o"
    )


def run(cfg: Config, out_dir: Path) -> dict[str, Any]:
    if cfg.data.task != "evens":
        raise UserError(
            f"`tandem study length` runs on the evens task (data.task: evens), not {cfg.data.task!r}"
        )
    if not cfg.study.arms:
        raise UserError("`study.arms` is empty: give the unmitigated PPO run first, then its mitigations")
    stages = train_stages(cfg, out_dir)
    ppo_arms = {name: ppo_arm(cfg, out_dir, name, ov, stages) for name, ov in cfg.study.arms.items()}
    dpo_arms = {name: dpo_arm(cfg, out_dir, name, ov, stages) for name, ov in cfg.study.dpo_arms.items()}
    policies = {"sft": stages.sft, **{n: a.final for n, a in ppo_arms.items()}}
    policies |= {n: a.final for n, a in dpo_arms.items()}
    _, results = evaluate(cfg, policies, stages)
    baseline = next(iter(ppo_arms))
    rows, summary = rows_and_summary(results, baseline, [n for n in ppo_arms if n != baseline])
    # DPO arms: their own baseline (plain DPO) against its length-controlled variants.
    if dpo_arms:
        dpo_base = next(iter(dpo_arms))
        dpo_rows, dpo_summary = rows_and_summary(results, dpo_base, [n for n in dpo_arms if n != dpo_base])
        for row, dpo_row in zip(rows, dpo_rows):
            if row[0] in dpo_arms:
                row[-2:] = dpo_row[-2:]
        summary |= {k: v for k, v in dpo_summary.items() if k.split("/")[0] in dpo_arms}
        summary["length_inflation_dpo"] = dpo_summary["length_inflation_baseline"]
    summary |= padding_probe(cfg, stages, cfg.data.num_eval)
    summary["rm_length_corr_baseline"] = results[baseline].metrics["sampled/rm_length_corr"]
    write_table(cfg, out_dir, "length", COLUMNS, rows, summary)
    plots(out_dir, {n: a.run_dir for n, a in ppo_arms.items()}, results, baseline)
    return {"rows": rows, "summary": summary, "columns": COLUMNS}
