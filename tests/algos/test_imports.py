"""``tandem.algos`` is pure math: importing it must not pull in the distributed stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("ray", "deepspeed", "vllm", "transformers")


def test_import_pulls_in_no_heavy_dependency() -> None:
    script = f"import sys, tandem.algos\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"tandem.algos imported {result.stdout.strip()}"
