"""The job configuration: the typed schema (`schema`, the RL roles' sections in `rl`, field types in
`fields`) and its loading from YAML and overrides (`loading`)."""

from tandem.config.loading import dump_config, load_config
from tandem.config.rl import (
    PPOConfig,
    ReferenceConfig,
    RewardComponent,
    RewardConfig,
    RolloutConfig,
    SamplingConfig,
    ServeConfig,
)
from tandem.config.schema import (
    Config,
    DataConfig,
    DPOConfig,
    EvalConfig,
    LearnerConfig,
    ModelConfig,
    OptimConfig,
    PipelineConfig,
    RayConfig,
    RunConfig,
    StudyConfig,
    TimeoutsConfig,
    TrainConfig,
    WandbConfig,
)

__all__ = [
    "Config",
    "DPOConfig",
    "DataConfig",
    "EvalConfig",
    "LearnerConfig",
    "ModelConfig",
    "OptimConfig",
    "PPOConfig",
    "PipelineConfig",
    "RayConfig",
    "ReferenceConfig",
    "RewardComponent",
    "RewardConfig",
    "RolloutConfig",
    "RunConfig",
    "SamplingConfig",
    "ServeConfig",
    "StudyConfig",
    "TimeoutsConfig",
    "TrainConfig",
    "WandbConfig",
    "dump_config",
    "load_config",
]
