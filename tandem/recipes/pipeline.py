"""`tandem pipeline CONFIG`: InstructGPT end to end: SFT -> reward model -> PPO against it, then a
held-out comparison of the base, SFT and PPO policies by the evaluation reward (`eval.reward`, else
the task's true reward) on `data.eval_files` or the task's held-out prompts, and the plots.

CONFIG is the PPO job; `pipeline.sft_config` and `pipeline.rm_config` name the two earlier stages'
job files. Each stage writes its own run folder `<output_dir>/<run.name>-{sft,rm}` and the PPO
run `<output_dir>/<run.name>`, where the comparison lands as `pipeline.json`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
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


def compare(cfg: Config, policies: dict[str, str], reference: str) -> dict[str, Any]:
    """Each policy's held-out reward on the same prompts and its KL to `reference`; prints the
    table (or the line saying why there is none)."""
    from tandem.recipes.evaluate import compare_held_out

    gains = [("sft", "base"), ("ppo", "sft")]
    results = compare_held_out(cfg, "rl", cfg.data.num_eval, policies, reference, "sft", gains)
    return {name: e.metrics for name, e in results.items()}


@dataclass
class Inputs:
    """What the three stages read before they train."""

    sft_cfg: Config  # the SFT stage's job
    sft: tuple[list[dict], list[dict]]  # `tandem.recipes.sft.load_data`
    rm: tuple[list[dict], list[dict], list[dict]]  # `tandem.recipes.rm.load_data`
    prompts: list[str | list[dict]]  # PPO's


def read_inputs(cfg: Config) -> Inputs:
    """Every stage's job file, run folder and data, checked (and the data read) before Ray starts and
    before any stage trains: a bad row of the preference pairs or of the prompts, a finished PPO run
    folder or PPO batch sizes that contradict each other would otherwise be told only after the
    stages before it trained. The SFT model keeps its base's tokenizer, so the RM's rows (from the SFT
    model, `pipeline.rm_from_sft`) and PPO's prompts are tokenized here with the base's."""
    from tandem.data.records import load_prompts
    from tandem.recipes import rm, sft
    from tandem.recipes.ppo_config import ppo_job_config
    from tandem.recipes.run_dir import check_run_dir

    sft_cfg = stage_config(cfg, cfg.pipeline.sft_config, "sft")
    sft_base = (f"model.path={sft_cfg.model.path}",)
    rm_cfg = stage_config(cfg, cfg.pipeline.rm_config, "rm", sft_base if cfg.pipeline.rm_from_sft else ())
    ppo_cfg = ppo_job_config(
        cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": sft_cfg.model.path})})
    )
    for job in (sft_cfg, rm_cfg, cfg):
        check_run_dir(job)
    return Inputs(sft_cfg, sft.load_data(sft_cfg), rm.load_data(rm_cfg), load_prompts(ppo_cfg))


def run(cfg: Config, inputs: Inputs | None = None) -> dict[str, Any]:
    """The three stages, then the held-out comparison; `inputs`: `read_inputs(cfg)`, read if None."""
    from tandem.models import resolve_model
    from tandem.recipes import ppo, rm, sft
    from tandem.report import write_report

    inputs = inputs or read_inputs(cfg)
    sft_model = sft.run(inputs.sft_cfg, data=inputs.sft)["final_model"]
    rm_init = (f"model.path={sft_model}",) if cfg.pipeline.rm_from_sft else ()
    rm_model = rm.run(stage_config(cfg, cfg.pipeline.rm_config, "rm", rm_init), data=inputs.rm)["final_model"]
    # PPO's own before/after table is skipped: the comparison below holds it, on more prompts.
    ppo_cfg = cfg.model_copy(
        update={
            "model": cfg.model.model_copy(update={"path": sft_model}),
            "train": cfg.train.model_copy(update={"num_generate_eval": 0}),
        }
    )
    ppo_summary = ppo.run(ppo_cfg, rm_path=rm_model, prompts=inputs.prompts)
    policies = {"base": resolve_model(cfg.model.path), "sft": sft_model, "ppo": ppo_summary["final_model"]}
    results = compare(cfg, policies, reference=sft_model)
    run_dir = ppo_summary["run_dir"]
    (Path(run_dir) / "pipeline.json").write_text(
        json.dumps({"policies": policies, "results": results}, indent=1)
    )
    for path in write_report(run_dir):
        print(f"plot: {path}")
    return {"policies": policies, "results": results}


def main(cfg: Config, args: argparse.Namespace) -> int:
    from tandem.recipes.ppo_roles import Roles

    inputs = read_inputs(cfg)  # before Ray starts
    with ray_cluster(cfg, num_cpus=Roles.cpus_needed(cfg)):
        run(cfg, inputs)
    return 0
