"""Token-id lists -> padded tensors, and per-token response logprobs of an HF causal LM.

"The logprob of response token t" must mean the same thing in every role: log p(response[t] |
prompt, response[:t]), one value per response token, the layout vLLM returns for sampled tokens
(`SamplingParams(logprobs=0)`). So this module adds no math of its own: it reuses the learners'
padding (`tandem.learners.batching.pad_rows`) and forward (`tandem.learners.sft.token_logprobs`),
and only reshapes their result into ragged per-response lists for actors that answer the driver.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tandem.learners.batching import pad_rows
from tandem.learners.sft import token_logprobs


def pad_sequences(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Each prompt + its response, right-padded: `(input_ids, attention_mask, response_mask)`, all
    (B, T) int64; `response_mask` is 1 exactly on response tokens. Right padding keeps position ids
    equal to token indices, so causal LMs need no position bookkeeping."""
    batch = pad_rows(_rows(prompt_ids, response_ids), pad_id)
    return batch.input_ids, batch.attention_mask, batch.response_mask


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
    response token (empty for an empty response); `batch_size` sequences per forward."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    device = next(model.parameters()).device
    out: list[list[float]] = []
    for start in range(0, len(prompt_ids), batch_size):
        rows = _rows(prompt_ids[start:start + batch_size], response_ids[start:start + batch_size])
        batch = pad_rows(rows, pad_id).to(device)
        logprobs, mask = token_logprobs(model, batch)  # (B, T-1) each
        for row, row_mask in zip(logprobs.float().cpu(), mask.bool().cpu()):
            out.append(row[row_mask].tolist())
    return out
