"""The learner path on a CUDA GPU (`pytest -m gpu`; skipped without CUDA, deselected by default):
bf16 logprob parity with transformers, a bf16 ZeRO-2 run that learns, one fp32 PPO step equal to the
CPU's, and weight-sync packing over NCCL. The same checks as `make gpu-check`, at tiny size."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    module._single_rank_env()
    torch.backends.cuda.matmul.allow_tf32 = False
    return module


@pytest.fixture(scope="module")
def model_dir(gpu_check, tmp_path_factory):
    return str(gpu_check.build_model_dir(gpu_check.TINY_QWEN2, tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def learner(gpu_check, model_dir):
    learner = gpu_check.policy_learner(
        model_dir, gpu_check.SIZES["cpu"], zero_stage=0, precision="bf16", total_steps=1
    )
    assert learner.device.type == "cuda" and next(learner.model.parameters()).dtype == torch.bfloat16
    return learner


def test_bf16_logprobs_match_transformers(gpu_check, learner):
    figures = gpu_check.check_logprob_parity(learner, gpu_check.SIZES["cpu"])
    assert figures["mean_abs"] <= gpu_check.LOGPROB_TOL["mean_abs"], figures
    assert figures["max_abs"] <= gpu_check.LOGPROB_TOL["max_abs"], figures
    assert figures["vs_fp32_mean_abs"] > 0  # the learner really computed in bf16


def test_weight_sync_packing_on_cuda_is_bit_exact(gpu_check, learner):
    figures = gpu_check.check_weight_sync(learner)
    assert figures["mismatched"] == 0 and figures["tensors"] > 0
    assert figures["group_backend"] == "nccl" and figures["group_sent_bytes"] == figures["bytes"]


def test_bf16_zero2_ppo_updates_raise_logprobs(gpu_check, model_dir):
    figures, _ = gpu_check.check_train(model_dir, gpu_check.SIZES["cpu"], 2, None)
    assert figures["mean_logprob_after"] > figures["mean_logprob_before"] + 0.1, figures


def test_fp32_ppo_step_matches_cpu(gpu_check):
    figures = gpu_check.check_ppo_against_cpu(on_gpu=True)
    assert figures["ok"], figures
