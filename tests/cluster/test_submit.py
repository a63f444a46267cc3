"""`tandem submit` against a real Ray head started (and stopped) by this test."""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow  # end to end: real Ray, vLLM and DeepSpeed processes

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A free port below the kernel's ephemeral range. A port the OS hands out for port 0 could be
    taken before the head binds it: its raylet binds port 0 for the object manager once started,
    and took the agent's port so once ("address already in use"; the agent never came up)."""
    linux = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(linux.read_text().split()[0]) if linux.exists() else 32768  # macOS's starts at 49152
    for port in random.sample(range(20000, low), 100):
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in 20000-{low - 1}")


def stop_processes_under(temp_dir: str) -> None:
    """Stop only this head's processes (all carry its temp dir); `ray stop` would stop every cluster."""
    procs = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    for p in procs:
        p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=3)  # its idle workers outlast SIGTERM: do not wait on them
    for p in alive:
        p.kill()


@pytest.fixture(scope="module")
def auth_env():
    """Ray 2.60 heads may require token auth: give this head and its clients a token of their own."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture(scope="module")
def ray_head(auth_env):
    # A short temp dir: Ray's unix socket paths must stay under ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="trh", dir="/tmp")
    dashboard = free_port()
    # The head's jobs run `python`: put this venv first, as a user starts Ray from an active venv.
    env = {**os.environ, **auth_env, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        [
            BIN / "ray",
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={free_port()}",
            f"--dashboard-port={dashboard}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--temp-dir={temp_dir}",
            "--num-cpus=2",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
            # The job agent's default port (52365) may be held by another Ray on this machine (the
            # test session's own): its agent would then never come up ("No available agent").
            # Chosen outside the ephemeral range, like the ports above (see `free_port`).
            f"--dashboard-agent-listen-port={free_port()}",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=120,
    )
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        stop_processes_under(temp_dir)


def test_submit_runs_job_on_the_head_and_streams_logs(ray_head, auth_env, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("run:\n  name: submitted\ndata:\n  task: sort\n  num_eval: 4\n")
    started = time.time()
    out = subprocess.run(
        [
            BIN / "tandem",
            "submit",
            str(config),
            "--address",
            ray_head,
            "--job",
            "generate",
            "--follow",
            "model.max_response_len=8",  # an override after the options (was "unrecognized arguments")
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, **auth_env},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "submitted job raysubmit_" in out.stdout
    assert "mean true reward over 4 prompts" in out.stdout  # the job's own output, streamed back
    assert "finished: SUCCEEDED" in out.stdout
    assert time.time() - started < 600


def test_submit_unknown_job_is_a_user_error(ray_head, tmp_path):
    out = subprocess.run(
        [BIN / "tandem", "submit", "configs/generate.yaml", "--address", ray_head, "--job", "nope"],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 2 and "is not a tandem job" in out.stderr
