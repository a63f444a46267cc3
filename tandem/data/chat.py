"""Tokenization helpers shared by every trainer: a prompt is rendered with the model's chat template,
a response is its plain text tokens plus EOS.

Keeping prompt and response token ids separate (rather than tokenizing the rendered conversation)
means the response's ids are exactly the ids a generator samples, so logprobs line up across vLLM,
the learner and the reference model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ROLES = ("system", "user", "assistant")


def as_messages(prompt: str | Sequence[Mapping[str, Any]]) -> list[dict]:
    """A prompt as chat messages: a string becomes one user turn; messages are copied as
    `{"role", "content"}` dicts (other keys dropped)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = []
    for message in prompt:
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"a chat message needs 'role' and 'content', got {message!r}")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def prompt_text(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    """The text a string-based reward function sees for a prompt: the last user turn's content."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def _ids(encoded: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); older ones a
    # list. Accept either, and a batch of one.
    if isinstance(encoded, Mapping):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], list):
        (encoded,) = encoded
    return [int(i) for i in encoded]


def prompt_ids(tokenizer: Any, messages: str | Sequence[Mapping[str, Any]]) -> list[int]:
    """Token ids of the prompt rendered by the chat template, ending with the assistant header."""
    encoded = tokenizer.apply_chat_template(as_messages(messages), add_generation_prompt=True, tokenize=True)
    return _ids(encoded)


def response_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a response: its text without special tokens, then EOS (where generation stops)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; responses could never end")
    return _ids(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
