"""The PPO driver end to end at toy scale on real Ray, vLLM and DeepSpeed: stop/resume equivalence,
one and several ranks per role (ZeRO-3, a critic), and a reward that actually rises.

The reward is `tests.recipes.rewards:short_answer` (shorter responses score higher): unlike the sort
task's true reward, which the untrained tiny model never earns, it spreads inside every group, so
advantages, losses and updates are never trivially zero.
"""

from __future__ import annotations

import math
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import pytest

from tandem.actors.reference import HostedReference
from tandem.config import load_config
from tandem.errors import UserError
from tandem.recipes import ppo
from tandem.recipes.ppo_config import ppo_learner_config
from tandem.recipes.ppo_roles import Roles
from tandem.tracking import read_metrics

pytestmark = pytest.mark.slow  # end to end: real Ray, vLLM and DeepSpeed processes

TOY = [
    "wandb.mode=disabled",
    "model.max_response_len=16",
    "data.num_train=256",
    "ppo.prompts_per_step=8",
    "ppo.samples_per_prompt=4",
    "ppo.num_minibatches=2",
    "ppo.sample_table_every=1000",
    "learner.optim.warmup_steps=1",
    "critic.optim.warmup_steps=1",
    "rollout.kv_cache_mb=32",
    "rollout.max_num_seqs=32",
    "reward.cpus=0.5",
    "reference.cpus=0.5",
    "reward.components=[{kind: function, name: short, path: 'tests.recipes.rewards:short_answer'}]",
]
REPO = Path(__file__).resolve().parents[2]
#: Per-step metrics a resumed run must reproduce.
RESUME_KEYS = (
    "reward/mean",
    "actor/pg_loss",
    "kl/mean",
    "rollout/response_length/mean",
    "rollout/logprob_mismatch",
    "actor/grad_norm",
    "advantage/abs_mean",
)


def _cfg(tmp_path, name, *extra):
    return load_config(None, [*TOY, f"run.output_dir={tmp_path}", f"run.name={name}", *extra])


def _rows(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir)}


def _warm_imports():
    # transformers' lazy imports are not thread-safe: resolve them before the threads start.
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from tandem.models import load_tokenizer

    load_tokenizer("tiny-qwen2")


class RecordingRoles(Roles):
    """`Roles` that records its layout (engines, policy ranks, critic ranks), the engines' weight
    versions after every sync (read from the engines, not the driver's counter) and how many calls
    each update was told compute beside it."""

    made: ClassVar[list[RecordingRoles]] = []

    def __init__(self, *args, **kwargs) -> None:
        self.synced: list[list[int]] = []
        self.beside: list[tuple[str, int]] = []  # (role, calls computing beside) of each update
        super().__init__(*args, **kwargs)
        self.layout = (
            len(self.rollout.engines),
            self.policy.world_size,
            self.critic.world_size if self.critic else 0,
        )
        self.placement_groups = {
            name: [_placement_group_of(a) for a in actors]
            for name, actors in (
                ("policy", self.policy.actors),
                ("critic", self.critic.actors if self.critic else []),
                ("reference", [self.reference.actor]),
                ("reward", [self.reward.actor]),
                ("engines", self.rollout.engines),
            )
        }
        RecordingRoles.made.append(self)

    def update(self, role, batch, beside=()):
        self.beside.append((role, len(beside)))
        return super().update(role, batch, beside)

    def sync_weights(self) -> None:
        super().sync_weights()
        self.synced.append([info["weight_version"] for info in self.rollout.wait_ready()])


def _placement_group_of(actor) -> str | None:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_placement_group_id()))


@pytest.fixture(scope="module")
def recording():
    """`ppo.run` starts `RecordingRoles`; yields the list of those it made."""
    RecordingRoles.made = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ppo, "Roles", RecordingRoles)
        yield RecordingRoles.made


def _roles(made: list[RecordingRoles], name: str) -> list[RecordingRoles]:
    return [r for r in made if r.cfg.run.name == name]


def _final_weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


LEARN_STEPS, STOP_AT = 8, 4
# Fixed thread counts: asynchronous mode halves the default ones, and another count sums in another
# order, so the two modes could not be compared to the bit.
LEARNING = [
    f"ppo.steps={LEARN_STEPS}",
    "learner.optim.lr=1e-2",
    "ppo.ppo_epochs=2",
    "ppo.kl_coef=0.001",
    "learner.threads=1",
    "rollout.threads=1",
]


@pytest.fixture(scope="module")
def learn(ray_session, recording, tmp_path_factory):
    """One engine x one policy rank, GRPO, LEARN_STEPS steps at a learning rate that shows progress
    within them. Returns the root folder. (A synchronous job stopped and resumed is
    tests/faults/test_kill.py's, killed and restarted, against an uninterrupted one.)"""
    root = tmp_path_factory.mktemp("ppo")
    _warm_imports()
    summary = ppo.run(_cfg(root, "straight", *LEARNING))
    assert summary["steps"] == LEARN_STEPS and "final_model" in summary
    return root


def test_one_engine_one_rank(learn, recording):
    (roles,) = _roles(recording, "straight")
    assert roles.layout == (1, 1, 0)
    # Nothing colocated: the policy group has its own placement group, the single actors none.
    assert roles.placement_groups["reference"] == roles.placement_groups["reward"] == [None]
    assert None not in roles.placement_groups["policy"]
    assert roles.synced == [[v] for v in range(1, LEARN_STEPS + 1)]  # the engine loaded every step's weights
    rows = _rows(learn / "straight")
    assert sorted(rows) == list(range(1, LEARN_STEPS + 1))
    _check_sane(rows)
    assert not any(k.startswith("critic/") for k in rows[1])
    # Two epochs: the policy's pass while the batch is scored is pi_old's, not the first training forward.
    assert all(
        row["perf/actor_early_forwards"] == 0 and "rollout/logprob_mismatch" in row for row in rows.values()
    )


#: LEARNING, asynchronous: the engines draw one batch ahead, and TIS corrects for it.
ASYNC = [*LEARNING, "ppo.max_staleness=1", "ppo.off_policy=tis"]


@pytest.fixture(scope="module")
def learn_async(ray_session, recording, tmp_path_factory):
    """As `learn`, asynchronous (ASYNC) ("straight"); and the same job stopped after STOP_AT steps,
    then resumed ("halves"). The straight run and the first half run at once (they share the waits)."""
    root = tmp_path_factory.mktemp("ppo_async")
    straight, halves = _cfg(root, "straight", *ASYNC), _cfg(root, "halves", *ASYNC)
    _warm_imports()
    with ThreadPoolExecutor(2) as pool:
        full = pool.submit(ppo.run, straight)
        first = pool.submit(ppo.run, halves, None, STOP_AT)
        assert full.result()["steps"] == LEARN_STEPS and first.result()["steps"] == STOP_AT
    assert ppo.run(halves, resume_dir=str(root / "halves"))["steps"] == LEARN_STEPS
    return root


def test_async_samples_are_one_version_behind_and_corrected(learn, learn_async, recording):
    rows, sync = _rows(learn_async / "straight"), _rows(learn / "straight")
    assert sorted(rows) == list(range(1, LEARN_STEPS + 1))
    _check_sane_async(rows)
    # Step 1's batch is drawn with the initial weights in both modes, from the same seed: the async
    # machinery (batches started ahead, versions, corrections) leaves the first step exactly as the
    # synchronous loop computes it.
    assert {k: rows[1][k] for k in RESUME_KEYS} == {k: sync[1][k] for k in RESUME_KEYS}
    assert rows[1]["offpolicy/staleness_max"] == 0
    for step in range(2, LEARN_STEPS + 1):
        # Drawn while the previous step trained: one version behind, and the learner saw it.
        assert rows[step]["offpolicy/staleness_mean"] == rows[step]["offpolicy/staleness_max"] == 1, step
        assert rows[step]["offpolicy/is_ratio_max"] != pytest.approx(1.0, abs=1e-4), step
    assert all(r["offpolicy/staleness_max"] == 0 for r in sync.values())
    assert all(r["perf/actor_early_forwards"] == 0 for r in rows.values())  # scored before it trains
    # Each update but the last is told of the next batch's draw and scoring (reward, reference), which
    # compute beside it; with `learner.threads` set, as here, its learners keep their threads.
    (roles,) = [r for r in _roles(recording, "straight") if r.cfg.ppo.max_staleness]
    assert roles.beside == [("policy", 3)] * (LEARN_STEPS - 1) + [("policy", 0)]


def test_async_stop_and_resume_equals_straight_run(learn_async, recording):
    # The resumed job pushed the checkpoint's weights to its fresh engine before sampling (version 1).
    (_, resumed) = _roles(recording, "halves")
    assert resumed.synced == [[v] for v in range(1, LEARN_STEPS - STOP_AT + 2)]
    # Sampling is seeded by step, minibatches are shuffled by the driver's checkpointed RNG, every
    # learner's weights, optimizer, schedule and RNG come back from the checkpoint, and so does the
    # batch drawn ahead at the stop (the weights it came from are gone): the runs agree to the bit.
    a, b = _rows(learn_async / "straight"), _rows(learn_async / "halves")
    assert sorted(a) == sorted(b) == list(range(1, LEARN_STEPS + 1))
    for step in a:
        keys = (*RESUME_KEYS, "offpolicy/is_ratio_mean", "offpolicy/staleness_mean")
        assert {k: b[step][k] for k in keys} == {k: a[step][k] for k in keys}, step
    assert a[STOP_AT + 1]["reward/mean"] != a[STOP_AT]["reward/mean"]  # fresh samples after the resume
    wa, wb = _final_weights(learn_async / "straight"), _final_weights(learn_async / "halves")
    assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)
    # DeepSpeed's optimizer state is sharded by rank: another policy layout is refused up front.
    other = _cfg(learn_async, "halves", *ASYNC, "learner.world_size=2")
    with pytest.raises(UserError, match="was saved with learner"):
        ppo.run(other, resume_dir=str(learn_async / "halves"))


def test_async_learns_like_sync(learn, learn_async):
    # The same number of samples: the one-step-stale, importance-weighted run learns too, and not far
    # behind at this learning rate (the demo-scale comparison is in the README).
    a, s = _rows(learn_async / "straight"), _rows(learn / "straight")
    last = [statistics.fmean(r[k]["reward/mean"] for k in (LEARN_STEPS - 1, LEARN_STEPS)) for r in (a, s)]
    first = statistics.fmean(a[k]["reward/mean"] for k in (1, 2))
    assert last[0] > first + 0.15 and last[0] > last[1] - 0.2, (last, first)


def _check_sane_async(rows: dict[int, dict]) -> None:
    for step, row in rows.items():
        bad = {k: v for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, (step, bad)
        assert 0 <= row["offpolicy/truncated_frac"] < 0.5 and row["offpolicy/is_ratio_mean"] > 0.5, step


def test_reward_rises(learn):
    rows = _rows(learn / "straight")
    reward = [rows[s]["reward/mean"] for s in sorted(rows)]
    length = [rows[s]["rollout/response_length/mean"] for s in sorted(rows)]
    # A sign flip or a skipped sync leaves the reward flat or falling (samples come from the engines).
    assert statistics.fmean(reward[-2:]) > statistics.fmean(reward[:2]) + 0.15, reward
    assert statistics.fmean(length[-2:]) < statistics.fmean(length[:2]) - 2, length  # it learned to stop


def _check_sane(rows: dict[int, dict]) -> None:
    for step, row in rows.items():
        bad = {k: v for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, (step, bad)
        # Learner and engine hold the same weights (fp32): a missed or partial load shows here, in
        # the training forward and in the pi_old pass when there is one.
        assert row["offpolicy/logprob_mismatch"] < 1e-4, step
        if "rollout/logprob_mismatch" in row:
            assert row["rollout/logprob_mismatch"] < 1e-4 and row["rollout/logprob_mismatch_max"] < 1e-3, step
        assert 0 < row["rollout/response_length/mean"] <= 16
        assert 0 <= row["reward/mean"] <= 1 and row["reward/short"] == row["reward/mean"]
        assert {"actor/pg_loss", "actor/entropy", "kl/mean", "timing/weight_sync"} <= set(row)
        assert row["actor/entropy"] > 0 and row["actor/grad_norm"] > 0
    # Step 1 samples with the reference's weights (the KL is the engine's against the reference's
    # forward: 0 up to kernels); its update moves the policy off them (k1 may be < 0).
    assert abs(rows[1]["kl/mean"]) < 1e-4 and abs(rows[2]["kl/mean"]) > 1e-3


def test_two_engines_two_ranks_zero3_with_colocated_critic(ray_session, recording, tmp_path):
    """Also the reference held by policy rank 0 (`reference.host: policy`): its logprobs go to both
    ZeRO-3 ranks (the KL as a loss), and the KL checks below see a reference that moved with the
    policy (KL 0 at step 2) or that is not the initial weights (KL > 0 at step 1)."""
    cfg = _cfg(
        tmp_path,
        "zero3",
        "ppo.steps=2",
        "rollout.num_engines=2",
        "learner.world_size=2",
        "learner.zero_stage=3",
        "ppo.advantage=gae",
        "critic.world_size=2",
        "critic.zero_stage=3",
        "ppo.colocate=[critic,reward]",
        "reference.host=policy",
        "ppo.kl_penalty=loss",  # the reference logprobs go to the ZeRO-3 ranks too
        "ppo.kl_estimator=k3",
        "ppo.num_minibatches=1",  # one optimizer step a batch: the policy's first forward made early
    )
    summary = ppo.run(cfg)
    assert summary["steps"] == 2 and "final_model" in summary
    (roles,) = _roles(recording, "zero3")
    assert roles.layout == (2, 2, 2)
    # Colocated roles sit in the policy's placement group (the reference in rank 0's process); the
    # engines stand apart (in none here).
    assert isinstance(roles.reference, HostedReference)
    pgs = roles.placement_groups
    (policy_pg,) = set(pgs["policy"])
    assert policy_pg is not None and set(pgs["critic"] + pgs["reference"] + pgs["reward"]) == {policy_pg}
    assert policy_pg not in pgs["engines"]
    assert roles.synced == [[1, 1], [2, 2]]  # every engine loaded every step's weights
    assert roles.beside == [("critic", 0), ("policy", 0)] * 2  # synchronous: nothing computes beside
    rows = _rows(tmp_path / "zero3")
    assert sorted(rows) == [1, 2]
    _check_sane(rows)
    for row in rows.values():
        assert {
            "critic/explained_variance",
            "critic/value_loss",
            "critic/values_mean",
            "critic/grad_norm",
        } <= set(row)
    assert rows[1]["critic/values_mean"] != rows[2]["critic/values_mean"]  # the critic trained
    # Under ZeRO-3 too (a collective forward), the ranks made their first forward while scoring.
    assert all(
        r["perf/actor_early_forwards"] == 1 and r["perf/critic_early_forwards"] == 0 for r in rows.values()
    )
    # k3 >= 0, and it is 0 only while the policy is the reference (step 1).
    assert 0 <= rows[1]["actor/kl_loss"] < rows[2]["actor/kl_loss"]
    for row in rows.values():
        for role in ("actor", "critic"):
            assert 0 < row[f"perf/{role}_learner_all_cores_s"] <= row[f"perf/{role}_learner_s"]


def test_a_transformers_engine_samples_with_the_learners_own_numbers(ray_session, recording, tmp_path):
    """`rollout.backend: transformers`, asynchronous: the engine's logprobs are the learner's own
    forward (fp32, no vLLM kernels), so at staleness 1 the IS ratio is the policy's move alone, and
    the first step (staleness 0) matches the learner to rounding."""
    extra = ["ppo.steps=3", *LEARNING[1:], "ppo.max_staleness=1", "rollout.backend=transformers"]
    # The reference held by the policy learner: its pass queues behind the training there, never
    # ahead of it waiting for a draw.
    extra.append("reference.host=policy")
    assert ppo.run(_cfg(tmp_path, "hf", *extra))["steps"] == 3
    (roles,) = _roles(recording, "hf")
    assert roles.synced == [[1], [2], [3]]
    rows = _rows(tmp_path / "hf")
    _check_sane_async(rows)
    assert rows[1]["rollout/logprob_mismatch"] < 1e-5 and rows[1]["offpolicy/is_ratio_max"] < 1 + 1e-4
    # Steps 1 and 2 are drawn with the initial weights, which the reference holds: KL 0 to rounding.
    assert abs(rows[1]["kl/mean"]) < 1e-4 and abs(rows[2]["kl/mean"]) < 1e-4 < abs(rows[3]["kl/mean"])
    for step in (2, 3):  # the batch was drawn with the weights before the last update, which moved
        assert rows[step]["offpolicy/staleness_max"] == 1 and rows[step]["rollout/logprob_mismatch"] > 1e-3


def test_colocated_critic_needs_gae_and_the_policy_world_size(tmp_path):
    for bad in (["ppo.advantage=grpo"], ["ppo.advantage=gae", "critic.world_size=2"]):
        cfg = _cfg(tmp_path, "bad", "ppo.colocate=[critic]", *bad)
        with pytest.raises(UserError, match=r"ppo.colocate: .*critic.world_size = learner.world_size \(1\)"):
            Roles(cfg)


def test_a_policy_hosted_reference_is_not_colocated_as_an_actor(tmp_path):
    cfg = _cfg(tmp_path, "bad", "ppo.colocate=[reference]", "reference.host=policy")
    with pytest.raises(UserError, match=r"ppo.colocate: the reference is held by policy rank 0"):
        Roles(cfg)


def test_batch_sizes_unset_are_derived_and_set_ones_kept(tmp_path):
    # TOY: 8 prompts x 4 samples / 2 minibatches = 16 sequences per optimizer step.
    derived = ppo_learner_config(_cfg(tmp_path, "b"), "learner")
    assert (derived.global_batch_size, derived.micro_batch_size) == (16, 16)  # micro: gcd(default 32, 16)
    two_ranks = ppo_learner_config(_cfg(tmp_path, "b", "learner.world_size=2"), "learner")
    assert (two_ranks.global_batch_size, two_ranks.micro_batch_size) == (16, 8)
    kept = ppo_learner_config(
        _cfg(tmp_path, "b", "learner.global_batch_size=16", "learner.micro_batch_size=4"), "learner"
    )
    assert (kept.global_batch_size, kept.micro_batch_size) == (16, 4)
    # The shipped PPO jobs mean what they meant when the sizes were rewritten unconditionally.
    for name, sizes in (
        ("ppo.yaml", (64, 64)),
        ("demo.yaml", (64, 64)),
        ("ppo-qwen2.5-1.5b-zero3.yaml", (128, 8)),
    ):
        learner = ppo_learner_config(load_config(REPO / "configs" / name), "learner")
        assert (learner.global_batch_size, learner.micro_batch_size) == sizes, name


def test_batch_sizes_set_against_ppo_are_refused(tmp_path):
    with pytest.raises(
        UserError,
        match=r"learner.global_batch_size 64 contradicts .* 16 sequences "
        r"\(ppo.prompts_per_step x ppo.samples_per_prompt / ppo.num_minibatches",
    ):
        ppo_learner_config(_cfg(tmp_path, "b", "learner.global_batch_size=64"), "learner")
    # Set in a base file counts as set.
    (tmp_path / "base.yaml").write_text("critic:\n  global_batch_size: 32\n")
    (tmp_path / "job.yaml").write_text("base: base.yaml\nppo:\n  advantage: gae\n")
    cfg = load_config(tmp_path / "job.yaml", TOY)
    with pytest.raises(UserError, match=r"critic.global_batch_size 32 contradicts .*ppo.num_minibatches"):
        ppo_learner_config(cfg, "critic")
    with pytest.raises(
        UserError,
        match=r"learner.micro_batch_size 32 does not divide .* 16 sequences "
        r".*ppo.num_minibatches.*learner.world_size 1",
    ):
        ppo_learner_config(_cfg(tmp_path, "b", "learner.micro_batch_size=32"), "learner")
