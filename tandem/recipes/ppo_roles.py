"""The PPO job's roles as Ray actors, and the few coarse calls the driver makes on them.

Roles: rollout engines (vLLM), the reward actor, the reference actor, the policy learner group
(DeepSpeed ZeRO) and, when the advantage estimator reads values (GAE), the critic learner group.
Each role's CPUs/GPUs and custom resources come from its config section, so the same config places
roles on one machine or across nodes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Self

import torch

from tandem.cluster.groups import ActorGroup
from tandem.cluster.sharding import shard
from tandem.config import Config, LearnerConfig
from tandem.models.rows import concat_rows
from tandem.recipes import run_dir
from tandem.recipes.ppo_batch import Generation, RolloutBatch, minibatches, widen
from tandem.recipes.ppo_config import colocated_placement, learner_deadlines, needs_critic
from tandem.recipes.run_dir import Checkpoints, Run

# Per-response-token arrays each learner trains on, by role, beside the batch's rows (pi_old only
# when it was computed: see `Roles.needs_old_logprobs`).
TRAIN_KEYS = {"policy": ("old_logprobs", "advantages"), "critic": ("values", "returns")}


class Roles:
    """Starts every role of the job (context manager: all are stopped on exit)."""

    def __init__(self, cfg: Config, rm_path: str | None = None) -> None:
        self.cfg = cfg
        self._groups: list[Any] = []
        self._placement: Any = None  # the policy's placement group, when roles are colocated in it
        self._sync: tuple[Any, list, int] | None = None  # the weight stream in flight
        try:
            self._start(rm_path)
        except BaseException:
            self.shutdown()
            raise

    @staticmethod
    def cpus_needed(cfg: Config) -> int:
        """Logical CPUs a local Ray needs to place every role."""
        r = cfg.rollout
        total = r.num_engines * r.cpus_per_engine + cfg.reward.cpus
        total += cfg.reference.cpus if cfg.reference.host == "actor" else 0
        total += cfg.learner.world_size * cfg.learner.cpus_per_rank
        if needs_critic(cfg):
            total += cfg.critic.world_size * cfg.critic.cpus_per_rank
        return math.ceil(total)

    def _start(self, rm_path: str | None) -> None:
        from tandem.actors.reference import reference_role
        from tandem.actors.reward import make_reward_actor
        from tandem.actors.rollout import RolloutGroup
        from tandem.cluster.healing import Heals, Restartable
        from tandem.data import task_reward
        from tandem.learners.ppo import CriticLearner, PolicyLearner
        from tandem.models import load_tokenizer, resolve_model

        cfg, p = self.cfg, self.cfg.ppo
        path = resolve_model(cfg.model.path)
        self.tokenizer = load_tokenizer(path)
        self.task_reward = task_reward(cfg.data.task) if cfg.data.task else None
        self.rng = random.Random(cfg.run.seed)
        total_steps = p.steps * p.ppo_epochs * p.num_minibatches
        shared = self._placement = colocated_placement(cfg)
        # Asynchronous: the engines generate beside the learners, on half the cores; the learners take
        # the other half, and all of them once the engines are done (`CoreHandoff`).
        sharers = 2 if p.max_staleness else 1
        self.policy = self._learners(
            "policy",
            PolicyLearner,
            cfg.learner,
            path,
            total_steps,
            shared,
            policy_loss=p.policy_loss,
            clip_eps=p.clip_eps,
            entropy_coef=p.entropy_coef,
            kl_loss_coef=p.kl_coef if p.kl_penalty == "loss" else 0.0,
            kl_estimator=p.kl_estimator,
            off_policy=p.off_policy,
            is_cap=p.is_cap,
            is_level=p.is_level,
            reference_dtype=cfg.model.dtype if cfg.reference.host == "policy" else None,
            reference_batch_size=cfg.reference.batch_size,
            score_sharers=self._scorers() if cfg.reference.host == "policy" else None,
        )
        self.critic = None
        if needs_critic(cfg):
            self.critic = self._learners(
                "critic",
                CriticLearner,
                cfg.critic,
                path,
                total_steps,
                shared if "critic" in p.colocate else None,
                value_clip_eps=p.value_clip_eps,
            )
        # Every role builds at once: the learners (made first) set up DeepSpeed and the reward and
        # reference actors start while the engines do (on CPU vLLM's import and engine build keep
        # one core busy for ~10 s, and nothing else ran beside them when these waited for it).
        setups = [(g, g.async_call("setup")) for g in (self.policy, self.critic) if g is not None]
        # The reward and reference actors: healed in place (started again, the call issued again).
        heals = self.actor_heals = Heals("run.max_actor_restarts", cfg.run.max_actor_restarts)
        co, startup_s = {r: (shared, 0) for r in p.colocate}, cfg.run.timeouts.startup_s
        start = partial(make_reward_actor, cfg, rm_path, co.get("reward"))
        self.reward = Restartable("reward actor", start, _asks(cfg.reward), startup_s, heals)
        self.reference = reference_role(cfg, path, self.policy, co.get("reference"), self._scorers(), heals)
        self._groups += [self.reward, self.reference]
        self.rollout = RolloutGroup(cfg, core_sharers=sharers)  # returns once its engines are up
        self.rollout.on_replace = self._engine_replaced
        self._groups.append(self.rollout)
        for group, refs in setups:
            group.collect(refs, "setup")
        self.reward.ready()
        self.reference.ready()
        self.weight_sync = self._weight_sync()
        self.weight_sync.setup()
        self.version = 0  # weight syncs done: the version the engines sample with
        # The policy version (optimizer steps taken) is version + version_offset: a resumed job's
        # fresh engines count from 0 again.
        self.version_offset = 0

    def _scorers(self) -> int:
        """The reference's share of the cores while it scores. Synchronous: every role computing then
        splits them (the reference, a reward model, the policy's pi_old pass or first training
        forward, the critic's value pass; a reference held by the policy computes in its ranks'
        turn). Async: it scores once a batch is drawn, on the engines' half, beside the learners."""
        cfg = self.cfg
        models = sum(c.kind == "model" for c in cfg.reward.components)
        if cfg.ppo.max_staleness:
            return 2 * (1 + models)
        return (2 if cfg.reference.host == "actor" else cfg.learner.world_size) + models + needs_critic(cfg)

    def _weight_sync(self, engines: list | None = None, nodes: list | None = None) -> Any:
        """The broadcast group from the policy to `engines` (default: every engine in service)."""
        from tandem.cluster.weight_sync import WeightSync

        engines, nodes = engines or self.rollout.engines, nodes or self.rollout.node_ids
        return WeightSync(
            self.policy, engines, self.cfg.rollout.sync_bucket_mb, self.cfg.run.timeouts.sync_s, nodes
        )

    def _engine_replaced(self, engine: Any | None, node: str | None, armed: bool) -> None:
        """A new engine, `armed`, first loads the weights and version the others sample with (only
        when called between a sync and the next update, when the policy holds those weights; at
        version 0 it started with them). The broadcast group is made again, over the engines now
        in service, at the next sync."""
        if engine is not None and armed and self.version > 0:
            self._weight_sync([engine], [node]).sync(self.version)
        self.weight_sync = self._weight_sync()

    def _learners(
        self, role: str, cls: type, lc: LearnerConfig, path: str, total_steps: int, placement: Any, **kwargs
    ) -> ActorGroup:
        """A learner group; in `placement` (rank i in bundle i) when given, else in its own."""
        where = (
            {}
            if placement is None
            else {"placement_group": placement, "bundle_indices": range(lc.world_size)}
        )
        # A colocated critic goes where the policy's bundles are: it asks for no custom resources.
        resources = lc.resources if placement is None or role == "policy" else None
        t = self.cfg.run.timeouts
        kwargs["max_nonfinite_steps"] = self.cfg.ppo.max_nonfinite_steps
        group = ActorGroup(
            role,
            cls,
            lc.world_size,
            cpus_per_actor=lc.cpus_per_rank,
            gpus_per_actor=lc.gpus_per_rank,
            strategy=lc.placement,
            resources=resources,
            args=(lc, path, total_steps, self.cfg.run.seed),
            kwargs=kwargs,
            timeout_s=t.train_s,
            deadlines=learner_deadlines(t),
            ready_timeout_s=t.startup_s,
            **where,
        )
        self._groups.append(group)
        return group

    # -- the stages ---------------------------------------------------------------------------

    def start_generation(self, step: int, prompts: list) -> Generation:
        """Start drawing step `step`'s samples with the engines' current weights; returns at once.
        The seed comes from the run's seed and the step, so a batch is the same whenever it is drawn."""
        from tandem.data import prompt_ids, prompt_text

        # Cut as the engines cut (from the left; only with data.truncate_prompts, else checked at load).
        ids = [prompt_ids(self.tokenizer, q)[-self.cfg.model.max_prompt_len :] for q in prompts]
        seed = random.Random(self.cfg.run.seed * 1_000_003 + step).randrange(1 << 31)
        request = self.rollout.submit("draw", ids, n=self.cfg.ppo.samples_per_prompt, seed=seed)
        gen = Generation(
            step, ids, [prompt_text(q) for q in prompts], request=request, version_offset=self.version_offset
        )
        # Scored as soon as drawn: Ray runs these once the engines' answers exist, without a round
        # trip through this driver, and (asynchronous) while the learners train on the batch before.
        draws = [share.ref for share in request.shares]
        # A policy-hosted reference waits for its turn on the learner instead (`score`).
        hosted = self.cfg.reference.host == "policy"
        ref_call = None if hosted else self.reference.submit("logprobs_of_draws", ids, *draws)
        gen.scoring = (self.reward.submit("score_draws", gen.prompt_texts, *draws), ref_call)
        return gen

    def finish_generation(self, gen: Generation) -> RolloutBatch:
        """Wait for a generation; refuses samples more than `ppo.max_staleness` policy versions behind
        the learners (which hold version step - 1 when step `gen.step` trains)."""
        versions = gen.result().weight_versions
        learner_version, limit = gen.step - 1, self.cfg.ppo.max_staleness
        stale = sorted({int(v) for v in versions if learner_version - v > limit})
        if stale:
            raise RuntimeError(
                f"off-policy samples for step {gen.step}: drawn with policy version(s) {stale}, more than "
                f"ppo.max_staleness={limit} behind the policy being trained (version {learner_version})"
            )
        return gen.batch()

    def needs_old_logprobs(self) -> bool:
        """pi_old is a pass of its own only when the weights move before the batch's last minibatch;
        with one optimizer step per batch the training forward is pi_old (see `PolicyLearner`)."""
        return self.cfg.ppo.ppo_epochs * self.cfg.ppo.num_minibatches > 1

    def score(self, batch: RolloutBatch) -> list[float] | None:
        """Fill scores, reward components, reference (and, when needed, pi_old) logprobs, values; all
        roles at once, each reading the batch's rows from the object store.

        Returns the task's true rewards (None without a built-in task): logged, never trained on."""
        import ray

        from tandem.models.rows import Rows

        width = batch.mask.shape[1]
        rows = Rows.from_ids(
            batch.prompt_ids,
            batch.responses_ids(),
            self.tokenizer.pad_token_id,
            behaviour_logprobs=batch.rollout_logprobs,
        )
        batch.rows = ray.put(rows)
        p = self.cfg.ppo
        # Drawn now (the critic's first: it trains first), so the policy's first training forward can
        # be made while the batch is scored.
        batch.minibatches = {
            r: minibatches(self.rng, len(batch), p.ppo_epochs, p.num_minibatches)
            for r in ("critic", "policy")
            if r in self.learner_groups()
        }
        # None: restored from a checkpoint, an engine's share drawn again, or a policy-hosted reference.
        reward_call, ref_call = batch.scoring or (None, None)
        if reward_call is None:
            reward_call = self.reward.submit("score", batch.prompts, batch.responses)
        if ref_call is None:
            ref_call = self.reference.submit("logprobs", batch.rows)
        policy_refs = critic_refs = prepared = None
        if self.needs_old_logprobs():
            policy_refs = self.policy.async_call_per_rank("logprobs", _shards(self.policy, batch))
        elif not p.max_staleness:  # synchronous: the policy would wait for the scores (`prepare_rollout`)
            first = shard(batch.minibatches["policy"][0], self.policy.world_size)
            prepared = self.policy.async_call_per_rank("prepare_rollout", [(batch.rows, i) for i in first])
        if self.critic is not None:
            critic_refs = self.critic.async_call_per_rank("values", _shards(self.critic, batch))
        deadline = self.cfg.run.timeouts.score_s
        result = self.reward.result(reward_call, deadline)
        batch.scores = torch.tensor(result.total, dtype=torch.float32)
        batch.reward_components = {k: torch.tensor(v) for k, v in result.components.items()}
        batch.ref_logprobs = widen(self.reference.result(ref_call, deadline), width)
        if policy_refs is not None:
            batch.old_logprobs = widen(concat_rows(self.policy.collect(policy_refs, "logprobs")), width)
        elif prepared is not None:
            self.policy.collect(prepared, "prepare_rollout")
        if critic_refs is not None:
            batch.values = widen(concat_rows(self.critic.collect(critic_refs, "values")), width)
        if self.task_reward is None:
            return None
        return self.task_reward(batch.prompts, batch.responses)

    def update(self, role: str, batch: RolloutBatch, beside: Sequence[Any] = ()) -> dict[str, float]:
        """ppo_epochs passes over the batch in num_minibatches shuffled minibatches (one optimizer
        step each, drawn when the batch was scored) on the role's learner group; metrics averaged over
        the steps. The per-token arrays to train on go to the object store once; each rank is sent its
        rows' indices. `beside`: see `PolicyLearner.train_rollout`."""
        import ray

        from tandem.models.rows import Rows

        group = self.policy if role == "policy" else self.critic
        p = self.cfg.ppo
        keys = [k for k in TRAIN_KEYS[role] if getattr(batch, k) is not None]
        if role == "policy" and p.kl_penalty == "loss":
            keys.append("ref_logprobs")
        train = ray.put(Rows(**{k: getattr(batch, k).numpy() for k in keys}))
        sums: dict[str, float] = {}
        maxima: dict[str, float] = {}
        for rows in batch.minibatches[role]:
            parts = shard(rows, group.world_size)
            per_rank = group.call_per_rank(
                "train_rollout", [(batch.rows, train, part, beside) for part in parts]
            )
            metrics = per_rank[0]  # global metrics: the same on every rank
            for k, v in metrics.items():
                if k.endswith("_max"):
                    maxima[k] = max(maxima.get(k, v), v)
                else:
                    sums[k] = sums.get(k, 0.0) + v
        prefix = "actor" if role == "policy" else "critic"
        steps = p.ppo_epochs * p.num_minibatches
        totals = {
            f"perf/{prefix}_{k}": sums.pop(f"perf/{k}")
            for k in ("learner_s", "learner_all_cores_s", "early_forwards")
        }
        out = {k: v / steps for k, v in sums.items()} | maxima | totals
        return {(k if "/" in k else f"{prefix}/{k}"): v for k, v in out.items()}

    def sync_weights(self) -> None:
        """Start streaming the policy's weights to every engine, once the previous stream is checked
        done. Engines sample with the new version in the calls made after this one (once those made
        before are done), and the learners' next calls wait for the stream too, so nothing here
        does: an engine loads while the driver goes on. An engine found dead first is replaced,
        and loads the weights with the others."""
        from tandem.actors.rollout_request import heal_dead

        self.finish_sync()
        heal_dead(self.rollout)
        self.version += 1
        self._sync = (self.weight_sync, self.weight_sync.start(self.version), self.version)

    def finish_sync(self) -> None:
        """Wait for the weight stream in flight, if any; an error if an engine did not load it."""
        if self._sync is not None:
            sync, calls, version = self._sync
            self._sync = None
            versions = sync.finish(calls)
            if set(versions) != {version}:
                raise RuntimeError(f"engines report weight versions {versions} after sync {version}")

    # -- checkpoints --------------------------------------------------------------------------

    def learner_groups(self) -> dict[str, ActorGroup]:
        return {"policy": self.policy, **({"critic": self.critic} if self.critic else {})}

    def save(self, run: Run, step: int, state: dict[str, Any]) -> Path:
        return run.checkpoints.save(self.learner_groups(), step, {"rng": self.rng.getstate(), **state})

    def restore(self, checkpoint: Path) -> dict[str, Any]:
        """Load every learner from `checkpoint`, then push the restored policy to the engines."""
        for name, group in self.learner_groups().items():
            group.call("load", str(checkpoint / name))
        state = Checkpoints.read_state(checkpoint)
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.sync_weights()
        self.version_offset = state["step"] - self.version
        return state

    def export_final(self, run: Run) -> Path:
        return run_dir.export_final(run, run.checkpoints.latest() / "policy")

    # -- lifecycle ----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every role and free its placement groups, each even if another fails (a dead actor)."""
        import contextlib

        for group in self._groups:
            with contextlib.suppress(Exception):
                group.shutdown()
        self._groups = []
        if self._placement is not None:  # after its actors: a group in use cannot go
            from ray.util.placement_group import remove_placement_group

            with contextlib.suppress(Exception):
                remove_placement_group(self._placement)
            self._placement = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _shards(group: ActorGroup, batch: RolloutBatch) -> list[tuple]:
    """Per rank: (the batch's rows ref, this rank's row indices)."""
    return [(batch.rows, s) for s in shard(list(range(len(batch))), group.world_size)]


def _asks(section: Any) -> dict[str, float]:
    return {"CPU": section.cpus, "GPU": section.gpus}
