"""Chat helpers: prompt ids from the chat template, response ids with EOS, message normalisation."""

from __future__ import annotations

import pytest

from tandem.data.chat import as_messages, prompt_ids, prompt_text, response_ids


def test_as_messages_and_prompt_text():
    assert as_messages("hi") == [{"role": "user", "content": "hi"}]
    messages = [{"role": "system", "content": "s", "name": "x"}, {"role": "user", "content": "u"}]
    assert as_messages(messages) == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert prompt_text(messages) == "u" and prompt_text("plain") == "plain"
    with pytest.raises(ValueError, match="role"):
        as_messages([{"content": "no role"}])


def test_prompt_ids_are_a_plain_list_ending_with_the_assistant_header(tokenizer):
    ids = prompt_ids(tokenizer, "sort: 3 1 2")
    assert type(ids) is list and all(type(i) is int for i in ids)
    assert ids == prompt_ids(tokenizer, [{"role": "user", "content": "sort: 3 1 2"}])
    assert tokenizer.decode(ids) == "<|bos|><|user|>sort: 3 1 2<|end|><|assistant|>"


def test_response_ids_end_with_eos_and_join_the_prompt_like_the_template(tokenizer):
    ids = response_ids(tokenizer, "1 2 3")
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.decode(ids[:-1]) == "1 2 3"
    # Prompt ids + response ids are exactly the rendered conversation: what vLLM samples is what
    # the learner scores.
    conversation = [{"role": "user", "content": "sort: 3 1 2"}, {"role": "assistant", "content": "1 2 3"}]
    full = tokenizer.apply_chat_template(conversation, tokenize=True)["input_ids"]
    assert prompt_ids(tokenizer, "sort: 3 1 2") + ids == list(full)
