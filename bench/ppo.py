"""PPO steps on the embedded default (tiny-qwen2, sort task, GRPO, one engine and one learner rank):
per-stage time, samples/s and tokens/s, from the metrics the driver logs for each step."""

from __future__ import annotations

import statistics
import tempfile

from _common import PeakMemory, ray_up

TITLE = "ppo: the default job (tiny-qwen2, 32 prompts x 4 samples, <= 32 tokens, grpo), 1 engine, 1 rank"
STEPS = 5
STAGES = ("generate", "score", "advantages", "critic_update", "policy_update", "weight_sync")


def run() -> list[tuple]:
    from tandem.config import Config
    from tandem.recipes import ppo
    from tandem.recipes.ppo_roles import Roles
    from tandem.tracking import read_metrics

    with tempfile.TemporaryDirectory() as out:
        cfg = Config.model_validate(
            {
                "run": {"name": "bench-ppo", "output_dir": out},
                "wandb": {"mode": "disabled"},
                "ppo": {"steps": STEPS},
            }
        )
        with PeakMemory() as peak:  # entered first: Ray's processes start inside, as our children
            ray_up(max(8, Roles.cpus_needed(cfg)))
            summary = ppo.run(cfg)
        rows = read_metrics(f"{out}/bench-ppo")
    # Step 1 pays one-off costs (vLLM's first-call kernel setup): reported apart, left out of the means.
    steady = rows[1:]

    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in steady)

    n, batch = len(steady), cfg.ppo.prompts_per_step * cfg.ppo.samples_per_prompt
    startup = summary["wall_s"] - sum(r["timing/step"] for r in rows)
    out_rows = [
        ("outside the steps", startup, "s", "start of roles (DeepSpeed, vLLM), final checkpoint and export"),
        ("step 1", rows[0]["timing/step"], "s", "includes first-generate warm-up"),
    ]
    for stage in STAGES:
        key = f"timing/{stage}"
        if key in steady[0]:
            share = mean(key) / mean("timing/step")
            util = [r[f"perf/cpu_util/{stage}"] for r in steady if f"perf/cpu_util/{stage}" in r]
            busy = f", CPU {statistics.fmean(util):.0%} busy" if util else ""
            out_rows.append(
                (f"  {stage}", mean(key), "s", f"mean of steps 2-{STEPS}, {share:.0%} of a step{busy}")
            )
    out_rows += [
        ("step", mean("timing/step"), "s", f"mean of steps 2-{STEPS} ({n} steps)"),
        ("samples/s", mean("perf/samples_per_s"), "samples/s", f"{batch} samples per step / step time"),
        ("generation", mean("perf/generate_tokens_per_s"), "tokens/s", "response tokens / generate time"),
        ("training", mean("perf/train_tokens_per_s"), "tokens/s", "response tokens / update time"),
        (
            "response length",
            mean("rollout/response_length/mean"),
            "tokens",
            f"max {cfg.model.max_response_len}",
        ),
        ("logprob mismatch", mean("offpolicy/logprob_mismatch"), "nats", "|vLLM - learner| per token, fp32"),
        (
            "orchestration",
            mean("perf/overhead_frac"),
            "of a step",
            "driver time outside the stages + update time the learners were not computing",
        ),
        (
            "peak memory",
            peak.peak_pss / 2**30,
            "GiB",
            f"PSS of the driver and Ray's processes ({peak.peak_rss / 2**30:.2f} GiB summing RSS)",
        ),
    ]
    return out_rows
