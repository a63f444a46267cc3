"""Two PPO steps on a three-node Ray cluster on this machine, each role pinned to a node by the
custom resources in its config section. Run by tests/cluster/test_multinode.py in a process of its
own (a `ray.cluster_utils.Cluster` cannot share a process with the session's local Ray):

    python tests/cluster/multinode_ppo.py OUT.json RUN_DIR

OUT.json gets each node's id by its resource, each role's actors' node ids (as the actors report
them), the run's summary and its metrics rows. Set RAY_TMPDIR to keep the cluster's files (and its
address file) apart from any other Ray on the machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: Node name (also its custom resource) -> the roles the config pins to it.
NODES = {"node_a": ("reward", "reference"), "node_b": ("learner",), "node_c": ("rollout",)}


def _node_id(actor) -> str:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


def main(out: str, run_dir: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from tandem.cluster.runtime import ray_cluster
    from tandem.config import load_config
    from tandem.recipes import ppo
    from tandem.recipes.ppo_roles import Roles

    placement: dict[str, list[str]] = {}

    class PlacedRoles(Roles):
        def _start(self, rm_path):
            super()._start(rm_path)
            placement["policy"] = [_node_id(a) for a in self.policy.actors]
            placement["policy_bundles"] = list(self.policy.node_ids)
            placement["rollout"] = [_node_id(e) for e in self.rollout.engines]
            placement["reward"] = [_node_id(self.reward.actor)]
            placement["reference"] = [_node_id(self.reference.actor)]
            placement["driver"] = [ray.get_runtime_context().get_node_id()]

    ppo.Roles = PlacedRoles  # `ppo.run` starts the roles through this name
    # The head (node_a) also hosts the driver; every node has 2 logical CPUs.
    names = list(NODES)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {names[0]: 1000}, "include_dashboard": False},
    )
    try:
        for name in names[1:]:
            cluster.add_node(num_cpus=2, resources={name: 1000})
        cluster.wait_for_nodes()
        pins = [
            f"{section}.resources={{{node}: 1}}" for node, sections in NODES.items() for section in sections
        ]
        cfg = load_config(
            None,
            [
                f"ray.address={cluster.address}",
                f"run.output_dir={Path(run_dir).parent}",
                f"run.name={Path(run_dir).name}",
                "wandb.mode=disabled",
                "model.max_response_len=12",
                "data.num_train=64",
                "ppo.steps=2",
                "ppo.prompts_per_step=8",
                "ppo.samples_per_prompt=4",
                "ppo.sample_table_every=1000",
                "rollout.kv_cache_mb=32",
                "rollout.max_num_seqs=32",
                "reward.cpus=0.5",
                "reference.cpus=0.5",
                *pins,
                # A reward that spreads within groups (the untrained model never earns the sort task's):
                # step 1 then has gradients, and step 2 samples with moved weights.
                "reward.components=[{kind: function, name: short, path: 'tests.recipes.rewards:short_answer'}]",
            ],
        )
        with ray_cluster(cfg):
            nodes = {r: n["NodeID"] for n in ray.nodes() if n["Alive"] for r in n["Resources"] if r in NODES}
            summary = ppo.run(cfg)
    finally:
        cluster.shutdown()
    from tandem.tracking import read_metrics

    result = {"nodes": nodes, "placement": placement, "summary": summary, "rows": read_metrics(run_dir)}
    Path(out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
