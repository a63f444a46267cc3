"""Token-id lists -> padded tensors, and the per-token logprobs of a causal LM over them.

Shared by the learners (training batches), the reward and reference actors and the evaluation, so
"the logprob of response token t" means the same thing in every role: log p(response[t] | prompt,
response[:t]), one value per response token, the layout vLLM returns for sampled tokens
(`SamplingParams(logprobs=0)`).

Rows are right-padded: for a causal LM the padding then comes after every real token and changes
nothing they attend to, position ids stay equal to token indices, and a reward head finds the last
real token before the padding.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from tandem.algos import logprobs_from_logits


class TokenBatch(NamedTuple):
    """Prompt + response rows, right-padded."""

    input_ids: Tensor  # (B, T) prompt then response tokens, then pad_id
    attention_mask: Tensor  # (B, T) 1 on real tokens
    response_mask: Tensor  # (B, T) 1 on response tokens (the ones a loss or logprob counts)

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(*(t.to(device) for t in self))


def truncate(prompt: Sequence[int], response: Sequence[int], max_prompt: int, max_response: int) -> tuple:
    """Keep the last `max_prompt` prompt tokens (the end holds the question and the assistant header)
    and the first `max_response` response tokens."""
    return list(prompt[-max_prompt:]), list(response[:max_response])


def pad_rows(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> TokenBatch:
    """(prompt ids, response ids) pairs -> a right-padded TokenBatch."""
    width = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (prompt, response) in enumerate(rows):
        n_p, n = len(prompt), len(prompt) + len(response)
        # as_tensor: ids may be lists or array/tensor slices (a rollout batch's padded rows).
        input_ids[i, :n_p] = torch.as_tensor(prompt, dtype=torch.long)
        input_ids[i, n_p:n] = torch.as_tensor(response, dtype=torch.long)
        attention_mask[i, :n] = 1
        response_mask[i, n_p:n] = 1
    return TokenBatch(input_ids, attention_mask, response_mask)


def next_token_targets(batch: TokenBatch, start: int = 0) -> tuple[Tensor, Tensor]:
    """Targets and mask of next-token prediction: position t of the logits predicts token t+1.

    Returns `labels` (B, T-1-start) = input_ids[:, start+1:] and `mask` (same shape), 1 where that
    label is a response token: the positions from `start` on (`first_target`). So the loss counts
    exactly the response tokens and never a prompt token or pad.
    """
    return batch.input_ids[:, start + 1 :], batch.response_mask[:, start + 1 :]


def first_target(batch: TokenBatch) -> int:
    """The first position that predicts a response token in any row (the shortest prompt's last
    token): no logit before it is ever read."""
    columns = batch.response_mask[:, 1:].any(0).nonzero()
    return int(columns[0]) if len(columns) else 0


def causal_logits(model: torch.nn.Module, batch: TokenBatch, start: int = 0) -> Tensor:
    """Next-token logits of positions start..T-2, (B, T-1-start, V), aligned with
    `next_token_targets(batch, start)`. A model that takes `logits_to_keep` (transformers' causal
    LMs) computes its LM head on those positions only: with a large vocabulary the prompt's logits
    are much of a forward's memory and time (a DeepSpeed engine passes it on to its module)."""
    width = batch.input_ids.shape[1]
    module = getattr(model, "module", model)  # a DeepSpeed engine's model
    keep = {"logits_to_keep": width - start} if start and takes_logits_to_keep(type(module)) else {}
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, **keep)
    logits = out.logits
    return logits[:, logits.shape[1] - (width - start) : -1]


@functools.cache
def takes_logits_to_keep(model_class: type) -> bool:
    # Once per class: every forward of every pass asks.
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def response_logits(model: torch.nn.Module, batch: TokenBatch) -> tuple[Tensor, Tensor, Tensor]:
    """`causal_logits` from `first_target` on (the positions before it predict prompt tokens only)
    with their `next_token_targets`: (logits (B, T', V), labels (B, T'), mask (B, T'))."""
    start = first_target(batch)
    return causal_logits(model, batch, start), *next_token_targets(batch, start)


def token_logprobs(model: torch.nn.Module, batch: TokenBatch) -> tuple[Tensor, Tensor]:
    """Log-probs of each next token under `model` and the response mask over them, both (B, T'),
    the positions of `response_logits`."""
    logits, labels, mask = response_logits(model, batch)
    return logprobs_from_logits(logits, labels), mask


def _rows(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]) -> list[tuple]:
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if not prompt_ids:
        raise ValueError("no sequences given")
    for i, prompt in enumerate(prompt_ids):
        if not prompt:
            raise ValueError(f"sequence {i} has an empty prompt: its first response token has no context")
    return list(zip(prompt_ids, response_ids))


@torch.no_grad()
def response_logprobs(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 32,
) -> list[list[float]]:
    """Per-token logprobs of each response under `model`: one list per sequence, one float per
    response token (empty for an empty response); `batch_size` sequences per forward. Ragged lists,
    for actors that answer the driver."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    device = next(model.parameters()).device
    out: list[list[float]] = []
    for start in range(0, len(prompt_ids), batch_size):
        rows = _rows(prompt_ids[start : start + batch_size], response_ids[start : start + batch_size])
        batch = pad_rows(rows, pad_id).to(device)
        logprobs, mask = token_logprobs(model, batch)  # (B, T') each
        for row, row_mask in zip(logprobs.float().cpu(), mask.bool().cpu()):
            out.append(row[row_mask].tolist())
    return out
