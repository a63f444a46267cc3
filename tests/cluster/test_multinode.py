"""Roles placed across nodes by their config's custom resources, on a real multi-node Ray cluster
(`ray.cluster_utils.Cluster`: three Ray nodes on this machine), and two PPO steps across them.

The cluster runs in a child process (tests/cluster/multinode_ppo.py) with its own Ray temp dir, so
it never touches the session's local Ray; whatever it leaves behind on failure is stopped here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .multinode_ppo import NODES
from .test_submit import stop_processes_under

pytestmark = pytest.mark.slow  # end to end: real Ray, vLLM and DeepSpeed processes

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_roles_land_on_the_nodes_their_config_names(tmp_path):
    # A short temp dir: Ray's unix socket paths must stay under ~107 characters.
    ray_tmp = tempfile.mkdtemp(prefix="tmn", dir="/tmp")
    out, run_dir = tmp_path / "result.json", tmp_path / "runs" / "multinode"
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / "multinode_ppo.py"), str(out), str(run_dir)],
            check=False,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        stop_processes_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(out.read_text())

    nodes, placed = result["nodes"], result["placement"]
    assert sorted(nodes) == sorted(NODES) and len(set(nodes.values())) == len(NODES)  # three distinct nodes
    where = {
        "learner": ["policy", "policy_bundles"],
        "rollout": ["rollout"],
        "reward": ["reward"],
        "reference": ["reference"],
    }
    for node, sections in NODES.items():
        for section in sections:
            for role in where[section]:
                assert placed[role] == [nodes[node]] * len(placed[role]) and placed[role], (role, node)
    assert placed["driver"] == [nodes["node_a"]]  # the driver stayed on the head

    # Two steps across the nodes: step 2 sampled on node_c with the weights node_b's learner trained
    # in step 1 (the policy moved off the reference, yet engine and learner logprobs agree).
    assert result["summary"]["steps"] == 2 and "final_model" in result["summary"]
    first, second = result["rows"]
    assert first["actor/grad_norm"] > 0 and second["kl/mean"] != 0  # (k1 KL estimates may be negative)
    assert first["offpolicy/logprob_mismatch"] < 1e-4 and second["offpolicy/logprob_mismatch"] < 1e-4
