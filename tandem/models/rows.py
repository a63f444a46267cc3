"""`Rows`: a rollout batch as named arrays, the form in which it travels between the PPO roles.

The driver puts one `Rows` in Ray's object store per step and passes the reference; the reference
actor and each learner rank read the rows they are given (by index) from it. The arrays are numpy
inside: on one node a reader maps them from the object store without a copy, and no per-token Python
list is ever built.

Two layouts share the first dimension, one row per sampled response:
  - token layout (B, T): `input_ids`, `attention_mask`, `response_mask`, prompt then response,
    right-padded (a `TokenBatch`);
  - rollout layout (B, R): `mask` (1 on response tokens) and one value per response token, left-
    aligned, as vLLM returns sampled-token logprobs (`behaviour_logprobs`, `advantages`, ...).
`at_targets` and `from_targets` move values between the rollout layout and the (B, T-1) positions
of next-token prediction: both list a row's response tokens in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tandem.models.tokens import TokenBatch, pad_rows, token_logprobs

TOKEN_KEYS = ("input_ids", "attention_mask", "response_mask")


class Rows:
    """Named arrays with a common first dimension; `rows[key]` is a tensor, `rows.select(index)` and
    `rows[start:stop]` new `Rows` cut to the widest row they hold."""

    def __init__(self, **arrays: Any) -> None:
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) > 1:
            raise ValueError(f"rows of unequal count: { {k: len(a) for k, a in arrays.items()} }")
        self._arrays = arrays

    @classmethod
    def from_ids(
        cls,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        pad_id: int,
        **per_token: Tensor,
    ) -> Rows:
        """Token layout from id lists, plus `mask` and any (B, R) per-token tensors."""
        tokens = pad_rows(list(zip(prompt_ids, response_ids)), pad_id)
        width = max((len(r) for r in response_ids), default=0)
        mask = torch.zeros(len(response_ids), width)
        for i, r in enumerate(response_ids):
            mask[i, : len(r)] = 1
        arrays = {k: _np(t) for k, t in zip(TOKEN_KEYS, tokens)}
        return cls(**arrays, mask=_np(mask), **{k: _np(v) for k, v in per_token.items()})

    def __len__(self) -> int:
        return len(next(iter(self._arrays.values())))

    def __contains__(self, key: str) -> bool:
        return key in self._arrays

    def keys(self) -> list[str]:
        return list(self._arrays)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return torch.as_tensor(self._arrays[key])
        return self.select(key)

    def select(self, index: slice | Sequence[int]) -> Rows:
        """These rows (a copy), with padding columns no selected row uses cut off."""
        idx = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index, dtype=np.int64)
        arrays = {k: np.asarray(a)[idx] for k, a in self._arrays.items()}
        if "attention_mask" in arrays:
            width = int(arrays["attention_mask"].sum(1).max(initial=0))
            arrays |= {k: arrays[k][:, :width] for k in TOKEN_KEYS if k in arrays}
        if "mask" in arrays:
            width = int(arrays["mask"].sum(1).max(initial=0))
            arrays |= {k: a[:, :width] for k, a in arrays.items() if k not in TOKEN_KEYS and a.ndim == 2}
        return Rows(**arrays)

    def length_groups(self, min_tokens: int, max_rows: int | None = None) -> list[np.ndarray]:
        """Row indices sorted by length and cut into near-equal groups, one forward each: a batch of
        ragged rows pays for its widest row in every row, and attention for its square, so groups of
        like length compute less (a mid-size policy's forward and backward of 64 rows: 12.2 s as one
        batch, 6.3 s as 4 groups, 6.0 s as 8). As many groups as keep `min_tokens` padded tokens in
        each on average, since small forwards cost more per token; at most 8 times the fewest that
        keep every group within `max_rows` rows."""
        lengths = np.asarray(self._arrays["attention_mask"]).sum(1)
        order = np.argsort(lengths, kind="stable")
        fewest = max(1, -(-len(self) // max_rows)) if max_rows else 1
        best = np.array_split(order, fewest)
        for split in (2, 4, 8):
            groups = np.array_split(order, min(len(self), fewest * split))
            if sum(len(g) * int(lengths[g].max()) for g in groups) < min_tokens * len(groups):
                break
            best = groups
        return best

    def merge(self, other: Rows) -> Rows:
        """The arrays of both (same rows); `other`'s win on a shared name."""
        if len(other) != len(self):
            raise ValueError(f"cannot merge {len(other)} rows into {len(self)}")
        return Rows(**(self._arrays | other._arrays))

    def tokens(self, device: torch.device | str = "cpu") -> TokenBatch:
        return TokenBatch(*(self[k].to(device) for k in TOKEN_KEYS))

    def at_targets(self, key: str, target_mask: Tensor) -> Tensor:
        """(B, R) values of `key` placed at the (B, T-1) next-token positions of their tokens, on
        `target_mask`'s device; `target_mask` is `next_token_targets` of these rows' `tokens()`,
        which the caller has at hand (its forward's)."""
        device = target_mask.device
        values = self[key].to(device=device, dtype=torch.float32)
        out = torch.zeros(target_mask.shape, dtype=torch.float32, device=device)
        out[target_mask.bool()] = values[self["mask"].to(device).bool()]
        return out

    def from_targets(self, values: Tensor, target_mask: Tensor) -> np.ndarray:
        """(B, T-1) values at next-token positions (`target_mask`, as in `at_targets`) -> (B, R) in
        the rollout layout (numpy, float32)."""
        mask = self["mask"].bool()
        out = torch.zeros(mask.shape, dtype=torch.float32)
        out[mask] = values[target_mask.bool()].float().cpu()
        return out.numpy()


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def place_rows(parts: Sequence[np.ndarray], groups: Sequence[np.ndarray]) -> np.ndarray:
    """(B_i, R_i) results of the row groups `groups` (`Rows.length_groups`) -> one (B, max R_i)
    array in the rows' own order, right-padded with 0."""
    width = max(p.shape[1] for p in parts)
    out = np.zeros((sum(len(g) for g in groups), width), dtype=parts[0].dtype)
    for part, group in zip(parts, groups, strict=True):
        out[group, : part.shape[1]] = part
    return out


@torch.no_grad()
def model_logprobs(
    model: torch.nn.Module, rows: Rows, device: torch.device, batch_size: int, min_forward_tokens: int
) -> np.ndarray:
    """log p(response[t] | prompt, response[:t]) of every response token of `rows` under `model`, in
    the rollout layout (B, R), no gradient: at most `batch_size` rows per forward, in groups of like
    length (`Rows.length_groups`). The frozen reference's pass, in its own actor or in the policy's."""
    out, groups = [], rows.length_groups(min_forward_tokens, batch_size)
    for group in groups:
        chunk = rows.select(group)
        out.append(chunk.from_targets(*token_logprobs(model, chunk.tokens(device))))
    return place_rows(out, groups)


def concat_rows(parts: Sequence[np.ndarray]) -> np.ndarray:
    """(B_i, R_i) parts -> one (sum B_i, max R_i) array, right-padded with 0 (dtype kept)."""
    width = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in parts])
