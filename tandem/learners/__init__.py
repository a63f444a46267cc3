"""DeepSpeed learners: one Ray actor per rank, trained through a few coarse calls from the driver."""

from tandem.learners.base import DeepSpeedLearner, deepspeed_config
from tandem.learners.dpo import DPOLearner
from tandem.learners.reward import RewardLearner
from tandem.learners.schedule import lr_multiplier
from tandem.learners.sft import SFTLearner, sequence_logprobs

__all__ = [
    "DPOLearner",
    "DeepSpeedLearner",
    "RewardLearner",
    "SFTLearner",
    "deepspeed_config",
    "lr_multiplier",
    "sequence_logprobs",
]
