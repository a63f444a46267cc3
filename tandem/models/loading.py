"""Load tokenizers and the three kinds of model an RLHF run needs, from a path or embedded name.

Every loader goes through `resolve_model`, so "tiny-qwen2" works wherever a checkpoint path does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from tandem.errors import UserError
from tandem.models.tiny import WHAT_IS_A_MODEL, resolve_model

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Dtype = Literal["float32", "bfloat16", "float16"]
T = TypeVar("T")


def _from_pretrained(path: str, load: Callable[[str], T]) -> T:
    """`load(path)`, with a model that is not there told as the user's mistake, in one paragraph: a
    folder without an HF save in it (a run's folder, not its final/), or a path that is no folder
    here and that the hub did not give (a mistyped local folder such as `models/sft` reads as the
    hub name 'owner/name', and transformers' answer is a traceback about connecting to the hub)."""
    folder = Path(path)
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise UserError(f"no model in {path!r}: it holds no config.json; {WHAT_IS_A_MODEL}")
    try:
        return load(path)
    except OSError as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
        where = (
            "" if folder.is_dir() else f"no such folder here ({Path.cwd()}), and the hub did not give one: "
        )
        raise UserError(f"no model at {path!r}: {where}{reason}; {WHAT_IS_A_MODEL}") from None


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}") from None


def load_tokenizer(path: str, padding_side: Literal["left", "right"] = "left") -> PreTrainedTokenizerBase:
    """The tokenizer of a checkpoint, with a pad token guaranteed (EOS if it has none).

    Left padding by default: a batch of prompts then ends at the same position, which generation
    needs, and the last token of every row sits at index -1, which is where trainers read the
    reward and the last value. For RoPE models (Qwen2, Llama) the shift does not change the
    attention between real tokens, so logprobs match the unpadded sequence.
    """
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(resolve_model(path), AutoTokenizer.from_pretrained)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {path!r} has neither a pad nor an EOS token")
        # A fallback only: with pad == EOS a reward head that skips padding also skips the final
        # EOS. The embedded models have a distinct <|pad|>.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _head_config(path: str, **overrides: Any) -> Any:
    """The checkpoint's config set up for a 1-output head, with the tokenizer's pad id."""
    from transformers import AutoConfig

    config = _from_pretrained(path, AutoConfig.from_pretrained)
    config.num_labels = 1
    config.pad_token_id = load_tokenizer(path).pad_token_id
    for key, value in overrides.items():
        # Set on the config, not passed to from_pretrained: transformers 5 hands unknown kwargs to
        # the model's __init__, which rejects them.
        setattr(config, key, value)
    return config


def load_causal_lm(path: str, dtype: Dtype | torch.dtype = "float32", **kwargs: Any) -> PreTrainedModel:
    """A causal LM (the policy, or the reference model) in `dtype`."""
    from transformers import AutoModelForCausalLM

    return _from_pretrained(
        resolve_model(path),
        lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=_torch_dtype(dtype), **kwargs),
    )


def load_reward_model(path: str, dtype: Dtype | torch.dtype = "float32", **kwargs: Any) -> PreTrainedModel:
    """A scalar reward model: the LM body with a 1-output head read at the last non-pad token.

    From a causal LM checkpoint the head starts random (the caller seeds torch); from a trained
    reward model checkpoint it is loaded. `pad_token_id` is set so batched scoring finds the
    last real token under either padding side.
    """
    from transformers import AutoModelForSequenceClassification

    path = resolve_model(path)
    config = kwargs.pop("config", None) or _head_config(path)
    return AutoModelForSequenceClassification.from_pretrained(
        path, config=config, dtype=_torch_dtype(dtype), **kwargs
    )


def load_value_model(path: str, dtype: Dtype | torch.dtype = "float32", **kwargs: Any) -> PreTrainedModel:
    """A per-token value model (the PPO critic): the LM body with a 1-output head at every position.

    Output `.logits` has shape (B, T, 1). The head's dropout is off (transformers defaults it to
    0.1): a stochastic critic would add noise to advantages and to the value loss's clipping.
    """
    from transformers import AutoModelForTokenClassification

    path = resolve_model(path)
    config = kwargs.pop("config", None) or _head_config(path, classifier_dropout=0.0)
    return AutoModelForTokenClassification.from_pretrained(
        path, config=config, dtype=_torch_dtype(dtype), **kwargs
    )
