"""The tracker: metrics.jsonl rows, resume truncation, W&B mode rule and an offline W&B run."""

from __future__ import annotations

import json
import math

import pytest

from tandem.config import WandbConfig
from tandem.errors import UserError
from tandem.tracking import Tracker, read_metrics, wandb_mode


def test_rows_land_in_metrics_jsonl(tmp_path):
    with Tracker(tmp_path / "run", WandbConfig(mode="disabled"), "r", "sft") as tracker:
        tracker.log({"train/loss": 1.5, "timing/step": 0.25}, step=1)
        tracker.log({"eval/loss": float("nan"), "eval/accuracy": 0.75}, step=2)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["train/loss"] == 1.5 and rows[0]["timing/step"] == 0.25
    assert rows[1]["eval/loss"] is None and rows[1]["eval/accuracy"] == 0.75  # NaN -> null, valid JSON
    assert all(isinstance(r["time"], float) for r in rows)


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    with Tracker(tmp_path, WandbConfig(mode="disabled"), "r", "sft") as tracker:
        for step in range(1, 6):
            tracker.log({"train/loss": 1.0 / step}, step=step)
    with Tracker(tmp_path, WandbConfig(mode="disabled"), "r", "sft", resume_step=3) as tracker:
        tracker.log({"train/loss": 0.0}, step=4)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train/loss"] == 0.0
    assert math.isclose(rows[2]["train/loss"], 1 / 3)


def test_fresh_run_starts_a_new_file(tmp_path):
    for _ in range(2):
        with Tracker(tmp_path, WandbConfig(mode="disabled"), "r", "sft") as tracker:
            tracker.log({"x": 1}, step=1)
    assert len(read_metrics(tmp_path)) == 1


def test_sample_tables_start_over_or_resume_like_the_metrics(tmp_path):
    def steps():
        return [json.loads(line)["step"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()]

    disabled = WandbConfig(mode="disabled")
    with Tracker(tmp_path, disabled, "r", "ppo") as tracker:
        for step in (2, 4, 6):
            tracker.table("samples", ["prompt", "response"], [["p", f"r{step}"]], step=step)
    with Tracker(tmp_path, disabled, "r", "ppo", resume_step=4) as tracker:
        tracker.table("samples", ["prompt", "response"], [["p", "again"]], step=6)
    assert steps() == [2, 4, 6]  # the interrupted run's step 6 is gone, the resumed one's kept
    with Tracker(tmp_path, disabled, "r", "ppo") as tracker:
        tracker.table("samples", ["prompt", "response"], [["p", "new"]], step=2)
    assert steps() == [2]


def test_unreadable_metrics_name_the_file_and_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n\n{oops\n')
    with pytest.raises(UserError, match=r"metrics.jsonl, line 3: not JSON"):
        read_metrics(tmp_path)


def test_wandb_mode_rule(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode(WandbConfig()) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(WandbConfig()) == "online"
    assert wandb_mode(WandbConfig(mode="offline")) == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(WandbConfig()) == "disabled"
    assert wandb_mode(WandbConfig(mode="online")) == "online"  # the config wins


def test_offline_wandb_run_lives_in_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = WandbConfig(project="tandem-test", tags=["t"])
    with Tracker(tmp_path, cfg, "offline-run", "sft", config={"a": 1}) as tracker:
        assert tracker.mode == "offline"
        tracker.log({"train/loss": 2.0}, step=1)
        tracker.summary({"eval/loss": 1.0})
    offline = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and any(offline[0].glob("*.wandb"))
    assert read_metrics(tmp_path)[0]["train/loss"] == 2.0
