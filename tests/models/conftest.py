"""The embedded models, built once per session (into the cache the root conftest chose)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def model_dirs():
    """{name: directory} of every embedded model."""
    from tandem.models.tiny import EMBEDDED_MODELS, build_tiny_model

    return {name: build_tiny_model(name) for name in EMBEDDED_MODELS}
