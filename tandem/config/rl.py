"""The sections of the RL job's roles: rollout engines and their sampling, the reward and the
reference actors, and PPO itself."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tandem.config.fields import (
    AdvantageName,
    KLControllerName,
    KLEstimatorName,
    OffPolicyName,
    PolicyLossName,
    _Section,
)


class SamplingConfig(_Section):
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature of rollouts (PPO needs 1.0 for on-policy logprobs)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    top_k: int = Field(-1, ge=-1)
    """Top-k sampling (-1: off)."""


class RolloutConfig(_Section):
    backend: Literal["vllm", "transformers"] = "vllm"
    """What generates. vllm: a vLLM engine. transformers: a plain batched decoding loop on the
    transformers model, faster than vLLM for models of a few million parameters on CPU, where
    vLLM's per-sequence scheduling costs more than the forward (side-by-side tiny model: 0.13 s
    against 0.20 s a batch), and twice as slow at 23M; one device per engine."""
    num_engines: int = Field(1, ge=1)
    """Rollout engines (Ray actors); prompts are spread over them."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs per engine (tensor parallel); 1 on CPU."""
    cpus_per_engine: float = Field(1.0, gt=0)
    """Ray CPUs of each engine."""
    threads: int | None = Field(None, ge=1)
    """Compute threads of each engine on CPU. None: the node's cores over `num_engines`, since in the
    synchronous loop the engines generate while every other role waits (Ray's CPU count gives 1);
    half that in asynchronous PPO (`ppo.max_staleness` >= 1), where the learners train meanwhile."""
    gpus_per_engine: float = Field(0.0, ge=0)
    """Ray GPUs of each engine (0 on CPU)."""
    kv_cache_mb: int = Field(128, ge=8)
    """KV-cache size of each engine, MiB."""
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    """Fraction of GPU memory vLLM may take (GPU engines only)."""
    max_num_seqs: int = Field(64, ge=1)
    """Sequences an engine batches at once."""
    enforce_eager: bool | None = None
    """vLLM's `enforce_eager`. None: eager on CPU, CUDA graphs on GPUs. False on CPU compiles the
    model (torch.compile): generation 16-22% faster on the side-by-side tiny and mid models, for
    8-14 s more at every engine start (20-30 s the first time on a machine), so it pays in runs of
    hundreds of steps, not in tests or the demo."""
    sampling: SamplingConfig = SamplingConfig()
    """Sampling parameters."""
    sync_bucket_mb: int = Field(64, ge=1)
    """Weight-sync bucket size, MiB."""
    resources: dict[str, float] = {}
    """Ray custom resources each engine needs (pins engines to chosen nodes)."""
    max_engine_restarts: int = Field(3, ge=0)
    """`tandem ppo`: engines that died or missed their deadline healed in place per start of the
    job's roles: a new engine (or, with no room for one, the others) takes the lost calls, with the
    current weights, and the step goes on. Past it, the whole job restarts (see run.max_restarts)."""

    @model_validator(mode="after")
    def _one_device_without_vllm(self) -> RolloutConfig:
        if self.backend == "transformers" and self.tensor_parallel_size > 1:
            raise ValueError(
                "rollout.backend: transformers runs on one device; tensor_parallel_size must be 1"
            )
        return self


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
    length_penalty: float = Field(0.0, ge=0)
    """Subtracted per token of the response (model.path's tokenizer), logged as reward/length_tokens:
    a switch against a reward model's length bias (Singhal et al. 2023, "A Long Way to Go")."""
    length_debias: bool = False
    """Remove the length part of the reward: each batch's summed reward is regressed on response
    length (tokens, model.path's tokenizer) among answers to the same prompt, and the fitted slope
    times (length - the batch's mean length) is subtracted, logged as reward/length_debias. A switch
    against a reward model's length bias that needs no penalty size (`tandem study length`)."""
    resources: dict[str, float] = {}
    """Ray custom resources of the reward actor (pins it to chosen nodes)."""


class ReferenceConfig(_Section):
    host: Literal["actor", "policy"] = "actor"
    """Where the frozen reference runs: "actor", an actor of its own (healed in place if it dies);
    "policy", a copy in policy learner rank 0's process, as verl's fused actor/reference worker:
    one process, model load and (on GPU) device context fewer, its pass made there just before the
    training (`cpus`, `gpus` and `resources` then unused; a dead rank 0 restarts the job)."""
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
    """Per-token KL estimator of the penalty (in the reward or the loss: `kl_penalty`), by its name
    in `tandem.algos` (Schulman 2020)."""
    kl_penalty: Literal["reward", "loss"] = "reward"
    """Where the KL to the reference acts. reward: -kl_coef x the `kl_estimator` estimate of each
    token, on the sampling policy's logprobs, in the reward (InstructGPT, Ouyang et al. 2022, eq. 2).
    loss: the reward is the score alone, and kl_coef x the token-mean estimate for the policy being
    trained joins its loss, gradient and all (GRPO, Shao et al. 2024, eq. 3; TRL's GRPO). In a loss
    k1's gradient is zero in expectation (E_pi[grad log pi] = 0), so it is refused; k2's is the
    gradient of KL(pi || pi_ref), k3's that of KL(pi_ref || pi). The coefficient is fixed."""
    kl_controller: KLControllerName = "fixed"
    """KL coefficient control, by its name in `tandem.algos`: fixed, or adaptive to a target (Ziegler et al. 2019)."""
    kl_coef: float = Field(0.05, ge=0)
    """(Initial) KL coefficient."""
    kl_target: float = Field(6.0, gt=0)
    """Adaptive controller: target KL per sequence."""
    kl_horizon: int = Field(10000, ge=1)
    """Adaptive controller: horizon in samples."""
    max_staleness: int = Field(0, ge=0)
    """Asynchronous rollout: the engines draw up to K batches ahead while the learners train, so a
    sample may be up to K weight versions behind the policy it trains (older ones are refused).
    0: on-policy, generation and training take turns."""
    off_policy: OffPolicyName = "tis"
    """Correction for samples drawn by other weights (staleness) or other kernels (engine vs learner),
    by its name in `tandem.algos`: tis (truncated importance weights), mis (masked), decoupled
    (untruncated), none."""
    is_cap: float = Field(2.0, gt=1)
    """The importance-weight cap C: tis truncates at C, mis masks ratios outside [1/C, C]."""
    is_level: Literal["token", "sequence"] = "token"
    """Importance ratios per token, or per response (the geometric mean of its tokens' ratios)."""
    save_every: int = Field(10, ge=0)
    """Checkpoint every N steps (0: only at the end)."""
    max_nonfinite_steps: int = Field(3, ge=1)
    """Optimizer steps in a row whose loss or gradients hold a NaN/inf (from the advantages, the
    rewards' scale, the learning rate): each is skipped on every rank (the weights stay finite, so
    the engines never load a non-finite one; a warning and `actor/nonfinite_skipped`, the share of
    the step's optimizer steps skipped); this many in a row end the job. A reward function that
    returns NaN/inf for a sample skips the step's updates instead (a warning and
    `faults/nonfinite_reward_skipped` 1); this many such steps in a row end the job."""
    sample_table_every: int = Field(5, ge=1)
    """Log a table of (prompt, response, reward) every N steps."""
    colocate: list[Literal["critic", "reference", "reward"]] = []
    """Roles placed with the policy learners instead of apart: critic rank i shares policy rank i's
    placement bundle, the reference and reward actors share bundle 0; each keeps its own CPUs/GPUs,
    added to the bundle (on GPUs give fractions that fit one device, e.g. 0.5 + 0.25 + 0.25). Their
    own `resources` are then unused: they land where the policy does. Engines always stand apart."""

    @model_validator(mode="after")
    def _kl_loss_has_a_gradient(self) -> PPOConfig:
        if self.kl_penalty == "loss" and self.kl_estimator == "k1":
            raise ValueError(
                "ppo.kl_penalty: loss needs ppo.kl_estimator k2 or k3 (k1's gradient in a loss is zero in expectation)"
            )
        if self.kl_penalty == "loss" and self.kl_controller != "fixed":
            raise ValueError(
                f"ppo.kl_controller {self.kl_controller!r} adapts the KL in the reward; with ppo.kl_penalty: loss it is fixed"
            )
        return self
