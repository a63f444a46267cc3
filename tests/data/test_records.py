"""Records and prompts: where each came from, the prompt-length check, and the batch order (the
step alone says which examples a batch holds, what makes resume exact)."""

from __future__ import annotations

import json

import pytest

from tandem.config import load_config
from tandem.data import prompt_ids
from tandem.data.records import BatchOrder, load_prompts, load_records, tokenize
from tandem.errors import UserError


def _file(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_prompt_over_max_prompt_len_is_an_error_naming_file_and_row(tmp_path, tokenizer):
    path = _file(tmp_path, [{"prompt": "hi", "response": "a"}] * 2 + [{"prompt": "w " * 80, "response": "a"}])
    cfg = load_config("configs/sft.yaml", [f"data.train_files=[{path}]", "model.max_prompt_len=32"])
    records = load_records(cfg, "sft", "train")
    n = len(prompt_ids(tokenizer, records[2]["prompt"]))
    with pytest.raises(
        UserError, match=rf"{path}: row 3: the prompt is {n} tokens .* model.max_prompt_len=32"
    ):
        tokenize(tokenizer, records, cfg)
    with pytest.raises(UserError, match=rf"{path}: row 3: .*data.truncate_prompts=true"):
        load_prompts(cfg)  # the RL path: same check, before any actor starts


def test_truncate_prompts_cuts_from_the_left_with_a_warning(tmp_path, tokenizer, capsys):
    path = _file(tmp_path, [{"prompt": "hi", "response": "a"}, {"prompt": "w " * 80, "response": "a"}])
    cfg = load_config(
        "configs/sft.yaml",
        [f"data.train_files=[{path}]", "model.max_prompt_len=32", "data.truncate_prompts=true"],
    )
    records = load_records(cfg, "sft", "train")
    short, long = tokenize(tokenizer, records, cfg)
    assert short["prompt_ids"] == prompt_ids(tokenizer, "hi")
    assert long["prompt_ids"] == prompt_ids(tokenizer, "w " * 80)[-32:]  # keeps the assistant header
    assert "1 prompt(s) over model.max_prompt_len=32 tokens are cut" in capsys.readouterr().err
    assert load_prompts(cfg) == [r["prompt"] for r in records]


def test_a_built_in_task_prompt_over_the_limit_names_the_task_and_example():
    cfg = load_config("configs/ppo.yaml", ["model.max_prompt_len=4", "data.num_train=8"])
    with pytest.raises(UserError, match=r"data.task 'sort' \(train\): example 1: the prompt is \d+ tokens"):
        load_prompts(cfg)


def test_each_epoch_covers_every_full_batch_once_and_reshuffles():
    order = BatchOrder(n_examples=10, global_batch=3, epochs=2, max_steps=None, seed=1)
    assert (order.steps_per_epoch, order.total_steps) == (3, 6)
    epochs = [[i for s in range(e * 3, e * 3 + 3) for i in order.indices(s)] for e in (0, 1)]
    for seen in epochs:
        assert len(seen) == len(set(seen)) == 9  # the last partial batch (one example) is dropped
    assert epochs[0] != epochs[1]
    again = BatchOrder(10, 3, 2, None, seed=1)
    assert [again.indices(s) for s in range(6)] == [order.indices(s) for s in range(6)]


def test_max_steps_and_too_few_examples():
    assert BatchOrder(10, 3, 5, max_steps=4, seed=0).total_steps == 4
    with pytest.raises(UserError, match="fewer than one global batch"):
        BatchOrder(2, 3, 1, None, seed=0)
