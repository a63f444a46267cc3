"""The typed job configuration: frozen pydantic models, one documented field per line.

A job names only what it changes from the defaults below (see `tandem.config.loading` for files and
overrides). Algorithm names are checked against the registries of `tandem.algos`.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError


def _registered(registry: str) -> AfterValidator:
    """A name that must be registered in `tandem.algos.<registry>`: the registry is the only list of
    valid names, so adding an algorithm there makes it a valid config value with no edit here."""

    def check(name: str) -> str:
        import tandem.algos  # here, not at the top: it loads torch, paid only by configs that name an algorithm

        names = getattr(tandem.algos, registry).names()
        if name in names:
            return name
        guess = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        kind = getattr(tandem.algos, registry).kind
        raise PydanticCustomError(
            "unknown_name",
            "unknown {kind}; choose from {names}{hint}",
            {"kind": kind, "names": ", ".join(names), "hint": hint},
        )

    return AfterValidator(check)


AdvantageName = Annotated[str, _registered("ADV_ESTIMATORS")]
KLEstimatorName = Annotated[str, _registered("KL_ESTIMATORS")]
KLControllerName = Annotated[str, _registered("KL_CONTROLLERS")]
PolicyLossName = Annotated[str, _registered("POLICY_LOSSES")]
PreferenceLossName = Annotated[str, _registered("PREFERENCE_LOSSES")]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


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
    waits. None: the node's cores shared by the ranks on it (Ray's CPU count alone would give 1).
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
    """Held-out prompts whose generations are scored by the task's true reward at the end (0: skip)."""


class DPOConfig(_Section):
    beta: float = Field(0.1, gt=0)
    """Strength of the implicit KL constraint (Rafailov et al. 2023)."""
    loss: PreferenceLossName = "dpo"
    """Preference loss, by its name in `tandem.algos` (sigmoid DPO; IPO, Azar et al. 2023; ...)."""
    pairs: Literal["task", "policy"] = "task"
    """Train on "task" pairs (built-in or train_files) or "policy" ones (2 samples of model.path, judged)."""


class SamplingConfig(_Section):
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature of rollouts (PPO needs 1.0 for on-policy logprobs)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    top_k: int = Field(-1, ge=-1)
    """Top-k sampling (-1: off)."""


class RolloutConfig(_Section):
    num_engines: int = Field(1, ge=1)
    """vLLM engines (Ray actors); prompts are spread over them."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs per engine (tensor parallel); 1 on CPU."""
    cpus_per_engine: float = Field(1.0, gt=0)
    """Ray CPUs of each engine."""
    threads: int | None = Field(None, ge=1)
    """Compute threads of each engine on CPU. None: the node's cores over `num_engines`, since in the
    synchronous loop the engines generate while every other role waits (Ray's CPU count gives 1)."""
    gpus_per_engine: float = Field(0.0, ge=0)
    """Ray GPUs of each engine (0 on CPU)."""
    kv_cache_mb: int = Field(128, ge=8)
    """KV-cache size of each engine, MiB."""
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    """Fraction of GPU memory vLLM may take (GPU engines only)."""
    max_num_seqs: int = Field(64, ge=1)
    """Sequences an engine batches at once."""
    sampling: SamplingConfig = SamplingConfig()
    """Sampling parameters."""
    sync_bucket_mb: int = Field(64, ge=1)
    """Weight-sync bucket size, MiB."""
    resources: dict[str, float] = {}
    """Ray custom resources each engine needs (pins engines to chosen nodes)."""


class RewardComponent(_Section):
    kind: Literal["model", "function", "http"]
    """model: an HF reward model dir; function: `pkg.mod:fn`; http: a JSON endpoint."""
    path: str
    """The model dir (or "rm" = this pipeline's RM run), the import path, or the URL."""
    weight: float = 1.0
    """Weight in the summed reward."""
    name: str | None = None
    """Metric name of this component (default: its kind)."""
    token_env: str = "TANDEM_REWARD_TOKEN"
    """http: environment variable holding the bearer token."""
    timeout_s: float = Field(30.0, gt=0)
    """http: request timeout."""
    retries: int = Field(3, ge=0)
    """http: retries on failure."""
    backoff_s: float = Field(0.5, gt=0)
    """http: wait before the first retry; doubles with each further retry."""


class RewardConfig(_Section):
    components: list[RewardComponent] = [RewardComponent(kind="function", path="task")]
    """Summed reward components; function path "task" = the built-in task's true reward."""
    cpus: float = Field(1.0, gt=0)
    """Ray CPUs of the reward actor."""
    gpus: float = Field(0.0, ge=0)
    """Ray GPUs of the reward actor."""
    batch_size: int = Field(64, ge=1)
    """Sequences per reward-model forward."""
    resources: dict[str, float] = {}
    """Ray custom resources of the reward actor (pins it to chosen nodes)."""


class ReferenceConfig(_Section):
    cpus: float = Field(1.0, gt=0)
    """Ray CPUs of the reference actor."""
    gpus: float = Field(0.0, ge=0)
    """Ray GPUs of the reference actor."""
    batch_size: int = Field(64, ge=1)
    """Sequences per reference forward."""
    resources: dict[str, float] = {}
    """Ray custom resources of the reference actor (pins it to chosen nodes)."""


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    """Address the reward server binds (loopback by default)."""
    port: int = Field(8710, ge=0, le=65535)
    """Port of the reward server (0: any free port)."""
    token_env: str = "TANDEM_REWARD_TOKEN"
    """Environment variable holding the bearer token clients must send."""


class PPOConfig(_Section):
    steps: int = Field(20, ge=1)
    """PPO iterations (rollout + update)."""
    prompts_per_step: int = Field(32, ge=1)
    """Prompts sampled per iteration."""
    samples_per_prompt: int = Field(4, ge=1)
    """Responses per prompt (the group of GRPO/RLOO)."""
    advantage: AdvantageName = "grpo"
    """Advantage estimator, by its name in `tandem.algos`; one that reads values (gae) trains a critic."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE lambda."""
    clip_eps: float = Field(0.2, gt=0)
    """PPO ratio clip."""
    value_clip_eps: float = Field(0.2, gt=0)
    """Critic value clip."""
    ppo_epochs: int = Field(1, ge=1)
    """Passes over each rollout batch."""
    num_minibatches: int = Field(1, ge=1)
    """Optimizer steps per epoch."""
    policy_loss: PolicyLossName = "ppo"
    """Policy loss, by its name in `tandem.algos` (ppo: the clipped surrogate)."""
    entropy_coef: float = Field(0.0, ge=0)
    """Entropy bonus."""
    kl_estimator: KLEstimatorName = "k1"
    """Per-token KL estimator of the reward penalty, by its name in `tandem.algos` (Schulman 2020)."""
    kl_controller: KLControllerName = "fixed"
    """KL coefficient control, by its name in `tandem.algos`: fixed, or adaptive to a target (Ziegler et al. 2019)."""
    kl_coef: float = Field(0.05, ge=0)
    """(Initial) KL coefficient."""
    kl_target: float = Field(6.0, gt=0)
    """Adaptive controller: target KL per sequence."""
    kl_horizon: int = Field(10000, ge=1)
    """Adaptive controller: horizon in samples."""
    save_every: int = Field(10, ge=0)
    """Checkpoint every N steps (0: only at the end)."""
    sample_table_every: int = Field(5, ge=1)
    """Log a table of (prompt, response, reward) every N steps."""
    colocate: list[Literal["critic", "reference", "reward"]] = []
    """Roles placed with the policy learners instead of apart: critic rank i shares policy rank i's
    placement bundle, the reference and reward actors share bundle 0; each keeps its own CPUs/GPUs,
    added to the bundle (on GPUs give fractions that fit one device, e.g. 0.5 + 0.25 + 0.25). Their
    own `resources` are then unused: they land where the policy does. Engines always stand apart."""


class PipelineConfig(_Section):
    sft_config: str | None = None
    """`tandem pipeline`: the SFT stage's job file; PPO starts from its model."""
    rm_config: str | None = None
    """`tandem pipeline`: the reward-model stage's job file; reward components with path "rm" use its model."""
    rm_from_sft: bool = True
    """Start the reward model from the SFT model (as InstructGPT does) instead of its own model.path."""


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
