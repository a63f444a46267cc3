"""The entrypoint of submitted jobs: a Python without tandem's stack gets one clear line (exit 2),
one with it runs the tandem command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(python: str, *args: str) -> subprocess.CompletedProcess:
    # PYTHONPATH as Ray Jobs' py_modules gives it: tandem importable, the stack only if installed.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run(
        [python, "-m", "tandem.cluster.job_entry", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        timeout=120,
    )


def _python_without_torch() -> str | None:
    for python in ("/usr/bin/python3", "/bin/python3"):
        if Path(python).is_file():
            probe = subprocess.run([python, "-c", "import torch"], capture_output=True, check=False)
            if probe.returncode != 0:
                return python
    return None


def test_a_python_without_the_stack_says_what_to_do():
    python = _python_without_torch()
    if python is None:
        pytest.skip("no Python without torch on this machine")
    out = _run(python, "ppo", "job.yaml")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert f"the job's Python ({python}) lacks ray, torch" in out.stderr
    assert "ray start --head" in out.stderr


def test_a_python_with_the_stack_runs_the_command():
    out = _run(sys.executable, "config", "show", "configs/generate.yaml", "ppo.steps=9")
    assert out.returncode == 0, out.stderr
    assert "steps: 9" in out.stdout
