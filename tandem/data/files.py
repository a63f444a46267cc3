"""User data files (JSONL or Parquet) read with `datasets`, validated and normalised.

Three kinds, each accepted in plain-text or chat form:

- "rl":    `prompt` (a string, or a list of `{role, content}` messages).
- "sft":   `prompt` + `response` (or `completion`); or a `messages` conversation whose last message
           is the assistant's answer.
- "pairs": `prompt` + `chosen` + `rejected`; or TRL style, where `chosen` and `rejected` are whole
           conversations ending with the assistant's answer and `prompt` may be absent (the shared
           turns before the answer are then the prompt).

Every record comes out the same way: `prompt` as chat messages (list of dicts), `response`,
`chosen`, `rejected` as plain strings. A bad row is a UserError naming the file, the 1-based row
and the column, so a user can fix their data without reading a traceback.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from tandem.data.chat import ROLES
from tandem.errors import UserError

Kind = Literal["rl", "sft", "pairs"]
KINDS: dict[str, tuple[str, ...]] = {
    "rl": ("prompt",),
    "sft": ("prompt", "response"),
    "pairs": ("prompt", "chosen", "rejected"),
}
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class _RowError(Exception):
    """A problem in one column of one row; turned into a UserError with file and row attached."""

    def __init__(self, column: str, problem: str) -> None:
        super().__init__(f"column {column!r} {problem}")


def _messages(value: Any, column: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _RowError(column, f"must be a string or a non-empty list of messages, got {_kind(value)}")
    messages = []
    for i, message in enumerate(value):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise _RowError(
                column,
                f"message {i + 1} must be {{'role': one of {list(ROLES)}, 'content': str}}, got {message!r}",
            )
        messages.append({"role": role, "content": content})
    return messages


def _kind(value: Any) -> str:
    return "nothing (missing or null)" if value is None else type(value).__name__


def _prompt(value: Any, column: str = "prompt") -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages = _messages(value, column)
    if messages[-1]["role"] == "assistant":
        raise _RowError(column, "must end with a user (or system) message, not the assistant's")
    return messages


def _split_conversation(value: Any, column: str) -> tuple[list[dict], str]:
    """(turns before the answer, the answer) of a conversation ending with the assistant's turn."""
    messages = _messages(value, column)
    if messages[-1]["role"] != "assistant":
        raise _RowError(column, "must end with an assistant message (the answer)")
    return messages[:-1], messages[-1]["content"]


def _answer(value: Any, column: str) -> tuple[list[dict] | None, str]:
    """An answer given as text, or as a conversation ending with it (prefix returned too)."""
    if isinstance(value, str):
        return None, value
    if value is None:
        raise _RowError(column, "is missing")
    return _split_conversation(value, column)


def _rl(row: dict) -> dict:
    if row.get("prompt") is None:
        raise _RowError("prompt", "is missing")
    return {"prompt": _prompt(row["prompt"])}


def _sft(row: dict) -> dict:
    if row.get("prompt") is None and row.get("messages") is not None:
        prefix, response = _split_conversation(row["messages"], "messages")
        return {"prompt": _prompt(prefix, "messages"), "response": response}
    if row.get("prompt") is None:
        raise _RowError("prompt", "is missing (and there is no 'messages' column)")
    column = "response" if row.get("response") is not None or row.get("completion") is None else "completion"
    _, response = _answer(row.get(column), column)
    return {"prompt": _prompt(row["prompt"]), "response": response}


def _pairs(row: dict) -> dict:
    chosen_prefix, chosen = _answer(row.get("chosen"), "chosen")
    rejected_prefix, rejected = _answer(row.get("rejected"), "rejected")
    if row.get("prompt") is not None:
        prompt = _prompt(row["prompt"])
    elif chosen_prefix:  # TRL implicit prompt: both conversations share it
        if rejected_prefix != chosen_prefix:
            raise _RowError(
                "rejected", "must start with the same turns as 'chosen' when there is no 'prompt'"
            )
        prompt = _prompt(chosen_prefix, "chosen")
    else:
        raise _RowError("prompt", "is missing (and 'chosen' is not a conversation that contains it)")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


_NORMALISERS = {"rl": _rl, "sft": _sft, "pairs": _pairs}


def _bad_json_line(path: Path) -> str:
    """Where a JSON Lines file first fails to parse (or that it is empty): messages `datasets`
    does not give."""
    rows = 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                rows += 1
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as err:
                    return f"row {number}: invalid JSON ({err.msg})"
                if not isinstance(value, dict):
                    return f"row {number}: expected a JSON object, got {type(value).__name__}"
    return "" if rows else "the file has no rows"


def _read_rows(path: Path) -> list[dict]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only: never reach the hub
    import datasets

    builder = _BUILDERS[path.suffix.lower()]
    # Pre-check JSON Lines ourselves: the row number of a syntax error is what a user needs.
    if path.suffix.lower() == ".jsonl" and (problem := _bad_json_line(path)):
        raise UserError(f"{path}: {problem}")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file has no rows")
    # A throwaway cache: the rows end up in Python lists anyway, and a shared cache would keep an
    # Arrow copy of every file a user ever tried.
    with tempfile.TemporaryDirectory(prefix="tandem-datasets-") as cache_dir:
        try:
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir)
        except Exception as err:  # arrow/json/parquet errors vary by version; the user needs the file named
            cause = err.__cause__ or err
            raise UserError(f"{path}: cannot read as {builder}: {type(cause).__name__}: {cause}") from err
        return dataset.to_list()


def load_data_file(path: str | os.PathLike, kind: Kind) -> list[dict]:
    """Read a local `.jsonl`, `.json` or `.parquet` file of kind "rl", "sft" or "pairs".

    Returns normalised records: `{"prompt": [messages]}` plus `"response"` (sft) or `"chosen"` and
    `"rejected"` (pairs), all strings. UserError for a missing file, an unsupported extension, an
    unknown kind, an empty file, or a malformed row (file, 1-based row and column named).
    """
    if kind not in KINDS:
        raise UserError(f"unknown data kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    if path.suffix.lower() not in _BUILDERS:
        raise UserError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(_BUILDERS)}")
    rows = _read_rows(path)
    if not rows:
        raise UserError(f"{path}: the file has no rows")
    records = []
    for number, row in enumerate(rows, 1):
        try:
            records.append(_NORMALISERS[kind](row))
        except _RowError as err:
            raise UserError(
                f"{path}: row {number}: {err} (kind {kind!r} expects {_expected(kind)})"
            ) from None
    return records


def _expected(kind: str) -> str:
    columns = " + ".join(repr(c) for c in KINDS[kind])
    alternatives = {"sft": " or 'messages'", "pairs": " (or conversations in 'chosen'/'rejected')"}
    return columns + alternatives.get(kind, "")
