"""The learner side of weight sync: gather full parameters and stream them to the rollout engines.

A learner here is anything with `model` (the unwrapped HF module, parameter names as in HF
checkpoints, which vLLM's loader accepts), `rank` and `world_size`. Under ZeRO-3 each parameter is
sharded, and `deepspeed.zero.GatheredParameters` is a collective, so EVERY rank walks the same
buckets and enters the gather; only rank 0 belongs to the broadcast group and sends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch

from tandem.cluster.weight_sync import BroadcastGroup, end_stream, send_bucket

_GROUP_ATTR = "_tandem_weight_sync_group"


def init_sender(
    learner: Any, master_addr: str, master_port: int, world_size: int, timeout_s: float = 300.0
) -> None:
    """Join the weight broadcast group as its rank 0 (learner rank 0 only; other ranks: nothing)."""
    if learner.rank == 0:
        setattr(
            learner, _GROUP_ATTR, BroadcastGroup(master_addr, master_port, 0, world_size, timeout_s=timeout_s)
        )


def _full_numel(param: torch.nn.Parameter) -> int:
    # ZeRO-3 leaves an empty local tensor and records the full shape as ds_shape.
    return int(param.ds_numel) if hasattr(param, "ds_numel") else param.numel()


def _buckets(model: torch.nn.Module, bucket_bytes: int) -> Iterator[list[tuple[str, torch.nn.Parameter]]]:
    """Parameters in module order, cut into runs of one dtype and at most `bucket_bytes` (a larger
    single parameter gets a bucket of its own). Deterministic, so all ranks agree on the cuts."""
    bucket: list[tuple[str, torch.nn.Parameter]] = []
    size = 0
    for name, param in model.named_parameters():
        nbytes = _full_numel(param) * param.element_size()
        if bucket and (size + nbytes > bucket_bytes or param.dtype != bucket[0][1].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append((name, param))
        size += nbytes
    if bucket:
        yield bucket


def iter_full_parameters(learner: Any, bucket_mb: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Buckets of `(name, full tensor)` on every rank. Under ZeRO-3 the tensors are only valid until
    the next bucket is requested (they are released when the gather context exits)."""
    for bucket in _buckets(learner.model, bucket_mb << 20):
        params = [p for _, p in bucket]
        sharded = any(hasattr(p, "ds_id") for p in params)
        with _gathered(params) if sharded else nullcontext():
            yield [(name, p.data) for name, p in bucket]


def _gathered(params: list[torch.nn.Parameter]) -> Any:
    import deepspeed  # `deepspeed.zero` is an attribute, not an importable module

    # modifier_rank=None: a read-only gather on all ranks; nothing is re-partitioned on exit.
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _check_finite(learner: Any) -> None:
    """Never stream a non-finite weight: every rank checks its own parameters (under ZeRO-3 its
    partition) and the ranks agree before anything is sent, so no engine loads one, nor is left
    mid-stream. (The optimizer's guard, `tandem.learners.finite`, keeps them from arising.)"""
    from tandem.learners.finite import NonFiniteError

    local = (getattr(p, "ds_tensor", p.data) for p in learner.model.parameters())
    bad = [float(not all(bool(torch.isfinite(t).all()) for t in local))]
    if hasattr(learner, "_all_reduce"):
        bad = learner._all_reduce(bad, "max")
    if bad[0] > 0:
        raise NonFiniteError(
            "the policy's weights hold a NaN/inf, so they were not synced to the rollout engines; "
            "the run folder's checkpoints hold finite ones: lower the learning rate, or check the rewards"
        )


@torch.no_grad()
def send_weights(learner: Any, bucket_mb: int) -> int:
    """Stream the full weights to every engine; returns the bytes sent (0 on ranks other than 0).

    Called on every learner rank at once, while the engines receive.
    """
    _check_finite(learner)
    group: BroadcastGroup | None = getattr(learner, _GROUP_ATTR, None)
    if learner.rank == 0 and group is None:
        raise RuntimeError("send_weights before init_sender: call init_weight_sync first")
    sharded = any(hasattr(p, "ds_id") for p in learner.model.parameters())
    if learner.rank != 0 and not sharded:
        return 0  # nothing to gather: rank 0 alone holds full weights
    sent = 0
    for pairs in iter_full_parameters(learner, bucket_mb):
        if group is not None:
            sent += send_bucket(group, pairs)
    if group is not None:
        end_stream(group)
    return sent
