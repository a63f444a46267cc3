"""What rollout engines answer: `Sample`s (one per response, lists) for generation and evaluation, and
`SampleBatch` (arrays) for PPO, whose batches must not cross processes as per-token Python objects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tandem.models.rows import Rows


@dataclass
class Sample:
    """One sampled response. Lists, not tensors: lengths differ per sample; P = prompt tokens,
    R = response tokens (EOS included when the response stopped on it)."""

    prompt_ids: list[int]  # (P,) after left-truncation to model.max_prompt_len
    response_ids: list[int]  # (R,)
    logprobs: list[float]  # (R,) logprob of each sampled token under the sampling weights (raw logits)
    response_text: str  # the response decoded, special tokens (EOS) skipped
    finish_reason: str  # "stop" (EOS or a stop token) or "length" (hit max_response_len)
    weight_version: int  # engine weight version the sample was drawn with (0 = initial weights)
    prompt_index: int  # index of its prompt in the request; a prompt's n samples are adjacent


@dataclass
class SampleBatch:
    """One engine's samples for one request, as arrays (N samples, R = its longest response): what
    PPO's engines answer, so no per-token Python object crosses between processes."""

    response_ids: np.ndarray  # (N, R) int64, 0 after each response's end
    logprobs: np.ndarray  # (N, R) float32, the sampled tokens' logprobs under the sampling weights
    lengths: np.ndarray  # (N,) response lengths
    prompt_index: np.ndarray  # (N,) index of each sample's prompt in the whole request
    truncated: np.ndarray  # (N,) bool: hit max_response_len without EOS
    texts: list[str]  # (N,) decoded responses
    weight_versions: np.ndarray  # (N,) weight version each sample was drawn with

    @classmethod
    def from_samples(cls, samples: Sequence[Sample]) -> SampleBatch:
        n, width = len(samples), max((len(s.response_ids) for s in samples), default=0)
        ids, logprobs = np.zeros((n, width), np.int64), np.zeros((n, width), np.float32)
        for i, s in enumerate(samples):
            ids[i, : len(s.response_ids)] = s.response_ids
            logprobs[i, : len(s.logprobs)] = s.logprobs
        return cls(
            ids,
            logprobs,
            np.array([len(s.response_ids) for s in samples], np.int64),
            np.array([s.prompt_index for s in samples], np.int64),
            np.array([s.finish_reason == "length" for s in samples], bool),
            [s.response_text for s in samples],
            np.array([s.weight_version for s in samples], np.int64),
        )

    @classmethod
    def concat(cls, parts: Sequence[SampleBatch]) -> SampleBatch:
        """Parts in request order -> one batch, right-padded to the longest response."""
        from tandem.models.rows import concat_rows

        return cls(
            concat_rows([p.response_ids for p in parts]),
            concat_rows([p.logprobs for p in parts]),
            *(
                np.concatenate([getattr(p, k) for p in parts])
                for k in ("lengths", "prompt_index", "truncated")
            ),
            [t for p in parts for t in p.texts],
            np.concatenate([p.weight_versions for p in parts]),
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def responses(self) -> list[np.ndarray]:
        """Each sample's response ids, unpadded."""
        return [row[:n] for row, n in zip(self.response_ids, self.lengths.tolist())]

    def rows(self, prompt_ids: Sequence[Sequence[int]], pad_id: int, **per_token: Any) -> Rows:
        """The token layout of prompt + response per sample (`prompt_ids`: the request's prompts,
        which `prompt_index` points into), with any (N, R) per-token arrays."""
        from tandem.models.rows import Rows

        prompts = [prompt_ids[i] for i in self.prompt_index.tolist()]
        return Rows.from_ids(prompts, self.responses(), pad_id, **per_token)
