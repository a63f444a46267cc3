"""Loaders: tokenizer conventions, and the policy, reward and value models on the embedded models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tandem.models import load_causal_lm, load_reward_model, load_tokenizer, load_value_model


def test_plain_transformers_loads_the_embedded_models(model_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for path in model_dirs.values():
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.dtype == torch.float32
        assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 1.5e6
        assert AutoTokenizer.from_pretrained(path).eos_token == "<|end|>"


def test_load_tokenizer_pads_left_and_falls_back_to_eos(model_dirs, tmp_path):
    tokenizer = load_tokenizer("tiny-qwen2")
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<|pad|>"
    assert load_tokenizer("tiny-qwen2", padding_side="right").padding_side == "right"
    # A checkpoint without a pad token (many hub models) pads with EOS.
    copy = shutil.copytree(model_dirs["tiny-llama"], tmp_path / "nopad")
    config = json.loads((copy / "tokenizer_config.json").read_text())
    del config["pad_token"]
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_tokenizer(str(copy)).pad_token == "<|end|>"


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_left_padding_leaves_logprobs_unchanged(name):
    # Why left padding is safe for the learner: RoPE attention depends on relative positions only.
    tokenizer, model = load_tokenizer(name), load_causal_lm(name).eval()
    texts = ["sort: 3 1 2", "evens: 3 8 2 5 6 1 7"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        padded = model(**batch).logits
        for row, text in enumerate(texts):
            alone = model(**tokenizer(text, return_tensors="pt")).logits[0]
            torch.testing.assert_close(padded[row, -alone.shape[0] :], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_reward_and_value_models(name):
    tokenizer = load_tokenizer(name)
    batch = tokenizer(["sort: 3 1 2", "sort: 3 1 2 9 9 9"], return_tensors="pt", padding=True)  # (2, T)
    reward_model, value_model = load_reward_model(name).eval(), load_value_model(name).eval()
    assert reward_model.config.pad_token_id == tokenizer.pad_token_id
    assert value_model.config.pad_token_id == tokenizer.pad_token_id
    assert value_model.dropout.p == 0.0  # a deterministic critic, even in train mode
    with torch.no_grad():
        rewards = reward_model(**batch).logits  # (2, 1)
        values = value_model(**batch).logits  # (2, T, 1)
        short_alone = reward_model(**tokenizer("sort: 3 1 2", return_tensors="pt")).logits
    assert rewards.shape == (2, 1) and values.shape == (*batch["input_ids"].shape, 1)
    # The reward is read at the last real token, wherever the padding is.
    torch.testing.assert_close(rewards[0], short_alone[0], atol=1e-5, rtol=1e-5)
    assert load_causal_lm(name, dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_causal_lm(name, dtype="float64")
