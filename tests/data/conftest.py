"""A tokenizer for the chat helpers' tests: the embedded one, built into the session's cache."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from tandem.models import load_tokenizer

    return load_tokenizer("tiny-qwen2")
