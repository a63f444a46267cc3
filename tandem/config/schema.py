"""The typed job configuration: frozen pydantic models, one documented field per line.

A job names only what it changes from the defaults below (see `tandem.config.loading` for files and
overrides). Algorithm names are checked against the registries of `tandem.algos`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from tandem.config.fields import PreferenceLossName, _importable_reward, _Section
from tandem.config.rl import (
    PPOConfig,
    ReferenceConfig,
    RewardConfig,
    RolloutConfig,
    ServeConfig,
)


class TimeoutsConfig(_Section):
    """Deadlines of remote calls, by kind: a call still running after its deadline fails with an error
    naming the role, rank, node and call (and `tandem ppo` restarts its roles, see run.max_restarts).
    Generous by default: they catch what hangs, not what is slow."""

    startup_s: float = Field(300, gt=0)
    """Placing and starting a role (loading a large model on GPUs takes minutes)."""
    generate_s: float = Field(900, gt=0)
    """One rollout batch on the engines."""
    score_s: float = Field(600, gt=0)
    """Rewards, reference logprobs, pi_old logprobs and values of one batch."""
    train_s: float = Field(900, gt=0)
    """One optimizer step (minibatch) of a learner group."""
    sync_s: float = Field(300, gt=0)
    """One weight sync from the policy to every engine."""
    checkpoint_s: float = Field(900, gt=0)
    """Saving or loading one checkpoint."""


class RunConfig(_Section):
    name: str = "run"
    """Run name: the run folder is `<output_dir>/<name>` and the W&B run name."""
    output_dir: str = "runs"
    """Folder holding run folders."""
    seed: int = 0
    """Seed for data order, sampling and initialisation."""
    resume: bool = False
    """Continue from the latest checkpoint in the run folder instead of starting over."""
    keep_checkpoints: int = Field(2, ge=1)
    """Newest resumable checkpoints kept in the run folder, by every job (older ones are deleted; 2: a
    damaged newest one leaves the one before to resume from)."""
    max_restarts: int = Field(3, ge=0)
    """`tandem ppo`: times a job whose role died, failed or missed a deadline restarts every role from
    its newest checkpoint (a user error, or the same failure at the same step twice, is not retried)."""
    max_actor_restarts: int = Field(3, ge=0)
    """`tandem ppo`: times the reward or the reference actor, when it died or missed its deadline, is
    started again alone (reloading its model) and its call issued again, per start of the job's
    roles; past it, the whole job restarts (run.max_restarts)."""
    timeouts: TimeoutsConfig = TimeoutsConfig()
    """Deadlines of remote calls, by kind."""


class ModelConfig(_Section):
    path: str = "tiny-qwen2"
    """Embedded tiny model ("tiny-qwen2", "tiny-llama"), a local HF directory, or a hub name (needs network)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights and compute dtype of inference engines (vLLM, reference, reward)."""
    max_prompt_len: int = Field(64, ge=1)
    """Longest prompt in tokens, chat template included; a longer one is an error (see data.truncate_prompts)."""
    max_response_len: int = Field(32, ge=1)
    """Responses are cut at this many tokens (generation and training)."""


class DataConfig(_Section):
    task: str | None = "sort"
    """Built-in task ("sort", "evens"), used when no files are given; null to use files only."""
    train_files: list[str] = []
    """Local JSONL/Parquet files; columns by stage: prompt (RL), prompt+response (SFT), prompt+chosen+rejected."""
    eval_files: list[str] = []
    """Held-out files, same columns as train_files."""
    num_train: int = Field(4096, ge=1)
    """Examples generated from the built-in task for training."""
    num_eval: int = Field(256, ge=1)
    """Held-out examples generated from the built-in task."""
    preference_temperature: float = Field(0.1, ge=0.0)
    """Annotator noise of built-in preference pairs: Bradley-Terry temperature (0 = always the better)."""
    demo_error_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Fraction of built-in SFT demonstrations with a demonstrator slip (the task's `slip`)."""
    truncate_prompts: bool = False
    """Cut prompts over model.max_prompt_len from the left (losing their start) instead of failing on the first."""


class RayConfig(_Section):
    address: str | None = None
    """Ray cluster to attach to ("auto", "ray://host:10001", "host:6379"); null starts a local Ray."""
    num_cpus: int | None = Field(None, ge=1)
    """Logical CPUs of the local Ray (default: enough for the job's roles, up to max_cpus)."""
    max_cpus: int | None = Field(None, ge=1)
    """Most logical CPUs a local Ray sized for the job takes (default: 4 per core); a job needing more fails at once."""
    object_store_mb: int = Field(256, ge=64)
    """Object store cap of the local Ray (uncapped Ray reserves ~30% of RAM in /dev/shm)."""


class WandbConfig(_Section):
    project: str = "tandem"
    """W&B project."""
    entity: str | None = None
    """W&B entity (team or user); null uses the account default."""
    tags: list[str] = []
    """Tags of the W&B run."""
    mode: Literal["online", "offline", "disabled"] | None = None
    """null: online when WANDB_API_KEY is set, else offline (runs land in the run folder)."""


class OptimConfig(_Section):
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    warmup_steps: int = Field(10, ge=0)
    """Linear warmup optimizer steps."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Cosine decay floor, as a fraction of lr."""
    grad_clip: float = Field(1.0, ge=0)
    """Global gradient-norm clip (0 = off)."""


class LearnerConfig(_Section):
    world_size: int = Field(1, ge=1)
    """Learner ranks (Ray actors, one process each)."""
    zero_stage: int = Field(0, ge=0, le=3)
    """DeepSpeed ZeRO stage."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Training precision."""
    micro_batch_size: int = Field(32, ge=1)
    """Sequences per rank per forward/backward (PPO, when unset: cut to divide a rank's share of a minibatch)."""
    global_batch_size: int = Field(64, ge=1)
    """Sequences per optimizer step over all ranks (PPO, when unset: one minibatch of the rollout batch)."""
    min_forward_tokens: int = Field(1024, ge=1)
    """PPO: the rows of a micro-batch (and of the reference's and scoring passes' batches) are sorted
    by length and run as up to 8 forwards of like length, each of at least this many padded tokens
    on average: less padding, and attention costs the square of the width. The gradient is the same
    (one backward, token-weighted). Raise it past a micro-batch's tokens for one forward each."""
    cpus_per_rank: float = Field(1.0, gt=0)
    """Ray CPUs of each rank."""
    gpus_per_rank: float = Field(0.0, ge=0)
    """Ray GPUs of each rank (0 on CPU machines)."""
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Placement-group strategy of the ranks."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    threads: int | None = Field(None, ge=1)
    """Compute threads of each rank while it trains or takes a held-out loss, when every other role
    waits. None: the node's cores shared by the ranks on it (Ray's CPU count alone would give 1), in
    asynchronous PPO too (the engines keep to half the cores and finish early in an update).
    PPO's scoring passes, which run beside the reward and reference actors, keep Ray's count."""
    collective_timeout_s: int = Field(300, ge=10)
    """A collective waiting longer than this fails (a dead rank surfaces as an error, not a hang)."""
    optim: OptimConfig = OptimConfig()
    """Optimizer and schedule."""
    resources: dict[str, float] = {}
    """Ray custom resources each rank needs (e.g. {node_learn: 1}) to pin the role to chosen nodes."""

    @model_validator(mode="after")
    def _batch_divides(self) -> LearnerConfig:
        per_step = self.micro_batch_size * self.world_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} must be a multiple of "
                f"micro_batch_size x world_size = {per_step}"
            )
        return self


class TrainConfig(_Section):
    epochs: int = Field(1, ge=1)
    """Passes over the training data (SFT, RM, DPO)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (overrides epochs when smaller)."""
    eval_every: int = Field(50, ge=1)
    """Held-out evaluation every N optimizer steps (and at the end)."""
    save_every: int = Field(0, ge=0)
    """Checkpoint every N optimizer steps (0: only at the end)."""
    log_every: int = Field(1, ge=1)
    """Metrics every N optimizer steps."""
    num_generate_eval: int = Field(64, ge=0)
    """Held-out prompts whose answers SFT, DPO and PPO score by the evaluation reward at the end (0: skip)."""


class EvalConfig(_Section):
    reward: Annotated[str | None, AfterValidator(_importable_reward)] = None
    """Held-out evaluation reward, "package.module:function", batched like reward functions; null:
    the built-in task's true reward. Prompts: data.eval_files, else the task's held-out split."""


class DPOConfig(_Section):
    beta: float = Field(0.1, gt=0)
    """Strength of the implicit KL constraint (Rafailov et al. 2023). For "simpo" it scales a per-token
    average log-likelihood instead, so it is much larger there (the SimPO paper uses 2.0-2.5)."""
    loss: PreferenceLossName = "dpo"
    """Preference loss, by its name in `tandem.algos` (sigmoid DPO; IPO, Azar et al. 2023; SimPO, Meng
    et al. 2024, reference-free: no reference model is loaded)."""
    length_alpha: float = 0.0
    """R-DPO (Park et al. 2024), loss "dpo": adds alpha * (|chosen| - |rejected|) tokens to the margin,
    so longer chosen answers teach less length (0: plain DPO)."""
    dpop_lambda: float = Field(0.0, ge=0)
    """DPOP (Pal et al. 2024), loss "dpo": penalty lambda * max(0, log pi_ref(chosen) - log pi(chosen))
    in the margin, so DPO cannot lower the chosen answer's likelihood (0: plain DPO; the paper: 50)."""
    simpo_gamma: float = Field(0.0, ge=0)
    """SimPO's target reward margin gamma (loss "simpo"; the paper: 0.5-1.5 with beta 2-2.5)."""
    rpo_alpha: float = Field(0.0, ge=0)
    """RPO (Pang et al. 2024), any loss: adds alpha * the chosen answer's NLL per token (0: off; the paper: 1)."""
    pairs: Literal["task", "policy"] = "task"
    """Train on "task" pairs (built-in or train_files) or "policy" ones (2 samples of model.path, judged)."""
    judge: Literal["annotators", "rm"] = "annotators"
    """Who prefers one answer of each "policy" pair (task pairs come judged): the task's simulated annotators (Bradley-Terry on their
    score) or the reward model `judge_model` (the higher score wins; online DPO's one round)."""
    judge_model: str | None = None
    """The reward model that judges when judge is "rm" (an RM run's final/ folder)."""

    @model_validator(mode="after")
    def _options_are_read(self) -> DPOConfig:
        options = [o for o in ("length_alpha", "dpop_lambda", "simpo_gamma") if getattr(self, o)]
        if options:
            # Only then: the registry loads torch, and the defaults are validated when this module
            # is imported (the CLI reads an SFT or RM config without torch).
            from tandem.algos import get_preference_loss

            reads = get_preference_loss(self.loss).options
            for option in options:
                if option not in reads:
                    raise ValueError(
                        f"dpo.{option} is not used by loss {self.loss!r} (it reads: {sorted(reads)})"
                    )
        if self.judge == "rm" and not self.judge_model:
            raise ValueError('dpo.judge: "rm" needs dpo.judge_model (a reward model\'s folder)')
        return self


class PipelineConfig(_Section):
    sft_config: str | None = None
    """`tandem pipeline`: the SFT stage's job file; PPO starts from its model."""
    rm_config: str | None = None
    """`tandem pipeline`: the reward-model stage's job file; reward components with path "rm" use its model."""
    rm_from_sft: bool = True
    """Start the reward model from the SFT model (as InstructGPT does) instead of its own model.path."""


class StudyConfig(_Section):
    """`tandem study NAME`: the runs a study compares, all from one SFT model and one reward model."""

    sft_model: str | None = None
    """An SFT model directory to start from instead of training one with `pipeline.sft_config`."""
    rm_model: str | None = None
    """A reward model directory to use instead of training one with `pipeline.rm_config`."""
    arms: dict[str, list[str]] = {}
    """PPO runs against the reward model: name -> `key=value` overrides of this job (the study's
    module says which arm is its baseline)."""
    dpo_config: str | None = None
    """The DPO runs' job file (its model.path becomes the study's SFT model)."""
    dpo_arms: dict[str, list[str]] = {}
    """DPO runs: name -> `key=value` overrides of `dpo_config`."""
    checkpoints: bool = False
    """Evaluate every checkpoint a PPO run kept (`ppo.save_every`, `run.keep_checkpoints`) as well
    as its final model: points along one run."""


class Config(_Section):
    """A whole job. Each command reads the sections it needs."""

    run: RunConfig = RunConfig()
    """Run name, folder, seed, resume."""
    model: ModelConfig = ModelConfig()
    """The model every role starts from (policy, reference; RM and critic base)."""
    data: DataConfig = DataConfig()
    """Built-in task or user files."""
    ray: RayConfig = RayConfig()
    """Ray cluster to start or attach."""
    wandb: WandbConfig = WandbConfig()
    """Weights & Biases logging."""
    learner: LearnerConfig = LearnerConfig()
    """The trained model's learner group (SFT, RM, DPO; the PPO policy)."""
    critic: LearnerConfig = LearnerConfig()
    """The PPO critic's learner group (when ppo.advantage reads values, as gae does)."""
    train: TrainConfig = TrainConfig()
    """Offline training loop (SFT, RM, DPO)."""
    eval: EvalConfig = EvalConfig()
    """Held-out evaluation (the table SFT, DPO, PPO and the pipeline print)."""
    dpo: DPOConfig = DPOConfig()
    """DPO loss."""
    rollout: RolloutConfig = RolloutConfig()
    """vLLM rollout engines."""
    reward: RewardConfig = RewardConfig()
    """Reward scoring for PPO."""
    reference: ReferenceConfig = ReferenceConfig()
    """The frozen reference policy of the KL penalty."""
    serve: ServeConfig = ServeConfig()
    """`tandem serve-reward` HTTP server."""
    ppo: PPOConfig = PPOConfig()
    """The PPO loop."""
    pipeline: PipelineConfig = PipelineConfig()
    """SFT -> RM -> PPO in one job (`tandem pipeline`)."""
    study: StudyConfig = StudyConfig()
    """The runs of `tandem study NAME` (the SFT and RM stages: `pipeline`)."""
