"""Embedded tiny models: deterministic offline builds, an atomic cache, a working tokenizer."""

from __future__ import annotations

import random
import re
import shutil
import string

import pytest

from tandem.errors import UserError
from tandem.models import tiny
from tandem.models.tiny import EMBEDDED_MODELS, build_tiny_model, resolve_model
from tandem.tasks import get_task, task_names


def _files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_builds_are_deterministic(tmp_path, model_dirs):
    for name in EMBEDDED_MODELS:
        again = build_tiny_model(name, tmp_path / "other-cache")
        assert again.name == model_dirs[name].name  # the version hash does not depend on the machine
        assert _files(again) == _files(model_dirs[name])  # weights, config and tokenizer, byte for byte
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= set(_files(again))


def test_cache_reuse_and_lost_race(tmp_path, monkeypatch):
    first = build_tiny_model("tiny-llama", tmp_path)
    monkeypatch.setattr(tiny, "_build_into", lambda *a: pytest.fail("rebuilt a cached model"))
    assert build_tiny_model("tiny-llama", tmp_path) == first
    monkeypatch.undo()

    # Another process finishes the same model while we build: our rename fails, we use theirs.
    real_build_model = tiny._build_model

    def racing_build_model(name, tokenizer, out):
        real_build_model(name, tokenizer, out)
        shutil.copytree(first, tiny.model_dir(name, tmp_path / "race"))

    monkeypatch.setattr(tiny, "_build_model", racing_build_model)
    raced = build_tiny_model("tiny-llama", tmp_path / "race")
    assert _files(raced) == _files(first)
    assert [p.name for p in raced.parent.iterdir()] == [raced.name]  # no temp directory left behind


def test_resolve_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path))
    path = resolve_model("tiny-qwen2")
    assert path.startswith(str(tmp_path / "models" / "tiny-qwen2-"))
    assert resolve_model(path) == path  # a local directory is itself
    assert resolve_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # a hub name, left to transformers
    for missing in ("runs/sft/final", str(tmp_path / "none"), "./final"):  # no folder, no hub name
        with pytest.raises(UserError, match=f"no model at '{re.escape(missing)}': no such folder"):
            resolve_model(missing)
    with pytest.raises(ValueError, match="unknown embedded model"):
        build_tiny_model("tiny-gpt")


def test_architecture_and_size(model_dirs):
    from transformers import AutoConfig

    for name, path in model_dirs.items():
        config = AutoConfig.from_pretrained(path)
        assert config.model_type == name.removeprefix("tiny-")
        assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (128, 4, 4)
        assert (config.head_dim, config.num_key_value_heads, config.max_position_embeddings) == (32, 2, 256)
        assert config.tie_word_embeddings and config.vocab_size <= tiny.VOCAB_SIZE
        assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 2, 3)


@pytest.fixture(scope="module")
def tokenizers(model_dirs):
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(path) for name, path in model_dirs.items()}


def test_tokenizer_round_trips_task_and_arbitrary_text(tokenizers):
    rng = random.Random(0)
    texts = [string.printable, "héllo wörld ✓ 数字", ""]
    for name in task_names():
        task = get_task(name)
        prompt = task.make_prompt(rng)
        texts += [prompt, task.solve(prompt), task.corrupt(prompt, task.solve(prompt), rng)]
    for tokenizer in tokenizers.values():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(ids) == text
    # Task text is compact: a prompt and its answer stay far below the 256 positions.
    tokenizer = tokenizers["tiny-qwen2"]
    assert len(tokenizer("sort: 7 2 9 4 1 5")["input_ids"]) < 24
    assert tokenizer.convert_ids_to_tokens(tokenizer("7 2")["input_ids"]) == [
        "7",
        "Ġ",
        "2",
    ]  # a digit, a token


def test_both_architectures_tokenize_identically(tokenizers):
    # transformers rebuilds a qwen2 tokenizer as Qwen2Tokenizer, a llama one from tokenizer.json.
    qwen, llama = tokenizers["tiny-qwen2"], tokenizers["tiny-llama"]
    for text in ["sort: 7 2 9 4", "evens: 3 8 2 5 6", string.printable, "<|user|>x<|end|>"]:
        assert qwen(text)["input_ids"] == llama(text)["input_ids"]
    assert len(qwen) == len(llama) and qwen.all_special_tokens == llama.all_special_tokens


def test_special_tokens_and_chat_template(tokenizers):
    tokenizer = tokenizers["tiny-llama"]
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token) == (
        "<|pad|>",
        "<|end|>",
        "<|bos|>",
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "sort: 3 1 2"},
        {"role": "assistant", "content": "1 2 3"},
        {"role": "user", "content": "sort: 2 1"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|bos|><|system|>Be brief.<|end|><|user|>sort: 3 1 2<|end|><|assistant|>1 2 3<|end|>"
        "<|user|>sort: 2 1<|end|><|assistant|>"
    )
    assert not tokenizer.apply_chat_template(messages, tokenize=False).endswith("<|assistant|>")
    ids = tokenizer.apply_chat_template(messages[:2], tokenize=True)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Be brief.sort: 3 1 2"
    with pytest.raises(Exception, match="unknown chat role"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)
