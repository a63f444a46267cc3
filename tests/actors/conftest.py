"""Fixtures of the actor tests: a small reward model checkpoint, built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def reward_model_dir(tmp_path_factory) -> str:
    """A tiny-qwen2 reward model (seeded random head) saved as `tandem rm` saves one: an HF
    AutoModelForSequenceClassification directory with num_labels=1 and the tokenizer."""
    import torch

    from tandem.models import load_reward_model, load_tokenizer

    path = tmp_path_factory.mktemp("rm") / "model"
    torch.manual_seed(0)
    model = load_reward_model("tiny-qwen2")
    with torch.no_grad():  # a head with spread-out scores, so wrong rows or padding show
        model.score.weight.normal_(0.0, 1.0)
    model.save_pretrained(path)
    load_tokenizer("tiny-qwen2").save_pretrained(path)
    return str(path)
