"""Runs inside each vLLM worker (`LLM(worker_extension_cls="tandem.actors.vllm_ext.WeightSyncExtension")`).

vLLM mixes this class into its worker, so `self` is the worker: `self.rank` is the worker's rank in
its engine (tensor parallel), and `self.reload_weights` is vLLM's in-place reload. The rollout actor
reaches these methods with `llm.collective_rpc(name, args=...)`, which calls them on every worker;
the weights themselves arrive over the broadcast group, never as RPC arguments (in multiprocess mode
those are serialised, and tensors arrive as lists). Modelled on OpenRLHF's vllm_worker_wrap.py.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch


class _QuietExpectedReloadWarnings(logging.Filter):
    """vLLM warns "Failed to load weights" for layers a checkpoint never holds: the tied lm_head
    (refreshed by `_refresh_tied`) and rotary embeddings (computed, not loaded). Expected on every
    sync, so dropped; other layers' warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        expected = record.args and record.args[0] in ("ParallelLMHead", "RotaryEmbedding")
        return not (expected and "Failed to load weights" in str(record.msg))


class WeightSyncExtension:
    """Join the learner's broadcast group and load the weights streamed over it."""

    def tandem_init_weight_sync(
        self, master_addr: str, master_port: int, rank_offset: int, world_size: int, timeout_s: float
    ) -> None:
        from tandem.cluster.weight_sync import BroadcastGroup

        # Every engine owns a contiguous block of group ranks, one per tensor-parallel worker.
        rank = rank_offset + self.rank
        reload_log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        if not any(isinstance(f, _QuietExpectedReloadWarnings) for f in reload_log.filters):
            reload_log.addFilter(_QuietExpectedReloadWarnings())
        self._tandem_group = BroadcastGroup(master_addr, master_port, rank, world_size, timeout_s=timeout_s)

    def tandem_receive_weights(self) -> dict[str, float]:
        """Receive one full stream and load it in place. Returns its tensors, bytes and seconds spent
        receiving (`Metered.stats`; the engine times the whole load).

        Each tensor-parallel worker receives the full tensors; vLLM's weight loaders shard them.
        """
        from tandem.cluster.weight_sync import Metered, receive_stream

        group = getattr(self, "_tandem_group", None)
        if group is None:
            raise RuntimeError("tandem_receive_weights before tandem_init_weight_sync")
        stream = Metered(receive_stream(group, device=self.device))
        load_in_place(self, stream)
        return stream.stats()


def load_in_place(worker: Any, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Load a full set of (name, tensor) checkpoint weights into vLLM `worker`'s model in place."""
    # One reload for the whole stream: vLLM's layerwise reload buffers a layer's tensors until it
    # has them all, so a layer split across buckets (q, k, v -> qkv_proj) still loads correctly;
    # reloading bucket by bucket would process half-loaded layers.
    worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
    for _ in weights:  # the loader may stop early; a sender must still see every receive
        pass
    _refresh_tied(worker.model_runner.get_model())


def _refresh_tied(model: torch.nn.Module) -> None:
    """Re-derive kernel state of layers that share a parameter (tied embeddings: lm_head).

    The reload loads a tied weight once, under the embedding's name; the lm_head never counts as
    loaded, so vLLM's CPU backend keeps the lm_head's prepacked GEMM weight (made at startup) stale.
    Re-running the layer's post-load processing rebuilds it from the shared, updated parameter.
    On GPUs that processing is a no-op for unquantized layers.
    """
    owners: dict[int, list[torch.nn.Module]] = defaultdict(list)
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)].append(module)
    for modules in owners.values():
        for module in modules if len(modules) > 1 else ():
            method = getattr(module, "quant_method", None)
            if method is not None and hasattr(method, "process_weights_after_loading"):
                method.process_weights_after_loading(module)
