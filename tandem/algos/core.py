"""Masked reductions over padded token tensors, and per-token quantities read off logits.

Masks are 0/1 (bool or any numeric dtype), 1 on the tokens that count. Padded positions may hold
anything, even inf or nan: they are selected away with ``torch.where``, never multiplied by 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Keeps whitening finite when every masked value is equal.
WHITEN_EPS = 1e-8


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over positions where ``mask`` is 1, over all dims or along ``dim``."""
    kept = torch.where(mask.bool(), x, 0.0)
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1; 0 where nothing is masked in.

    With ``dim=None`` this is the token mean over the whole batch, which weights every token
    equally (long responses count more), the convention of the PPO losses below.
    """
    count = masked_sum(torch.ones_like(x), mask, dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked entries of ``x`` (all dims), Bessel-corrected if ``unbiased``.

    Raises ValueError if ``unbiased`` and fewer than two entries are masked in, where the
    corrected variance is undefined.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        count = mask.bool().sum()
        if count < 2:
            raise ValueError(f"unbiased masked variance needs at least 2 masked-in entries, got {int(count)}")
        var = var * count / (count - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """``(x - mean) / sqrt(var + 1e-8)`` with the masked mean and unbiased masked variance.

    With ``shift_mean=False`` the mean is added back, so only the scale changes. Entries where
    ``mask`` is 0 are set to 0, so the result can be summed without masking again.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0.0)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """``1 - Var[R - V] / Var[R]`` over masked tokens: 1 is a perfect critic, 0 a constant one.

    The diagnostic of OpenAI baselines' ``explained_variance``. Returns nan when the returns have
    no variance. A 0-dim tensor.
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    var_residual = masked_var(returns - values, mask, unbiased=False)
    nan = torch.full_like(var_returns, float("nan"))
    return torch.where(var_returns > 0, 1.0 - var_residual / var_returns, nan)


def _at_least_float32(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax over the last dim, (..., V) -> (...).

    Uses ``H = logsumexp(z) - sum_v softmax(z)_v z_v``, which never takes the log of a
    probability, so it stays finite for very peaked logits. The logits are first shifted so
    their max is 0, which keeps the two terms small for very large logits, where their
    difference would otherwise cancel to float32 rounding error. (For half-precision logits a
    learner wants ``logprobs_and_entropy``, which upcasts one sequence at a time.)
    """
    logits = _at_least_float32(logits)
    logits = logits - logits.amax(dim=-1, keepdim=True).detach()
    probs = torch.softmax(logits, dim=-1)
    # A -inf logit (a masked token) has probability 0 and adds nothing, not 0 * -inf = nan.
    return torch.logsumexp(logits, dim=-1) - torch.where(probs == 0, 0.0, probs * logits).sum(-1)


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """``log softmax(logits)[labels]``, (B, T, V) and (B, T) -> (B, T), computed in float32 or wider.

    For float32/64 logits it gathers the label logit and subtracts ``logsumexp``, so no (B, T, V)
    log-softmax is materialised. Half-precision logits are upcast one sequence at a time, so the
    float32 copy is (T, V) rather than (B, T, V).
    """
    if logits.dtype in (torch.float32, torch.float64):
        label_logits = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        return label_logits - torch.logsumexp(logits, dim=-1)
    rows = [
        row.float().log_softmax(-1).gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)
        for row, row_labels in zip(logits, labels, strict=True)
    ]
    return torch.stack(rows)


def logprobs_and_entropy(logits: Tensor, labels: Tensor, entropy_grad: bool = True) -> tuple[Tensor, Tensor]:
    """``(logprobs_from_logits(logits, labels), entropy_from_logits(logits))`` in one pass per sequence.

    A learner needs both from the same logits. For half-precision logits each full-vocabulary pass
    costs about as much GPU time as the matmuls of a layer at a 151k vocabulary, so each sequence is
    upcast once and its entropy, ``-sum_v p_v log p_v``, reuses the log-softmax that its logprobs take.
    Float32/64 logits go through the two functions above unchanged (no (B, T, V) copy is made there).
    With ``entropy_grad=False`` (the entropy only a metric) the entropy carries no graph.
    """
    if logits.dtype in (torch.float32, torch.float64):
        return logprobs_from_logits(logits, labels), entropy_from_logits(
            logits if entropy_grad else logits.detach()
        )
    pairs = [
        _row_logprobs_and_entropy(row.float(), row_labels, entropy_grad)
        for row, row_labels in zip(logits, labels, strict=True)
    ]
    return torch.stack([lp for lp, _ in pairs]), torch.stack([h for _, h in pairs])


def _row_logprobs_and_entropy(logits: Tensor, labels: Tensor, entropy_grad: bool) -> tuple[Tensor, Tensor]:
    logp = logits.log_softmax(-1)
    logprobs = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    source = logp if entropy_grad else logp.detach()
    # exp(log p) * log p is 0 * -inf = nan where a logit is -inf (a masked token): it adds nothing.
    entropy = -torch.where(source.isneginf(), 0.0, source.exp() * source).sum(-1)
    return logprobs, entropy
