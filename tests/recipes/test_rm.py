"""The reward-model recipe at toy scale: metrics, and a saved RM that transformers loads as a scorer."""

from __future__ import annotations

import pytest

from tandem.config import load_config
from tandem.recipes import rm
from tandem.tracking import read_metrics

pytestmark = pytest.mark.slow  # end to end: real Ray, vLLM and DeepSpeed processes


def test_rm_run_saves_a_sequence_classifier(ray_session, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    cfg = load_config(
        "configs/rm.yaml",
        [
            f"run.output_dir={tmp_path}",
            "run.name=rm",
            "model.path=tiny-qwen2",  # no SFT run in the tests
            "data.num_train=16",
            "data.num_eval=8",
            "learner.micro_batch_size=4",
            "learner.global_batch_size=8",
            "train.max_steps=2",
        ],
    )
    summary = rm.run(cfg)
    assert summary["steps"] == 2
    assert {"eval/loss", "eval/accuracy", "eval/true_accuracy"} <= set(summary)
    rows = read_metrics(tmp_path / "rm")
    assert {"train/loss", "train/accuracy", "train/margin", "train/lr", "train/grad_norm"} <= set(rows[1])

    model = AutoModelForSequenceClassification.from_pretrained(summary["final_model"])
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 5, 6, 3, model.config.pad_token_id]])
    scores = model(input_ids=ids, attention_mask=(ids != model.config.pad_token_id).long()).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()
