"""`tandem pipeline` on a task of one's own, end to end on real Ray, vLLM and DeepSpeed at toy scale:
JSONL files for SFT, preferences and prompts, a reward model trained on those preferences, and an
evaluation reward by import path, with no built-in task; the held-out table is printed and saved."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from tandem.config import load_config
from tandem.recipes import pipeline
from tandem.recipes.evaluate import evaluate_policy, held_out

pytestmark = pytest.mark.slow  # end to end: real Ray, vLLM and DeepSpeed processes

OWN_REWARD = "tests.recipes.rewards:reverse_score"
N_EVAL = 8
#: What every stage shares: tiny batches, two optimizer steps, no built-in task.
STAGE = {
    "model": {"path": "tiny-qwen2", "max_response_len": 12},
    "data": {"task": None},
    "learner": {"micro_batch_size": 4, "global_batch_size": 8, "optim": {"warmup_steps": 1}},
    "train": {"max_steps": 2, "num_generate_eval": 4},
    "eval": {"reward": OWN_REWARD},
}


def _write_own_task(folder) -> dict[str, str]:
    """The files of a "reverse the digits" task: demonstrations, preference pairs (the reversed
    list over the list as given) and prompts, each with a held-out file of other prompts."""
    rng = random.Random(0)
    prompts = sorted({" ".join(str(rng.randrange(10)) for _ in range(rng.randint(3, 5))) for _ in range(64)})
    splits = {"train": prompts[:16], "eval": prompts[16 : 16 + N_EVAL]}
    files = {}
    for split, digits in splits.items():
        rows = {
            "sft": [{"prompt": f"reverse: {d}", "response": " ".join(d.split()[::-1])} for d in digits],
            "pairs": [
                {"prompt": f"reverse: {d}", "chosen": " ".join(d.split()[::-1]), "rejected": d}
                for d in digits
            ],
            "prompts": [{"prompt": f"reverse: {d}"} for d in digits],
        }
        for kind, records in rows.items():
            path = folder / f"{kind}-{split}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
            files[f"{kind}-{split}"] = str(path)
    return files


def _stage_file(folder, name: str, kind: str, files: dict[str, str]) -> str:
    job = {
        **STAGE,
        "data": {
            "task": None,
            "train_files": [files[f"{kind}-train"]],
            "eval_files": [files[f"{kind}-eval"]],
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def test_pipeline_on_ones_own_task_prints_the_held_out_table(ray_session, tmp_path, capsys):
    files = _write_own_task(tmp_path)
    cfg = load_config(
        None,
        [
            f"run.output_dir={tmp_path}",
            "run.name=own",
            "wandb.mode=disabled",
            "model.max_response_len=12",
            "data.task=null",
            f"data.train_files=[{files['prompts-train']}]",
            f"data.eval_files=[{files['prompts-eval']}]",
            f"data.num_eval={N_EVAL}",
            f"eval.reward={OWN_REWARD}",
            f"pipeline.sft_config={_stage_file(tmp_path, 'sft', 'sft', files)}",
            f"pipeline.rm_config={_stage_file(tmp_path, 'rm', 'pairs', files)}",
            "reward.components=[{kind: model, path: rm, name: rm}]",
            "ppo.steps=1",
            "ppo.prompts_per_step=4",
            "ppo.samples_per_prompt=2",
            "ppo.sample_table_every=1000",
            "learner.optim.warmup_steps=1",
            "rollout.kv_cache_mb=32",
            "rollout.max_num_seqs=16",
            "reward.cpus=0.5",
            "reference.cpus=0.5",
        ],
    )
    out = pipeline.run(cfg)
    printed = capsys.readouterr().out
    print(printed)  # the table, in the test's log (-s)

    # The SFT stage printed its own before/after table by the same reward; PPO left its own to the
    # pipeline's comparison.
    assert f"{OWN_REWARD} on 4 held-out prompts" in printed and "sft - initial:" in printed
    assert "ppo - initial" not in printed
    table = printed[printed.index(f"{OWN_REWARD} on {N_EVAL} held-out prompts") :].splitlines()
    assert [line.split()[0] for line in table[2:5]] == ["base", "sft", "ppo"]
    assert table[5].startswith("sft - base: ") and table[6].startswith("ppo - sft: ")
    assert table[5].endswith("standard errors, paired")

    results = out["results"]
    saved = json.loads((tmp_path / "own" / "pipeline.json").read_text())
    assert saved["results"] == results and set(results) == {"base", "sft", "ppo"}
    assert results["sft"]["kl_to_ref"] == 0.0 and results["base"]["kl_to_ref"] != 0.0
    for name, r in results.items():  # the rows print what was measured
        assert (
            f"{r['sampled/mean']:8.3f} +- {r['sampled/stderr']:5.3f}" in table[2 + list(results).index(name)]
        )
    # The base row again, by hand: the user's reward of the untrained model's answers to the held-out
    # file's prompts (its garbage scores above 0 on the length half of the reward).
    held = held_out(cfg, "rl", N_EVAL)
    eval_prompts = [
        json.loads(line)["prompt"] for line in Path(files["prompts-eval"]).read_text().splitlines()
    ]
    assert [p[0]["content"] for p in held.prompts] == eval_prompts
    again = evaluate_policy("tiny-qwen2", held.reward, held.prompts, 12, cfg.run.seed, out["policies"]["sft"])
    assert again.metrics == pytest.approx(results["base"]) and results["base"]["sampled/mean"] > 0
