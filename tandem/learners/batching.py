"""Token batches of the supervised learners: examples of token ids -> padded tensors.

An example travels from the driver as plain lists of token ids (cheap to ship through Ray):
`{"prompt_ids", "response_ids"}` for SFT, `{"prompt_ids", "chosen_ids", "rejected_ids"}` for
preference pairs. Padding is `tandem.models.tokens.pad_rows` (right-padded), shared with the actors.
"""

from __future__ import annotations

from collections.abc import Sequence

from tandem.models.tokens import TokenBatch, pad_rows


def sft_batch(examples: Sequence[dict], pad_id: int) -> TokenBatch:
    """SFT examples -> one batch; the loss is taken where `response_mask` is 1 (prompts masked)."""
    return pad_rows([(e["prompt_ids"], e["response_ids"]) for e in examples], pad_id)


def pair_batch(examples: Sequence[dict], pad_id: int) -> TokenBatch:
    """Preference pairs -> one batch of 2N rows: the N chosen responses, then the N rejected."""
    rows = [(e["prompt_ids"], e["chosen_ids"]) for e in examples]
    rows += [(e["prompt_ids"], e["rejected_ids"]) for e in examples]
    return pad_rows(rows, pad_id)
