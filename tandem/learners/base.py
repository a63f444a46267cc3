"""The DeepSpeed learner every trained role builds on (SFT, reward model, DPO; the PPO policy and critic).

One learner is one rank: a Ray actor placed by `tandem.cluster.groups.ActorGroup`, which sets
RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT. The driver calls a few coarse methods on all
ranks at once: `setup()`, then `train_batch(examples)` (one optimizer step on this rank's share of
a global batch), `eval_loss(examples)`, `save(dir)`, `load(dir)`, `save_model(dir)`.

A subclass says what the model is and what the loss is:
    build_model()         -> the HF module to train
    collate(examples)     -> a batch of tensors for one micro-batch
    compute_loss(batch)   -> (mean loss over the micro-batch's units, units, metrics)
    loss_units(example)   -> how many units (tokens, pairs) one example contributes

Losses are normalised over the GLOBAL batch: each micro-batch's mean is weighted by its share of
all units on all ranks. So the gradient is the same whatever the world size, micro-batch size and
padding (token-mean SFT losses included), which is what makes world size 1 and world size 2 agree.

CPU vs GPU: on CPU DeepSpeed uses its CPU accelerator and gloo, on GPU NCCL. The optimizer is a
client `torch.optim.AdamW` on both (its fused CUDA kernel on GPU): DeepSpeed's own optimizers
JIT-compile C++/CUDA ops at first use (75-110 s each on CPU, and a CUDA toolchain on GPU).

ZeRO-3: the model is loaded whole on every rank and `deepspeed.initialize` partitions it (ZeRO-3's
engine wraps a non-partitioned module in `zero.Init(module=...)`). Chosen over `HfDeepSpeedConfig`
+ `from_pretrained` because that switch is process-global in transformers (every later
`from_pretrained`, e.g. DPO's frozen reference, would be partitioned too) and because the models
this targets (<= ~1.5B) fit whole in host memory once per rank. For larger models, load under
`HfDeepSpeedConfig` instead (transformers' classes are imported first, see `_import_model_classes`).
"""

from __future__ import annotations

import functools
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from tandem.cluster.runtime import startup_heap
from tandem.config import LearnerConfig
from tandem.learners.finite import FiniteGuard
from tandem.learners.rng import rng_state, seed_everything, set_rng_state
from tandem.learners.schedule import lr_multiplier
from tandem.learners.threads import CoreHandoff, on_all_cores

DS_TAG = "state"  # the one tag under a checkpoint's deepspeed/ folder


def deepspeed_config(cfg: LearnerConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config for a LearnerConfig (batching, ZeRO stage, precision, clipping). The
    optimizer is the learner's own (see the module docstring), so none is named here."""
    gas = cfg.global_batch_size // (cfg.micro_batch_size * world_size)
    ds: dict[str, Any] = {
        "train_batch_size": cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if cfg.zero_stage == 3:
        ds["zero_optimization"].update(stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=0)
    return ds


def _import_model_classes() -> None:
    # ZeRO-3 patches module construction; classes imported later fail with "Signature mismatch".
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: F401


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on norms, biases): the usual AdamW practice."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class DeepSpeedLearner:
    """One rank of a DeepSpeed-trained model. See the module docstring for the contract.

    Attributes after `setup()`: `engine` (the DeepSpeed engine), `model` (the unwrapped HF
    module), `rank`, `world_size`, `device`.
    """

    def __init__(self, cfg: LearnerConfig, model_path: str, total_steps: int, seed: int = 0) -> None:
        # No collectives here: rank 0 exists before its peers (see ActorGroup).
        self.cfg = cfg
        self.model_path = model_path
        self.total_steps = total_steps
        self.seed = seed
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.engine: Any = None
        self.model: Any = None
        self.device = torch.device("cpu")
        self.max_nonfinite_steps = 3  # skipped optimizer steps in a row before NonFiniteError
        self.handoff = CoreHandoff()  # how many ways the node's cores are split (see `learners.threads`)

    # -- hooks for subclasses -----------------------------------------------------------------

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def collate(self, examples: Sequence[Any]) -> Any:
        raise NotImplementedError

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, int, dict[str, float]]:
        """(loss: the mean over the batch's units, units in the batch, metrics as means)."""
        raise NotImplementedError

    def loss_units(self, example: Any) -> int:
        return 1

    def count_units(self, examples: Sequence[Any]) -> int:
        """Units in a sequence of examples (a subclass whose examples are one batch of rows may count
        them at once)."""
        return sum(self.loss_units(e) for e in examples)

    # -- setup --------------------------------------------------------------------------------

    @startup_heap()
    def setup(self) -> dict[str, Any]:
        """Join the process group, build the model and the DeepSpeed engine. Returns a summary."""
        import deepspeed

        on_gpu = torch.cuda.is_available()
        _quiet_libraries()
        self._init_distributed(on_gpu)
        seed_everything(self.seed)
        _import_model_classes()
        model = self.build_model()
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        groups = _param_groups(model, self.cfg.optim.weight_decay)
        opt = self.cfg.optim
        schedule = functools.partial(
            lr_multiplier,
            warmup_steps=opt.warmup_steps,
            total_steps=self.total_steps,
            min_lr_ratio=opt.min_lr_ratio,
        )
        optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, fused=on_gpu)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, schedule),
            config=deepspeed_config(self.cfg, self.world_size),
            dist_init_required=False,
        )
        self.model = self.engine.module
        self.handoff.attach(self.model)
        self._guard = FiniteGuard(optimizer, self._all_reduce, self.max_nonfinite_steps)
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in self.model.parameters())
        return {"rank": self.rank, "params": n_params, "device": str(self.device)}

    def _init_distributed(self, on_gpu: bool) -> None:
        import sys

        import deepspeed
        import torch.distributed as dist

        from tandem.cluster.groups import rendezvous_store

        if on_gpu:
            # Ray gives each rank its own GPU(s) through CUDA_VISIBLE_DEVICES, renumbered from 0.
            if torch.cuda.device_count() == 1:
                os.environ["LOCAL_RANK"] = "0"
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        else:
            # DeepSpeed's shared-memory all-reduce op is JIT-built on CPU (~100 s) and only serves
            # inference all-reduce: skip it.
            # (`deepspeed.comm.torch` as an attribute is PyTorch itself: go through sys.modules.)
            import deepspeed.comm.torch

            sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        backend, timeout = ("nccl" if on_gpu else "gloo"), timedelta(seconds=self.cfg.collective_timeout_s)
        if not dist.is_initialized():
            # Through the store rank 0 holds open (see `rendezvous_store`); DeepSpeed then adopts the group.
            store = rendezvous_store(self.rank, timeout)
            dist.init_process_group(
                backend, store=store, rank=self.rank, world_size=self.world_size, timeout=timeout
            )
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout)

    # -- training -----------------------------------------------------------------------------

    @on_all_cores
    def train_batch(self, examples: Sequence[Any]) -> dict[str, float]:
        """One optimizer step on this rank's share of a global batch (every rank calls it at once).

        Returns global metrics (the same on every rank): "loss", the subclass's metrics, "lr" (the
        rate this step used) and "grad_norm" (before clipping).
        """
        gas = self.engine.gradient_accumulation_steps()
        expected = gas * self.cfg.micro_batch_size
        if len(examples) != expected:
            raise ValueError(f"rank {self.rank}: train_batch needs {expected} examples, got {len(examples)}")
        self.engine.train()
        lr = float(self.engine.get_lr()[0])
        total_units = self._all_reduce([float(self.count_units(examples))])[0]
        sums: dict[str, float] = defaultdict(float)
        norm, skipped_before = None, self.engine.skipped_steps
        for start in range(0, len(examples), self.cfg.micro_batch_size):
            batch = self.collate(examples[start : start + self.cfg.micro_batch_size])
            loss, units, metrics = self.compute_loss(batch)
            weight = units / total_units
            # DeepSpeed averages gradients over ranks; the world_size factor makes that a sum, so
            # the step's gradient is that of the global-batch mean.
            self.engine.backward(loss * (weight * self.world_size), scale_wrt_gas=False)
            self._guard.bad_loss |= not math.isfinite(loss.item())  # skips the boundary's step
            if self.engine.is_gradient_accumulation_boundary():
                norm = self._full_grad_norm()
            self.engine.step()
            accumulate(sums, {"loss": loss.item(), **metrics}, weight)
        out = self._reduce_metrics(sums)
        if norm is None:
            norm = self.engine.get_global_grad_norm()
        out.update(lr=lr, grad_norm=float(norm) if norm is not None else float("nan"))
        out["nonfinite_skipped"] = self._guard.after_step(
            self.rank, self.engine.skipped_steps > skipped_before
        )
        return out

    def _full_grad_norm(self) -> float | None:
        """The gradient norm where DeepSpeed does not report one: without ZeRO in fp32 the reduced
        gradients sit in `.grad` at the boundary. None otherwise (the engine's norm is used)."""
        if self.engine.zero_optimization_stage() or self.cfg.precision != "fp32":
            return None
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return (
            float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
            if grads
            else 0.0
        )

    @on_all_cores
    @torch.no_grad()
    def eval_loss(self, examples: Sequence[Any]) -> dict[str, float]:
        """Loss and metrics over the examples of all ranks (unit-weighted means; needs >= 1 per rank).

        Ranks may hold different numbers of examples: under ZeRO-3 every forward is a collective, so
        a rank with fewer micro-batches repeats its last one with weight 0.
        """
        if not examples:
            raise ValueError(f"rank {self.rank}: eval_loss needs at least one example")
        self.engine.eval()
        mbs = self.cfg.micro_batch_size
        chunks = [examples[i : i + mbs] for i in range(0, len(examples), mbs)]
        total_units = self._all_reduce([float(self.count_units(examples))])[0]
        n_chunks = int(self._all_reduce([float(len(chunks))], op="max")[0])
        sums: dict[str, float] = defaultdict(float)
        for i in range(n_chunks):
            loss, units, metrics = self.compute_loss(self.collate(chunks[min(i, len(chunks) - 1)]))
            if i < len(chunks):
                accumulate(sums, {"loss": loss.item(), **metrics}, units / total_units)
        return self._reduce_metrics(sums)

    def _all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t.tolist()

    def _reduce_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Unit-weighted sums over all ranks; metrics named "*_max" are maxima instead."""
        keys = sorted(k for k in sums if not k.endswith("_max"))  # same keys, same order on every rank
        maxima = sorted(k for k in sums if k.endswith("_max"))
        out = dict(zip(keys, self._all_reduce([sums[k] for k in keys]), strict=True))
        if maxima:
            out |= dict(zip(maxima, self._all_reduce([sums[k] for k in maxima], op="max"), strict=True))
        return out

    # -- checkpoints --------------------------------------------------------------------------

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full weights on CPU on rank 0 (empty on the others). A collective under ZeRO-3:
        every rank must call it, since each gather needs all of them."""
        from deepspeed.runtime.zero import GatheredParameters

        keys = set(self.model.state_dict().keys())
        state: dict[str, torch.Tensor] = {}
        for name, param in self.model.named_parameters():
            sharded = hasattr(param, "ds_id")
            with GatheredParameters([param], modifier_rank=None) if sharded else nullcontext():
                if self.rank == 0:
                    state[name] = param.data.detach().to("cpu", copy=True)
        if self.rank == 0:
            for name, buf in self.model.named_buffers():
                if name in keys:  # persistent buffers only
                    state[name] = buf.detach().to("cpu", copy=True)
        return state

    def save_model(self, path: str) -> None:
        """The full model as a Hugging Face directory (safetensors + config + tokenizer), loadable
        with `from_pretrained` and by vLLM. Every rank calls it (ZeRO-3 gathers); rank 0 writes."""
        from tandem.models import load_tokenizer

        state = self.full_state_dict()
        if self.rank == 0:
            Path(path).mkdir(parents=True, exist_ok=True)
            self.model.save_pretrained(path, state_dict=state, safe_serialization=True)
            load_tokenizer(self.model_path).save_pretrained(path)
        self._barrier()

    def save(self, path: str) -> None:
        """A resumable checkpoint in `path`: `model/` (HF), `deepspeed/` (weights, optimizer and
        lr-schedule state of every rank) and `rng/rank<r>.pt`. Every rank calls it."""
        self.save_model(os.path.join(path, "model"))
        self.engine.save_checkpoint(os.path.join(path, "deepspeed"), tag=DS_TAG)
        rng_dir = Path(path) / "rng"
        rng_dir.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), rng_dir / f"rank{self.rank}.pt")
        self._barrier()

    def load(self, path: str) -> None:
        """Restore weights, optimizer, lr schedule and RNG from a `save` checkpoint."""
        load_path, _ = self.engine.load_checkpoint(
            os.path.join(path, "deepspeed"),
            tag=DS_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if load_path is None:
            raise FileNotFoundError(f"rank {self.rank}: no DeepSpeed checkpoint under {path}/deepspeed")
        rng_file = Path(path) / "rng" / f"rank{self.rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))

    def _barrier(self) -> None:
        import torch.distributed as dist

        if self.world_size > 1:
            dist.barrier()

    # -- weight sync (implemented in tandem.learners.sync) ------------------------------------

    def init_weight_sync(self, master_addr: str, master_port: int, world_size: int) -> None:
        """Join the weight broadcast group with the rollout engines (rank 0 sends)."""
        from tandem.learners.sync import init_sender

        init_sender(self, master_addr, master_port, world_size)

    def sync_weights(self, bucket_mb: int) -> int:
        """Stream the full weights to the rollout engines; returns the bytes sent."""
        from tandem.learners.sync import send_weights

        return send_weights(self, bucket_mb)


def accumulate(sums: dict[str, float], metrics: dict[str, float], weight: float) -> None:
    """Add one part's metrics into `sums` with `weight` (its share of the units); "*_max" metrics
    keep their maximum."""
    for key, value in metrics.items():
        if key.endswith("_max"):  # a maximum over micro-batches, not a weighted mean
            sums[key] = max(sums.get(key, float("-inf")), float(value))
        else:
            sums[key] += float(value) * weight


def _quiet_libraries() -> None:
    """No per-rank progress bars from transformers, no deprecation noise from DeepSpeed's calls."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings(
        "ignore", message=r".*all_gather_into_tensor.* is deprecated", category=FutureWarning
    )
    warnings.filterwarnings(
        "ignore", message=r".*reduce_scatter_tensor.* is deprecated", category=FutureWarning
    )
