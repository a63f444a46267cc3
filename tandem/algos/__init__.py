"""Pure tensor math of RLHF: masked ops, advantages, KL estimators and controllers, and losses.

Nothing here imports Ray, DeepSpeed, vLLM, transformers or config objects: every function takes
tensors and plain numbers and returns tensors (and, for losses, a dict of float metrics).
Algorithms are chosen by name through the registries (``get_adv_est``, ``get_kl_estimator``,
``get_policy_loss``, ``get_preference_loss``, ``get_off_policy_correction``, ``make_kl_controller``);
the registries themselves (``ADV_ESTIMATORS``, ``KL_ESTIMATORS``, ``KL_CONTROLLERS``, ``POLICY_LOSSES``,
``PREFERENCE_LOSSES``, ``OFF_POLICY_CORRECTIONS``) hold the only list of valid names.
"""

from tandem.algos.advantages import (
    compute_gae,
    discounted_returns,
    group_advantages,
    reinforce_pp_returns,
)
from tandem.algos.core import (
    entropy_from_logits,
    explained_variance,
    logprobs_and_entropy,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from tandem.algos.kl import kl_estimate, kl_k1, kl_k2, kl_k3, shape_rewards
from tandem.algos.kl_control import (
    KL_CONTROLLERS,
    AdaptiveKLController,
    FixedKLController,
    KLController,
    make_kl_controller,
)
from tandem.algos.losses import bradley_terry_loss, policy_loss, preference_loss, value_loss
from tandem.algos.offpolicy import (
    OFF_POLICY_CORRECTIONS,
    OffPolicyCorrection,
    get_off_policy_correction,
    is_ratio,
)
from tandem.algos.registry import (
    ADV_ESTIMATORS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    PREFERENCE_LOSSES,
    AdvantageEstimator,
    KLEstimator,
    PairLogps,
    PolicyLoss,
    PreferenceLoss,
    Registry,
    get_adv_est,
    get_kl_estimator,
    get_policy_loss,
    get_preference_loss,
    register_adv_est,
    register_kl_estimator,
    register_policy_loss,
    register_preference_loss,
)

__all__ = [
    "ADV_ESTIMATORS",
    "KL_CONTROLLERS",
    "KL_ESTIMATORS",
    "OFF_POLICY_CORRECTIONS",
    "POLICY_LOSSES",
    "PREFERENCE_LOSSES",
    "AdaptiveKLController",
    "AdvantageEstimator",
    "FixedKLController",
    "KLController",
    "KLEstimator",
    "OffPolicyCorrection",
    "PairLogps",
    "PolicyLoss",
    "PreferenceLoss",
    "Registry",
    "bradley_terry_loss",
    "compute_gae",
    "discounted_returns",
    "entropy_from_logits",
    "explained_variance",
    "get_adv_est",
    "get_kl_estimator",
    "get_off_policy_correction",
    "get_policy_loss",
    "get_preference_loss",
    "group_advantages",
    "is_ratio",
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "logprobs_and_entropy",
    "logprobs_from_logits",
    "make_kl_controller",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "preference_loss",
    "register_adv_est",
    "register_kl_estimator",
    "register_policy_loss",
    "register_preference_loss",
    "reinforce_pp_returns",
    "shape_rewards",
    "value_loss",
]
