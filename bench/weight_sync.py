"""Weight sync learner -> vLLM engine for a ~50M-parameter Qwen2, against a plain in-process copy.

The model is a random-init Qwen2 built here (no network), saved once under the tandem cache. The
learner is tandem's real DeepSpeed learner; the engine a real rollout actor; the sync the real path
(gather, buckets over the gloo broadcast group, vLLM in-place reload, prefix-cache reset), timed
from the driver. The baseline is `dst.copy_(src)` of the same bytes in one process: their ratio is
what the transport and loading cost over touching the bytes once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from _common import best_and_median, ray_up

TITLE = "weight sync: learner -> vLLM engine, ~50M-param Qwen2 (float32)"
ARCH = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 10,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 32000,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}
REPEATS = 3
# (ZeRO stage, learner ranks): the plain path, then ZeRO-3 where every rank joins each gather.
SETUPS = [(0, 1), (3, 2)]


def build_model() -> str:
    """The random-init Qwen2 directory (tokenizer borrowed from the embedded tiny model)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from tandem.models import resolve_model
    from tandem.models.tiny import cache_root

    target = cache_root() / "bench" / "qwen2-50m-v1"
    if target.is_dir():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tiny = Path(resolve_model("tiny-qwen2"))
    tmp = Path(tempfile.mkdtemp(dir=target.parent))
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(Qwen2Config(**ARCH), dtype=torch.float32)
        model.save_pretrained(tmp)
        for f in tiny.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(f, tmp / f.name)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def copy_seconds(nbytes: int) -> float:
    import torch

    src = torch.randn(nbytes // 4)
    dst = torch.empty_like(src)
    return best_and_median(lambda: dst.copy_(src), 5)[0]


def run() -> list[tuple]:
    from tandem.actors.rollout import RolloutGroup
    from tandem.cluster.groups import ActorGroup
    from tandem.cluster.weight_sync import WeightSync
    from tandem.config import Config, LearnerConfig
    from tandem.learners import SFTLearner

    ray_up()
    path = build_model()
    cfg = Config.model_validate(
        {
            "model": {"path": path, "max_prompt_len": 32, "max_response_len": 16},
            "rollout": {"kv_cache_mb": 32, "max_num_seqs": 8},
        }
    )
    engines = RolloutGroup(cfg)
    rows = [("engine startup", engines.wait_ready()[0]["startup_s"], "s", "vLLM in-process, 50M model")]
    try:
        for stage, ranks in SETUPS:
            lcfg = LearnerConfig(
                world_size=ranks, zero_stage=stage, micro_batch_size=1, global_batch_size=ranks
            )
            with ActorGroup("policy", SFTLearner, ranks, args=(lcfg, path, 1)) as learners:
                params = learners.call("setup")[0]["params"]
                sync = WeightSync(learners, engines.engines, cfg.rollout.sync_bucket_mb)
                sync.setup()
                sync.sync()  # warm-up: first buffers, first reload
                best, median = best_and_median(sync.sync, REPEATS)
                last = engines.wait_ready()[0]["last_sync"]
            nbytes = params * 4
            copy = copy_seconds(nbytes)
            label = f"ZeRO-{stage} x{ranks}"
            what = (
                f"median of {REPEATS}, best {best:.3f} s; {params / 1e6:.1f}M params, "
                f"{nbytes / 1e6:.0f} MB, {cfg.rollout.sync_bucket_mb} MiB buckets"
            )
            rows += [
                (f"{label}: sync time", median, "s", what),
                (f"{label}: sync throughput", nbytes / median / 1e9, "GB/s", "bytes / median sync time"),
                (f"{label}: engine side", last["total_s"], "s", "last sync, in the engine actor"),
                (
                    f"{label}:   receiving",
                    last["receive_s"],
                    "s",
                    "waiting on the broadcast group (incl. sender)",
                ),
                (
                    f"{label}:   vLLM loading",
                    last["total_s"] - last["receive_s"],
                    "s",
                    "reload_weights: per-layer copy + CPU GEMM repack",
                ),
                (f"{label}: torch copy", copy, "s", "dst.copy_(src), same bytes, one process (best of 5)"),
                (f"{label}: sync / copy", median / copy, "x", "the figure: transport + load overhead"),
            ]
    finally:
        engines.shutdown()
    return rows
