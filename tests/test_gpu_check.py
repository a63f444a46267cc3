"""`make gpu-check`'s dry run: the GPU check script runs every check at tiny size on the CPU and
writes its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--out", str(tmp_path)],
        capture_output=True,
        check=False,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "all checks passed" in done.stdout
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = results["checks"]
    assert set(checks) == {
        "ppo_gpu_vs_cpu",
        "train_bf16_zero0",
        "train_bf16_zero2",
        "logprob_parity",
        "weight_sync_pack",
        "rollout_transformers",
        "plain_baseline",
    }
    assert all(c["ok"] for c in checks.values())
    for stage in ("train_bf16_zero0", "train_bf16_zero2"):
        c = checks[stage]
        assert c["tokens_per_s"] > 0 and c["mfu"] is None  # no peak known for a CPU
        assert c["mean_logprob_after"] > c["mean_logprob_before"]  # the +1 advantages were followed
    # The child ran on the CPU: same inputs, same fp32 math, so equal to many digits.
    assert checks["ppo_gpu_vs_cpu"]["rel_diff"]["loss"] < 1e-6
    assert checks["weight_sync_pack"]["mismatched"] == 0 and checks["weight_sync_pack"]["tensors"] > 0
    assert checks["plain_baseline"]["tokens_per_s"] > 0
    rollout = checks["rollout_transformers"]
    assert rollout["sequences"] == 4 and rollout["tokens"] > 0 and rollout["same_draws_alone"]
    assert "aten::mm" in (tmp_path / "profile_zero0.txt").read_text()  # one learner step's matmuls, profiled
