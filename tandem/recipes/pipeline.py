"""`tandem pipeline CONFIG`: InstructGPT end to end: SFT -> reward model -> PPO against it, then a
held-out comparison of the base, SFT and PPO policies by the task's true reward, and the plots.

CONFIG is the PPO job; `pipeline.sft_config` and `pipeline.rm_config` name the two earlier stages'
job files. Each stage writes its own run folder `<output_dir>/<run.name>-{sft,rm}` and the PPO
run `<output_dir>/<run.name>`, where the comparison lands as `pipeline.json`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from tandem.cluster.runtime import ray_cluster
from tandem.config import Config, load_config
from tandem.errors import UserError


def stage_config(cfg: Config, path: str | None, stage: str, overrides: tuple[str, ...] = ()) -> Config:
    """A stage's job file, with the pipeline's output folder, run name, seed and W&B settings."""
    if path is None:
        raise UserError(f"`pipeline.{stage}_config` is not set: name the {stage} stage's job file")
    stage_cfg = load_config(
        path,
        [
            f"run.output_dir={cfg.run.output_dir}",
            f"run.name={cfg.run.name}-{stage}",
            f"run.seed={cfg.run.seed}",
            *overrides,
        ],
    )
    return stage_cfg.model_copy(update={"wandb": cfg.wandb})


def compare(cfg: Config, policies: dict[str, str], reference: str) -> dict[str, dict[str, float]]:
    """True reward of each policy on the same held-out prompts; KL of each to `reference`."""
    from tandem.data import rl_prompts
    from tandem.recipes.evaluate import evaluate_policy

    if cfg.data.task is None:
        return {}
    prompts = rl_prompts(cfg.data.task, cfg.data.num_eval, seed=cfg.run.seed, split="eval")
    return {
        name: evaluate_policy(
            path, cfg.data.task, prompts, cfg.model.max_response_len, cfg.run.seed, reference
        )
        for name, path in policies.items()
    }


def format_table(results: dict[str, dict[str, float]], n_prompts: int) -> str:
    lines = [
        f"true reward on {n_prompts} held-out prompts (mean +- standard error)",
        f"{'policy':8} {'sampled':>17} {'greedy':>17} {'length':>7} {'KL to SFT':>10}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:8} {r['sampled/mean']:8.3f} +- {r['sampled/stderr']:5.3f} "
            f"{r['greedy/mean']:8.3f} +- {r['greedy/stderr']:5.3f} {r['sampled/length']:7.2f} "
            f"{r['kl_to_ref']:10.3f}"
        )
    if "ppo" in results and "sft" in results:
        lines.append(
            f"PPO - SFT (sampled): {gain_in_stderrs(results['ppo'], results['sft']):+.1f} standard errors"
        )
    return "\n".join(lines)


def gain_in_stderrs(new: dict[str, float], old: dict[str, float], mode: str = "sampled") -> float:
    """(new - old) over the standard error of the difference of two independent means."""
    se = math.hypot(new[f"{mode}/stderr"], old[f"{mode}/stderr"])
    return (new[f"{mode}/mean"] - old[f"{mode}/mean"]) / se if se > 0 else math.inf


def run(cfg: Config) -> dict[str, Any]:
    from tandem.models import resolve_model
    from tandem.recipes import ppo, rm, sft
    from tandem.report import write_report

    sft_model = sft.run(stage_config(cfg, cfg.pipeline.sft_config, "sft"))["final_model"]
    rm_init = (f"model.path={sft_model}",) if cfg.pipeline.rm_from_sft else ()
    rm_model = rm.run(stage_config(cfg, cfg.pipeline.rm_config, "rm", rm_init))["final_model"]
    ppo_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": sft_model})})
    ppo_summary = ppo.run(ppo_cfg, rm_path=rm_model)
    policies = {"base": resolve_model(cfg.model.path), "sft": sft_model, "ppo": ppo_summary["final_model"]}
    results = compare(cfg, policies, reference=sft_model)
    run_dir = ppo_summary["run_dir"]
    (Path(run_dir) / "pipeline.json").write_text(
        json.dumps({"policies": policies, "results": results}, indent=1)
    )
    if results:
        print(format_table(results, cfg.data.num_eval))
    for path in write_report(run_dir):
        print(f"plot: {path}")
    return {"policies": policies, "results": results}


def main(cfg: Config, args: argparse.Namespace) -> int:
    from tandem.recipes.ppo_roles import Roles

    with ray_cluster(cfg, num_cpus=Roles.cpus_needed(cfg)):
        run(cfg)
    return 0
