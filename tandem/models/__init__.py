"""Embedded tiny models and the loaders for policies, reward models and value models."""

from tandem.models.loading import load_causal_lm, load_reward_model, load_tokenizer, load_value_model
from tandem.models.tiny import EMBEDDED_MODELS, build_tiny_model, resolve_model

__all__ = [
    "EMBEDDED_MODELS",
    "build_tiny_model",
    "load_causal_lm",
    "load_reward_model",
    "load_tokenizer",
    "load_value_model",
    "resolve_model",
]
