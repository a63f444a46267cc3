"""Token batches of the supervised learners: examples of token ids -> padded tensors.

An example travels from the driver as plain lists of token ids (cheap to ship through Ray):
`{"prompt_ids", "response_ids"}` for SFT, `{"prompt_ids", "chosen_ids", "rejected_ids"}` for
preference pairs. Rows are right-padded: for a causal LM the padding then comes after every real
token and changes nothing they attend to, and a reward head finds the last real token before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor


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
        input_ids[i, :n] = torch.tensor([*prompt, *response], dtype=torch.long)
        attention_mask[i, :n] = 1
        response_mask[i, n_p:n] = 1
    return TokenBatch(input_ids, attention_mask, response_mask)


def sft_batch(examples: Sequence[dict], pad_id: int) -> TokenBatch:
    """SFT examples -> one batch; the loss is taken where `response_mask` is 1 (prompts masked)."""
    return pad_rows([(e["prompt_ids"], e["response_ids"]) for e in examples], pad_id)


def pair_batch(examples: Sequence[dict], pad_id: int) -> TokenBatch:
    """Preference pairs -> one batch of 2N rows: the N chosen responses, then the N rejected."""
    rows = [(e["prompt_ids"], e["chosen_ids"]) for e in examples]
    rows += [(e["prompt_ids"], e["rejected_ids"]) for e in examples]
    return pad_rows(rows, pad_id)


def next_token_targets(batch: TokenBatch) -> tuple[Tensor, Tensor]:
    """Targets and mask of next-token prediction: position t of the logits predicts token t+1.

    Returns `labels` (B, T-1) = input_ids[:, 1:] and `mask` (B, T-1), 1 where that label is a
    response token. So the loss counts exactly the response tokens and never a prompt token or pad.
    """
    return batch.input_ids[:, 1:], batch.response_mask[:, 1:]
