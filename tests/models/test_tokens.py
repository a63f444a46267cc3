"""Next-token logits and logprobs over right-padded rows: the positions before the first response
token of any row are never computed at the LM head."""

from __future__ import annotations

import torch

from tandem.models import load_causal_lm
from tandem.models.tokens import causal_logits, first_target, next_token_targets, pad_rows, token_logprobs


@torch.no_grad()
def test_logits_start_at_the_shortest_prompts_last_token_and_equal_the_full_forwards():
    model = load_causal_lm("tiny-qwen2").eval()
    # Prompts of 4 and 3 tokens, width 7: position 2 (the second prompt's last token) is the first to
    # predict a response token.
    batch = pad_rows([([2, 6, 40, 41], [50, 51, 3]), ([2, 6, 7], [52, 3])], 0)
    assert first_target(batch) == 2
    widths = []
    hook = model.lm_head.register_forward_hook(lambda _m, args, _out: widths.append(args[0].shape[1]))
    logits = causal_logits(model, batch, 2)
    hook.remove()
    assert widths == [5]  # positions 2-6 of 7 reach the LM head
    full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(logits, full[:, 2:-1], rtol=1e-5, atol=1e-5)
    logprobs, mask = token_logprobs(model, batch)
    labels, full_mask = next_token_targets(batch)
    expected = full[:, :-1].log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert mask.shape == (2, 4) and mask.sum() == full_mask.sum() == 5
    torch.testing.assert_close(logprobs[mask.bool()], expected[full_mask.bool()], rtol=1e-5, atol=1e-5)
