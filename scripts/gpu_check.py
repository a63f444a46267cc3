"""`make gpu-check`: tandem's learner path on one GPU, without Ray or vLLM, in a few minutes.

Prepared for a bare GPU machine lent for minutes: it needs torch, transformers, DeepSpeed (a wheel
built with its ops off), pydantic and PyYAML, nothing from a hub, and runs these checks:

  train_bf16_zero0/2  a Qwen2.5-0.5B-shaped model (random init, built here) trained through
                      tandem's PolicyLearner (world size 1, no Ray): bf16, ZeRO-0 and ZeRO-2, torch's
                      fused AdamW, 1.5k-token sequences; tokens/s and MFU (6 x params x tokens / time
                      over the GPU's dense bf16 peak). Passes if the PPO updates raise the sampled
                      tokens' logprobs, as advantages of +1 must.
  logprob_parity      the learner's per-token logprobs against plain transformers on the same bf16
                      weights (saved by the learner, reloaded) and tokens, one unpadded sequence at a
                      time; the tolerance is LOGPROB_TOL.
  ppo_gpu_vs_cpu      one PPO step of the embedded tiny model in fp32: loss and gradient norm on this
                      device against a child process on the CPU (rel. tolerance PPO_RTOL).
  weight_sync_pack    the trained policy's weights through the weight-sync bucket packing (pack,
                      unpack) on device tensors, compared bit for bit; then sent through a real
                      broadcast group (NCCL on GPU) of one member.
  rollout_transformers  `rollout.backend: transformers` on the trained weights: seeded draws of 16
                      prompts x 4, up to 256 tokens, decode tokens/s, and the sampled tokens'
                      logprobs against the learner's forward (LOGPROB_TOL).
  plain_baseline      the same model, tokens and steps in plain PyTorch (bf16 autocast, fused AdamW,
                      no DeepSpeed): the yardstick for the learner's tokens/s. One learner step's
                      profile (busiest operators) goes to profile_zero0.txt beside the JSON.

`--cpu` runs the same checks at tiny size on the CPU (the dry run that `make test` covers). Figures
go to one JSON (`--out`, default `$OUT` or runs/gpu-check) and a table; the exit code is 1 if any
check fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tandem from this checkout, installed or not

import numpy as np
import torch

# Dense bf16 tensor-core peaks (vendor data sheets, SXM parts), TFLOP/s. MFU is quoted against them.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}

# Learner vs plain transformers, both bf16: the two differ only in how the rows are batched, so a
# logit may round to a neighbouring bf16 value (one ulp of a logit of magnitude 16-32 is 0.125-0.25
# nats). A misaligned token or a stale weight moves the mean by about the logprobs' spread, reported
# beside it as logprob_std.
LOGPROB_TOL = {"mean_abs": 0.01, "max_abs": 0.25}
PPO_RTOL = 1e-4  # fp32 on both sides; TF32 is off, so only summation order differs

QWEN25_05B = {  # Qwen2.5-0.5B's config.json, less the hub-only fields
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
}
TINY_QWEN2 = {
    "model_type": "qwen2",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 2048,
    "max_position_embeddings": 256,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
}


CHECKS = (
    "ppo_gpu_vs_cpu",
    "train_bf16_zero2",
    "train_bf16_zero0",
    "logprob_parity",
    "weight_sync_pack",
    "rollout_transformers",
    "plain_baseline",
)


@dataclass(frozen=True)
class Size:
    model: dict
    prompt_len: int
    response_len: int
    micro_batch: int
    global_batch: int
    warmup_steps: int
    timed_steps: int
    lr: float


SIZES = {
    "gpu": Size(
        QWEN25_05B,
        prompt_len=512,
        response_len=1024,
        micro_batch=8,
        global_batch=32,
        warmup_steps=2,
        timed_steps=5,
        lr=2e-5,
    ),
    "cpu": Size(
        TINY_QWEN2,
        prompt_len=16,
        response_len=32,
        micro_batch=2,
        global_batch=4,
        warmup_steps=1,
        timed_steps=2,
        lr=1e-3,
    ),
}


# -- shared pieces -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_rank_env() -> None:
    """What ActorGroup sets for a rank: this process is rank 0 of 1."""
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model_dir(shape: dict, target: Path) -> Path:
    """A random-init HF checkpoint of `shape` (bf16 safetensors) with the embedded tokenizer, whose
    ids all fall inside the model's vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tandem.models import load_tokenizer

    fields = dict(shape)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer = load_tokenizer("tiny-qwen2")
    assert len(tokenizer) <= config.vocab_size
    tokenizer.save_pretrained(target)
    return target


def rollout_rows(n: int, prompt_len: int, response_len: int, vocab: int, seed: int) -> Any:
    """Equal-length random token rows as the learner takes a rollout batch (`Rows`), advantages +1
    everywhere and behaviour logprobs 0 (to be set: the learner reads them for its IS weights)."""
    from tandem.models.rows import Rows

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(16, vocab, (n, prompt_len + response_len), generator=g)
    return Rows.from_ids(
        ids[:, :prompt_len],
        ids[:, prompt_len:],
        0,
        advantages=torch.ones(n, response_len),
        behaviour_logprobs=torch.zeros(n, response_len),
    )


def with_logprobs(rows: Any, **arrays: Any) -> Any:
    """`rows` with (n, R) arrays added or replaced, e.g. behaviour (engine) logprobs."""
    from tandem.models.rows import Rows

    return rows.merge(Rows(**{k: np.asarray(v, np.float32) for k, v in arrays.items()}))


def policy_learner(model_dir: str, size: Size, zero_stage: int, precision: str, total_steps: int) -> Any:
    from tandem.config import LearnerConfig
    from tandem.learners.ppo import PolicyLearner

    cfg = LearnerConfig(
        world_size=1,
        zero_stage=zero_stage,
        precision=precision,
        micro_batch_size=size.micro_batch,
        global_batch_size=size.global_batch,
        optim={"lr": size.lr, "warmup_steps": 0, "min_lr_ratio": 1.0, "weight_decay": 0.0},
    )
    learner = PolicyLearner(cfg, model_dir, total_steps, seed=0)
    learner.setup()
    return learner


def throughput(n_params: int, tokens: int, seconds: list[float], peak_tflops: float | None) -> dict:
    """Training figures of `tokens` per step taking `seconds` (the timed steps): tokens/s, achieved
    TFLOP/s and MFU, at 6 x params FLOPs per token (forward and backward)."""
    step_s = sum(seconds) / len(seconds)
    flops = 6 * n_params * tokens / step_s
    return {
        "params": n_params,
        "tokens_per_step": tokens,
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "achieved_tflops": flops / 1e12,
        "mfu": flops / (peak_tflops * 1e12) if peak_tflops else None,
    }


# -- the checks -----------------------------------------------------------------------------------


def check_train(
    model_dir: str, size: Size, zero_stage: int, peak_tflops: float | None, profile_to: Path | None = None
) -> tuple[dict, Any]:
    """PPO steps in bf16; returns (figures, the learner, kept for the checks that follow). With
    `profile_to`, one more step runs under torch's profiler and its busiest kernels go to that file."""
    steps = size.warmup_steps + size.timed_steps
    learner = policy_learner(model_dir, size, zero_stage, "bf16", steps)
    n_params = sum(p.numel() for p in learner.model.parameters())
    batch = rollout_rows(
        size.global_batch, size.prompt_len, size.response_len, learner.model.config.vocab_size, seed=1
    )
    everyone = range(len(batch))
    seconds, losses, first_logprob = [], [], None
    for step in range(steps):
        # The engine's logprobs = the current policy's, as in synchronous PPO; pi_old is the training
        # forward itself (one optimizer step per batch).
        old = learner.logprobs(batch, everyone)
        first_logprob = float(old.mean()) if first_logprob is None else first_logprob
        examples = with_logprobs(batch, behaviour_logprobs=old)
        _sync(learner.device)
        started = time.perf_counter()
        metrics = learner.train_batch(examples)
        _sync(learner.device)
        if step >= size.warmup_steps:
            seconds.append(time.perf_counter() - started)
        losses.append(metrics["loss"])
        if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
            raise RuntimeError(f"step {step}: loss {metrics['loss']}, grad norm {metrics['grad_norm']}")
    if profile_to is not None:
        profile_step(lambda: learner.train_batch(examples), learner.device, profile_to)
    last_logprob = float(learner.logprobs(batch, everyone).mean())
    tokens = size.global_batch * (size.prompt_len + size.response_len)
    figures = {
        **throughput(n_params, tokens, seconds, peak_tflops),
        "losses": losses,
        "mean_logprob_before": first_logprob,
        "mean_logprob_after": last_logprob,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30
        if learner.device.type == "cuda"
        else None,
    }
    figures["ok"] = last_logprob > first_logprob  # advantages of +1: the updates must raise them
    return figures, learner


def profile_step(step: Callable[[], Any], device: torch.device, path: Path) -> None:
    """One call of `step` under torch's profiler; the table of its costliest operators to `path`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70) + "\n")


def check_plain_baseline(model_dir: str, size: Size, peak_tflops: float | None) -> dict:
    """The same model, tokens and optimizer steps in plain PyTorch, no tandem and no DeepSpeed: fp32
    weights under bf16 autocast (what HF's Trainer does with bf16), token cross-entropy, torch's
    fused AdamW. The yardstick for the learner's tokens/s."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=size.lr, fused=device.type == "cuda")
    rows = rollout_rows(size.global_batch, size.prompt_len, size.response_len, model.config.vocab_size, 1)
    ids = rows["input_ids"].to(device)
    n_micro = size.global_batch // size.micro_batch
    seconds = []
    for step in range(size.warmup_steps + size.timed_steps):
        _sync(device)
        started = time.perf_counter()
        for chunk in ids.split(size.micro_batch):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = model(input_ids=chunk).logits[:, :-1]
            loss = F.cross_entropy(logits.flatten(0, 1).float(), chunk[:, 1:].flatten())
            (loss / n_micro).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step >= size.warmup_steps:
            seconds.append(time.perf_counter() - started)
    n_params = sum(p.numel() for p in model.parameters())
    del model, optimizer
    return {**throughput(n_params, ids.numel(), seconds, peak_tflops), "ok": math.isfinite(loss.item())}


def plain_logprobs(model: Any, rows: Any, device: torch.device) -> np.ndarray:
    """log p(response token | context) from an HF model (rows of equal length, no padding), (n, R)."""
    ids = rows["input_ids"].to(device)
    response_len = rows["mask"].shape[1]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
        logprobs = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    return logprobs[:, -response_len:].cpu().numpy()


def check_logprob_parity(learner: Any, size: Size) -> dict:
    """The learner's logprobs against transformers' on the weights the learner saves."""
    from transformers import AutoModelForCausalLM

    rows = rollout_rows(
        min(8, size.global_batch), size.prompt_len, size.response_len, learner.model.config.vocab_size, seed=2
    )
    ours = learner.logprobs(rows, range(len(rows)))
    with tempfile.TemporaryDirectory() as saved:
        learner.save_model(saved)
        plain = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.bfloat16).to(learner.device).eval()
        theirs = plain_logprobs(plain, rows, learner.device)
        del plain
        exact = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).to(learner.device).eval()
        fp32 = plain_logprobs(exact, rows, learner.device)
        del exact
    diffs = np.abs(ours - theirs).ravel().tolist()
    fp32_diffs = np.abs(ours - fp32).ravel().tolist()
    values = ours.ravel().tolist()
    mean = sum(values) / len(values)
    figures = {
        "tokens": len(diffs),
        "mean_abs": sum(diffs) / len(diffs),
        "max_abs": max(diffs),
        "tolerance": LOGPROB_TOL,
        "logprob_std": (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5,
        "vs_fp32_mean_abs": sum(fp32_diffs) / len(fp32_diffs),
        "vs_fp32_max_abs": max(fp32_diffs),
    }
    figures["ok"] = (
        figures["mean_abs"] <= LOGPROB_TOL["mean_abs"] and figures["max_abs"] <= LOGPROB_TOL["max_abs"]
    )
    return figures


def check_rollout(learner: Any, size: Size, on_gpu: bool) -> dict:
    """`rollout.backend: transformers` (the engine that needs no vLLM) on the learner's saved bf16
    weights: seeded draws, decode tokens/s, and its sampled tokens' logprobs against the learner's
    forward of the same sequences (the rollout/learner mismatch PPO's IS weights see)."""
    from tandem.actors.samples import SampleBatch
    from tandem.actors.transformers_engine import TransformersEngine
    from tandem.config import ModelConfig, RolloutConfig

    prompts_n, n, max_tokens = (16, 4, 256) if on_gpu else (2, 2, size.response_len)
    model = {"dtype": "bfloat16", "max_prompt_len": size.prompt_len, "max_response_len": max_tokens}
    with tempfile.TemporaryDirectory() as saved:
        learner.save_model(saved)
        engine = TransformersEngine(
            ModelConfig(path=saved, **model), RolloutConfig(backend="transformers", max_num_seqs=64)
        )
    g = torch.Generator().manual_seed(5)
    vocab = learner.model.config.vocab_size
    prompts = torch.randint(16, vocab, (prompts_n, size.prompt_len), generator=g).tolist()
    engine.generate(prompts[:1], max_tokens=4, seed=0)  # warm-up
    _sync(engine.device)
    started = time.perf_counter()
    samples = engine.generate(prompts, n=n, seed=1)
    _sync(engine.device)
    seconds = time.perf_counter() - started
    again = engine.generate(prompts[:1], n=n, seed=1)  # the first prompt alone: the same draws?
    batch = SampleBatch.from_samples(samples)
    ours = learner.logprobs(batch.rows(prompts, engine.tokenizer.pad_token_id), range(len(batch)))
    mask = np.arange(batch.logprobs.shape[1])[None, :] < batch.lengths[:, None]
    diffs = np.abs(ours - batch.logprobs)[mask]
    tokens = int(batch.lengths.sum())
    figures = {
        "sequences": len(batch),
        "tokens": tokens,
        "draw_s": seconds,  # not "seconds": `_run` records the whole check's time under that
        "tokens_per_s": tokens / seconds,
        "mean_abs": float(diffs.mean()),
        "max_abs": float(diffs.max()),
        "tolerance": LOGPROB_TOL,
        # bf16 forwards of another batch shape may round a logit differently and so flip a draw
        "same_draws_alone": [s.response_ids for s in again] == [s.response_ids for s in samples[:n]],
    }
    figures["ok"] = (
        tokens > 0
        and figures["mean_abs"] <= LOGPROB_TOL["mean_abs"]
        and figures["max_abs"] <= LOGPROB_TOL["max_abs"]
    )
    del engine
    return figures


def tiny_ppo_step() -> dict[str, float]:
    """One fp32 PPO step of the embedded tiny model on fixed inputs: loss, grad norm, clip fraction.

    The old logprobs are fixed numbers, not the model's, so ratios spread and clipping is exercised;
    everything is seeded on the CPU, so every device sees the same inputs."""
    from tandem.models import resolve_model

    size = Size(
        TINY_QWEN2,
        prompt_len=12,
        response_len=20,
        micro_batch=4,
        global_batch=8,
        warmup_steps=0,
        timed_steps=1,
        lr=1e-3,
    )
    learner = policy_learner(resolve_model("tiny-qwen2"), size, zero_stage=0, precision="fp32", total_steps=1)
    g = torch.Generator().manual_seed(4)
    old = torch.randn(8, 20, generator=g) - 6.0
    examples = with_logprobs(
        rollout_rows(8, 12, 20, learner.model.config.vocab_size, seed=3),
        old_logprobs=old,
        behaviour_logprobs=old,  # the sampler is pi_old: importance weights 1
        advantages=torch.randn(8, 20, generator=g),
    )
    metrics = learner.train_batch(examples)
    return {k: metrics[k] for k in ("loss", "grad_norm", "actor/clip_frac") if k in metrics}


def check_ppo_against_cpu(on_gpu: bool) -> dict:
    """`tiny_ppo_step` here and in a CPU-only child process."""
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "DS_ACCELERATOR": "cpu",
        "MASTER_PORT": str(_free_port()),
    }
    child = subprocess.run(
        [sys.executable, __file__, "--part", "tiny-ppo"],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=600,
    )
    if child.returncode:
        raise RuntimeError(f"CPU child failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
    cpu = json.loads(child.stdout.strip().splitlines()[-1])
    here = tiny_ppo_step()
    rel = {k: abs(here[k] - cpu[k]) / max(abs(cpu[k]), 1e-12) for k in cpu}
    return {
        "device": "cuda" if on_gpu else "cpu (dry run)",
        "here": here,
        "cpu": cpu,
        "rel_diff": rel,
        "rtol": PPO_RTOL,
        "ok": set(here) == set(cpu) and all(r <= PPO_RTOL for r in rel.values()),
    }


def check_weight_sync(learner: Any, bucket_mb: int = 256) -> dict:
    """Pack -> unpack every bucket of the full weights on their device, bit for bit; then one real
    send of the whole stream through a broadcast group of one member."""
    from tandem.cluster.weight_sync import BroadcastGroup, end_stream, pack_bucket, send_bucket, unpack_bucket
    from tandem.learners.sync import iter_full_parameters

    n_tensors = n_bytes = mismatched = 0
    pack_s = 0.0
    for pairs in iter_full_parameters(learner, bucket_mb):
        _sync(learner.device)
        started = time.perf_counter()
        header, flat = pack_bucket(pairs)
        header = json.loads(json.dumps(header))  # as it travels
        unpacked = list(unpack_bucket(header, flat))
        _sync(learner.device)
        pack_s += time.perf_counter() - started
        for (name, sent), (got_name, got) in zip(pairs, unpacked, strict=True):
            same = name == got_name and sent.shape == got.shape and sent.dtype == got.dtype
            same = same and torch.equal(sent.reshape(-1).view(torch.uint8), got.reshape(-1).view(torch.uint8))
            mismatched += not same
            n_tensors, n_bytes = n_tensors + 1, n_bytes + sent.numel() * sent.element_size()
    store = torch.distributed.TCPStore(
        "127.0.0.1", 0, world_size=None, is_master=True, wait_for_workers=False
    )
    group = BroadcastGroup("127.0.0.1", store.port, rank=0, world_size=1, timeout_s=120)
    started = time.perf_counter()
    sent_bytes = sum(send_bucket(group, pairs) for pairs in iter_full_parameters(learner, bucket_mb))
    end_stream(group)
    _sync(learner.device)
    return {
        "tensors": n_tensors,
        "bytes": n_bytes,
        "mismatched": mismatched,
        "pack_unpack_gb_per_s": n_bytes / pack_s / 1e9,
        "group_backend": group.backend,
        "group_sent_bytes": sent_bytes,
        "group_send_s": time.perf_counter() - started,
        "ok": mismatched == 0 and sent_bytes == n_bytes,
    }


# -- driver ---------------------------------------------------------------------------------------


def _run(results: dict, name: str, fn: Callable[[], Any]) -> Any:
    """Run one check; a failure is recorded (and printed) and the other checks go on."""
    started = time.perf_counter()
    extra = None
    try:
        out = fn()
        figures, extra = out if isinstance(out, tuple) else (out, None)
    except Exception as err:  # noqa: BLE001 (one broken check must not hide the others' figures)
        traceback.print_exc()
        figures = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    figures["seconds"] = time.perf_counter() - started
    results["checks"][name] = figures
    print(
        f"[gpu-check] {name}: {'ok' if figures['ok'] else 'FAILED'} ({figures['seconds']:.1f} s)", flush=True
    )
    return extra


def _free(learner: Any) -> None:
    del learner.engine, learner.model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def environment(on_gpu: bool) -> dict:
    import deepspeed
    import transformers

    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "deepspeed": deepspeed.__version__,
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        "date": time.strftime("%Y-%m-%d"),
    }
    env["peak_bf16_tflops"] = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in env["device"]), None)
    return env


def print_table(results: dict) -> None:
    env, checks = results["environment"], results["checks"]
    print(
        f"\ngpu-check on {env['device']} (torch {env['torch']}, transformers {env['transformers']}, "
        f"deepspeed {env['deepspeed']})"
    )
    for name, c in checks.items():
        if "error" in c:
            line = c["error"].splitlines()[0][:100]
        elif name.startswith("train") or name == "plain_baseline":
            mfu = f", MFU {c['mfu']:.1%}" if c["mfu"] is not None else ""
            line = (
                f"{c['params'] / 1e6:.0f}M params, {c['tokens_per_s']:,.0f} tokens/s, "
                f"{c['achieved_tflops']:.1f} TFLOP/s{mfu}"
            )
            if name.startswith("train"):
                line += f"; logprob {c['mean_logprob_before']:.3f} -> {c['mean_logprob_after']:.3f}"
        elif name == "logprob_parity":
            line = (
                f"mean |d| {c['mean_abs']:.2e}, max |d| {c['max_abs']:.2e} nats over {c['tokens']} tokens "
                f"(tol {c['tolerance']['mean_abs']}/{c['tolerance']['max_abs']}; vs fp32 mean "
                f"{c['vs_fp32_mean_abs']:.2e})"
            )
        elif name == "rollout_transformers":
            line = (
                f"{c['sequences']} x {c['tokens'] // c['sequences']} tokens, {c['tokens_per_s']:,.0f} tokens/s; "
                f"vs learner mean |d| {c['mean_abs']:.2e}, max {c['max_abs']:.2e}; "
                f"same draws alone {c['same_draws_alone']}"
            )
        elif name == "ppo_gpu_vs_cpu":
            line = ", ".join(f"{k} {c['here'][k]:.6g} vs {c['cpu'][k]:.6g}" for k in c["cpu"])
        else:
            line = (
                f"{c['tensors']} tensors, {c['bytes'] / 2**20:.0f} MiB bit-exact, "
                f"{c['pack_unpack_gb_per_s']:.1f} GB/s; {c['group_backend']} send {c['group_send_s']:.2f} s"
            )
        print(f"  {'ok ' if c['ok'] else 'BAD'} {name:<16} {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the same checks at tiny size on the CPU")
    parser.add_argument(
        "--out",
        default=os.environ.get("OUT") or str(REPO / "runs" / "gpu-check"),
        help="folder for gpu_check.json",
    )
    parser.add_argument("--part", choices=["tiny-ppo"], help=argparse.SUPPRESS)  # the CPU child
    args = parser.parse_args(argv)
    os.environ.setdefault("TANDEM_CACHE", os.path.expanduser("~/.cache/tandem"))
    _single_rank_env()
    if args.part:
        print(json.dumps(tiny_ppo_step()))
        return 0
    on_gpu = not args.cpu
    if on_gpu and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (use --cpu for the dry run)", file=sys.stderr)
        return 2
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    else:
        # fp32 comparisons mean fp32: no TF32 in matmuls or convolutions.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    size = SIZES["gpu" if on_gpu else "cpu"]
    out = Path(args.out)
    results: dict[str, Any] = {"environment": environment(on_gpu), "size": asdict(size), "checks": {}}
    _run(results, "ppo_gpu_vs_cpu", lambda: check_ppo_against_cpu(on_gpu))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_model_dir(size.model, Path(tmp) / "model"))
        peak = results["environment"]["peak_bf16_tflops"]
        learner = _run(results, "train_bf16_zero2", lambda: check_train(model_dir, size, 2, peak))
        if learner is not None:
            _free(learner)
        learner = _run(
            results,
            "train_bf16_zero0",
            lambda: check_train(model_dir, size, 0, peak, profile_to=out / "profile_zero0.txt"),
        )
        if learner is not None:
            _run(results, "logprob_parity", lambda: check_logprob_parity(learner, size))
            _run(results, "weight_sync_pack", lambda: check_weight_sync(learner))
            _run(results, "rollout_transformers", lambda: check_rollout(learner, size, on_gpu))
            _free(learner)
        _run(results, "plain_baseline", lambda: check_plain_baseline(model_dir, size, peak))
    results["ok"] = all(c["ok"] for c in results["checks"].values()) and set(results["checks"]) == set(CHECKS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(
        f"\n{'all checks passed' if results['ok'] else 'SOME CHECKS FAILED'}; figures in {out / 'gpu_check.json'}"
    )
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
