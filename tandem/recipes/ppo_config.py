"""What PPO derives from the job's config: the learners' batch sizes and whether a critic trains."""

from __future__ import annotations

import math
from typing import Any, Literal

from tandem.algos import ADV_ESTIMATORS, get_adv_est
from tandem.config import Config, LearnerConfig, TimeoutsConfig
from tandem.errors import UserError


def ppo_learner_config(cfg: Config, section: Literal["learner", "critic"]) -> LearnerConfig:
    """The policy's (`learner`) or critic's (`critic`) section with PPO's batch sizes: one optimizer
    step per minibatch of the rollout batch.

    A size the user left unset is derived (global: the minibatch; micro: the default, cut to divide a
    rank's share); one the user set is kept, and a contradiction is a UserError naming both keys.
    """
    p, learner = cfg.ppo, getattr(cfg, section)
    rollout_batch = p.prompts_per_step * p.samples_per_prompt
    if rollout_batch % p.num_minibatches:
        raise UserError(
            f"ppo.num_minibatches {p.num_minibatches} must divide the rollout batch "
            f"(prompts_per_step x samples_per_prompt = {rollout_batch})"
        )
    minibatch = rollout_batch // p.num_minibatches
    if minibatch % learner.world_size:
        raise UserError(
            f"a PPO minibatch of {minibatch} sequences does not split over "
            f"world_size {learner.world_size} learner ranks"
        )
    per_rank = minibatch // learner.world_size
    minibatch_keys = (
        f"ppo.prompts_per_step x ppo.samples_per_prompt / ppo.num_minibatches = "
        f"{p.prompts_per_step} x {p.samples_per_prompt} / {p.num_minibatches}"
    )
    given = learner.model_fields_set
    if "global_batch_size" in given and learner.global_batch_size != minibatch:
        raise UserError(
            f"{section}.global_batch_size {learner.global_batch_size} contradicts PPO's optimizer "
            f"step of one minibatch, {minibatch} sequences ({minibatch_keys}); leave "
            f"{section}.global_batch_size unset to have it derived, or change ppo.num_minibatches"
        )
    if "micro_batch_size" in given and per_rank % learner.micro_batch_size:
        raise UserError(
            f"{section}.micro_batch_size {learner.micro_batch_size} does not divide a rank's share "
            f"of a PPO minibatch, {per_rank} sequences ({minibatch_keys}, over {section}.world_size "
            f"{learner.world_size}); set it to a divisor of {per_rank}, or leave it unset to have "
            f"it derived"
        )
    micro = (
        learner.micro_batch_size
        if "micro_batch_size" in given
        else math.gcd(learner.micro_batch_size, per_rank)
    )
    return learner.model_copy(update={"global_batch_size": minibatch, "micro_batch_size": micro})


def ppo_job_config(cfg: Config) -> Config:
    """`cfg` with the learner's (and the critic's, when there is one) batch sizes derived from the
    `ppo` section (`ppo_learner_config`); UserError where they contradict it."""
    return cfg.model_copy(
        update={
            "learner": ppo_learner_config(cfg, "learner"),
            **({"critic": ppo_learner_config(cfg, "critic")} if needs_critic(cfg) else {}),
        }
    )


def needs_critic(cfg: Config) -> bool:
    """Whether the job trains a critic: its advantage estimator reads values."""
    return get_adv_est(cfg.ppo.advantage).needs_critic


def learner_deadlines(t: TimeoutsConfig) -> dict[str, float]:
    """Each learner method the driver calls, with the deadline of its kind of call."""
    return {
        "setup": t.startup_s,
        "logprobs": t.score_s,
        "values": t.score_s,
        "prepare_rollout": t.score_s,
        "train_rollout": t.train_s,
        "save": t.checkpoint_s,
        "load": t.checkpoint_s,
    }


def colocated_placement(cfg: Config) -> Any:
    """The policy's placement group, sized for the roles `ppo.colocate` puts in it; None when
    nothing is colocated (the policy group then makes its own)."""
    import uuid

    from tandem.cluster.groups import make_placement_group

    co = cfg.ppo.colocate
    if "reference" in co and cfg.reference.host == "policy":
        raise UserError(
            "ppo.colocate: the reference is held by policy rank 0 (reference.host: policy), so there "
            "is no reference actor to colocate; drop it from ppo.colocate or set reference.host: actor"
        )
    if not co:
        return None
    lc, cpus, gpus = cfg.learner, cfg.learner.cpus_per_rank, cfg.learner.gpus_per_rank
    if "critic" in co:
        if not needs_critic(cfg) or cfg.critic.world_size != lc.world_size:
            with_critic = " or ".join(n for n in ADV_ESTIMATORS.names() if get_adv_est(n).needs_critic)
            raise UserError(
                "ppo.colocate: the critic colocates rank by rank with the policy, so it needs "
                f"a ppo.advantage that trains a critic ({with_critic}) and "
                f"critic.world_size = learner.world_size ({lc.world_size}); "
                f"got {cfg.ppo.advantage!r} and {cfg.critic.world_size}"
            )
        cpus, gpus = cpus + cfg.critic.cpus_per_rank, gpus + cfg.critic.gpus_per_rank
    singles = [
        section for name, section in (("reference", cfg.reference), ("reward", cfg.reward)) if name in co
    ]
    extra = {"CPU": sum(x.cpus for x in singles), "GPU": sum(x.gpus for x in singles)}
    return make_placement_group(
        lc.world_size,
        cpus,
        gpus,
        lc.placement,
        name=f"policy-{uuid.uuid4().hex[:8]}",
        resources=lc.resources,
        first_bundle_extra=extra,
    )
