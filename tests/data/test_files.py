"""User data files: JSONL and Parquet, plain and chat formats, and errors that name file, row, column."""

from __future__ import annotations

import json

import pytest

from tandem.data.files import load_data_file
from tandem.errors import UserError

USER = [{"role": "user", "content": "sort: 3 1 2"}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_jsonl_plain_text_all_kinds(tmp_path):
    rl = load_data_file(_jsonl(tmp_path / "rl.jsonl", [{"prompt": "sort: 3 1 2", "extra": 1}]), "rl")
    assert rl == [{"prompt": USER}]
    sft = load_data_file(
        _jsonl(tmp_path / "sft.jsonl", [{"prompt": "sort: 3 1 2", "response": "1 2 3"}]), "sft"
    )
    assert sft == [{"prompt": USER, "response": "1 2 3"}]
    pairs = _jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": "sort: 3 1 2", "chosen": "1 2 3", "rejected": "1 3 2"}]
    )
    assert load_data_file(pairs, "pairs") == [{"prompt": USER, "chosen": "1 2 3", "rejected": "1 3 2"}]


def test_json_array_file(tmp_path):
    path = tmp_path / "sft.json"
    path.write_text(json.dumps([{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]))
    assert [r["response"] for r in load_data_file(path, "sft")] == ["b", "d"]


def test_parquet_and_chat_prompts(tmp_path):
    system = [{"role": "system", "content": "Be brief."}] + USER
    rows = [
        {"prompt": system, "chosen": "1 2 3", "rejected": "3 2 1"},
        {"prompt": USER, "chosen": "1 2 3", "rejected": "1 2"},
    ]
    records = load_data_file(_parquet(tmp_path / "pairs.parquet", rows), "pairs")
    assert records[0] == {"prompt": system, "chosen": "1 2 3", "rejected": "3 2 1"}
    assert records[1]["prompt"] == USER
    sft = load_data_file(_parquet(tmp_path / "sft.parquet", [{"prompt": "hi", "response": "yo"}] * 3), "sft")
    assert sft == [{"prompt": [{"role": "user", "content": "hi"}], "response": "yo"}] * 3


def test_trl_style_pairs_without_prompt(tmp_path):
    answer = lambda text: USER + [{"role": "assistant", "content": text}]
    path = _jsonl(tmp_path / "trl.jsonl", [{"chosen": answer("1 2 3"), "rejected": answer("1 3 2")}])
    assert load_data_file(path, "pairs") == [{"prompt": USER, "chosen": "1 2 3", "rejected": "1 3 2"}]
    # Explicit prompt, answers as one-message conversations (TRL's conversational preference format).
    path = _jsonl(
        tmp_path / "trl2.jsonl",
        [{"prompt": USER, "chosen": answer("1 2 3")[-1:], "rejected": answer("x")[-1:]}],
    )
    assert load_data_file(path, "pairs") == [{"prompt": USER, "chosen": "1 2 3", "rejected": "x"}]


def test_sft_messages_and_completion_columns(tmp_path):
    rows = [{"messages": USER + [{"role": "assistant", "content": "1 2 3"}]}]
    assert load_data_file(_jsonl(tmp_path / "m.jsonl", rows), "sft") == [
        {"prompt": USER, "response": "1 2 3"}
    ]
    rows = [{"prompt": "sort: 3 1 2", "completion": "1 2 3"}]
    assert load_data_file(_jsonl(tmp_path / "c.jsonl", rows), "sft") == [
        {"prompt": USER, "response": "1 2 3"}
    ]


@pytest.mark.parametrize(
    ("kind", "rows", "row", "column"),
    [
        (
            "sft",
            [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}, {"prompt": "e"}],
            3,
            "response",
        ),
        ("sft", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": 5}], 2, "response"),
        ("rl", [{"prompt": "a"}, {"question": "b"}], 2, "prompt"),
        ("rl", [{"prompt": [{"role": "robot", "content": "x"}]}], 1, "prompt"),
        ("rl", [{"prompt": USER + [{"role": "assistant", "content": "x"}]}], 1, "prompt"),
        (
            "pairs",
            [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}],
            2,
            "rejected",
        ),
        ("pairs", [{"chosen": "b", "rejected": "c"}], 1, "prompt"),
        ("sft", [{"messages": USER}], 1, "messages"),  # no assistant answer at the end
    ],
)
def test_malformed_rows_name_file_row_and_column(tmp_path, kind, rows, row, column):
    path = _jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(UserError) as err:
        load_data_file(path, kind)
    message = str(err.value)
    assert str(path) in message and f"row {row}:" in message and f"column {column!r}" in message


def test_trl_pairs_with_different_prompts_are_rejected(tmp_path):
    chosen = USER + [{"role": "assistant", "content": "1 2 3"}]
    rejected = [{"role": "user", "content": "other"}, {"role": "assistant", "content": "x"}]
    path = _jsonl(tmp_path / "bad.jsonl", [{"chosen": chosen, "rejected": rejected}])
    with pytest.raises(UserError, match=r"row 1: column 'rejected'"):
        load_data_file(path, "pairs")


def test_file_level_errors(tmp_path):
    with pytest.raises(UserError, match="not found.*missing.jsonl"):
        load_data_file(tmp_path / "missing.jsonl", "rl")
    (tmp_path / "data.csv").write_text("prompt\na\n")
    with pytest.raises(UserError, match=r"data.csv.*unsupported.*\.csv"):
        load_data_file(tmp_path / "data.csv", "rl")
    good = _jsonl(tmp_path / "ok.jsonl", [{"prompt": "a"}])
    with pytest.raises(UserError, match="unknown data kind 'dpo'"):
        load_data_file(good, "dpo")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="empty.jsonl: the file has no rows"):
        load_data_file(tmp_path / "empty.jsonl", "rl")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(UserError, match=r"broken.jsonl: row 2: invalid JSON"):
        load_data_file(tmp_path / "broken.jsonl", "rl")
