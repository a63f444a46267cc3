"""The SFT recipe end to end at toy scale: run folder, HF checkpoint, and stop/resume equivalence."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tandem.config import load_config
from tandem.errors import UserError
from tandem.recipes import sft
from tandem.tracking import read_metrics

pytestmark = pytest.mark.slow  # end to end: real Ray, vLLM and DeepSpeed processes

TOY = [
    "data.num_train=32",
    "data.num_eval=8",
    "model.max_response_len=16",
    "learner.micro_batch_size=4",
    "learner.global_batch_size=8",
    "learner.optim.warmup_steps=1",
    "train.max_steps=4",
    "train.eval_every=2",
    "train.num_generate_eval=4",
]


def _cfg(tmp_path, name, *extra):
    return load_config("configs/sft.yaml", [*TOY, f"run.output_dir={tmp_path}", f"run.name={name}", *extra])


def _losses(run_dir):
    """step -> (train loss, held-out loss), NaN where a row has none."""
    rows = read_metrics(run_dir)
    nan = float("nan")
    return {
        r["step"]: (r.get("train/loss", nan), r.get("eval/loss", nan))
        for r in rows
        if "eval/loss" in r or "train/loss" in r
    }


def _warm_imports():
    # transformers' lazy imports are not thread-safe: resolve them before the threads start.
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from tandem.learners import SFTLearner  # noqa: F401
    from tandem.models import load_tokenizer

    load_tokenizer("tiny-qwen2")


def test_stop_and_resume_equals_straight_run(ray_session, tmp_path):
    straight, halves = _cfg(tmp_path, "straight"), _cfg(tmp_path, "halves")
    _warm_imports()
    with ThreadPoolExecutor(2) as pool:  # the straight run and the first half share the wait
        full = pool.submit(sft.run, straight)
        first = pool.submit(sft.run, halves, None, 2)
        summary, stopped = full.result(), first.result()
    assert stopped["stopped_at"] == 2
    resumed = sft.run(halves, resume_dir=str(tmp_path / "halves"))

    # The same losses at every step, train and held-out (two steps came after the resume).
    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "halves")
    assert sorted(a) == sorted(b) == [0, 1, 2, 3, 4]
    for step in (0, 1, 2, 3, 4):
        assert b[step] == pytest.approx(a[step], rel=1e-5, nan_ok=True), step
    assert resumed["eval/loss"] == pytest.approx(summary["eval/loss"], rel=1e-5)

    # The run folder.
    run_dir = tmp_path / "straight"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "summary.json").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 4
    assert {"eval/true_reward/greedy", "eval/init_true_reward/sampled"} <= set(summary)
    rows = read_metrics(run_dir)
    assert rows[0]["step"] == 0 and "eval/loss" in rows[0]  # the untrained model's held-out loss
    assert {"train/loss", "train/lr", "train/grad_norm", "timing/step"} <= set(rows[1])
    assert rows[-2]["eval/loss"] < rows[0]["eval/loss"]  # it learns even at this scale

    # The final model is an HF directory; an existing run is not overwritten.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(summary["final_model"]).num_parameters() > 0
    assert AutoTokenizer.from_pretrained(summary["final_model"]).eos_token_id is not None
    with pytest.raises(UserError, match="already holds checkpoints"):
        sft.run(straight)


def test_demonstrator_slips_reach_training_but_not_held_out(tmp_path):
    from tandem.data import get_task
    from tandem.data.records import load_records

    cfg = load_config("configs/demo-sft.yaml", ["data.num_train=400", "data.num_eval=400"])
    assert cfg.data.demo_error_rate == 0.3
    task = get_task("sort")
    wrong = {
        split: sum(task.true_reward(r["prompt"], r["response"]) < 1 for r in load_records(cfg, "sft", split))
        for split in ("train", "eval")
    }
    assert wrong["eval"] == 0 and 80 < wrong["train"] < 150  # ~28% of 400
