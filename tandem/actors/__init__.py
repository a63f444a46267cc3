"""Ray actors around inference engines, and the driver-side helpers that talk to them.

    rollout      vLLM engines (`RolloutEngine`), the driver's `RolloutGroup`, `Sample`
    vllm_ext     the worker extension inside each vLLM worker that loads streamed weights
    transformers_engine  `rollout.backend: transformers`: decoding on the transformers model
    reward       `RewardScorer`: reward models, Python functions and HTTP endpoints, summed
    http_reward  the remote reward protocol's client (`tandem serve-reward` is its server)
    reference    the frozen reference policy's per-token logprobs

Modules are imported directly (`from tandem.actors.rollout import RolloutGroup`): importing this
package loads nothing heavy.
"""
