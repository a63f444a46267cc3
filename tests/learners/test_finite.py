"""A non-finite loss or gradient skips the optimizer step on every rank (the weights stay as they
were, so no NaN can reach the engines), and too many in a row end the job with a clear error. Real
DeepSpeed at world size 2, only rank 1's loss NaN: the skip must agree across ranks. Without ZeRO
and under ZeRO-3 tandem's guard skips the step; ZeRO-1/2's optimizer skips it itself, and the learner
counts it the same way."""

from __future__ import annotations

import sys

import pytest
import torch
from ray import cloudpickle

from tandem.cluster.groups import ActorGroup, ActorGroupError
from tandem.cluster.sharding import shard
from tandem.config import LearnerConfig
from tandem.errors import find_user_error
from tandem.learners import SFTLearner
from tandem.learners.finite import NonFiniteError

pytestmark = pytest.mark.slow  # real Ray and DeepSpeed processes

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class PoisonedSFT(SFTLearner):
    """SFT whose loss is NaN on rank 1 while `poisoned` is set."""

    poisoned = False

    def poison(self, on: bool) -> None:
        self.poisoned = on

    def compute_loss(self, batch):
        loss, units, metrics = super().compute_loss(batch)
        return (loss * float("nan") if self.poisoned and self.rank == 1 else loss), units, metrics

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.full_state_dict().items()}


@pytest.mark.parametrize("stage", [0, 3])
def test_nonfinite_steps_are_skipped_then_fail(ray_session, stage):
    from tandem.data import prompt_ids, response_ids, sft_examples
    from tandem.models import load_tokenizer, resolve_model

    tok = load_tokenizer("tiny-qwen2")
    examples = [
        {"prompt_ids": prompt_ids(tok, e["prompt"]), "response_ids": response_ids(tok, e["response"])}
        for e in sft_examples("sort", 4, seed=1)
    ]
    cfg = LearnerConfig(world_size=2, zero_stage=stage, micro_batch_size=2, global_batch_size=4)
    with ActorGroup(
        "policy", PoisonedSFT, 2, cpus_per_actor=0.5, args=(cfg, resolve_model("tiny-qwen2"), 10)
    ) as group:
        group.call("setup")

        def step() -> dict:
            metrics = group.call_per_rank("train_batch", [(p,) for p in shard(examples, 2)])
            assert metrics[0]["nonfinite_skipped"] == metrics[1]["nonfinite_skipped"]
            return metrics[0]

        assert step()["nonfinite_skipped"] == 0.0
        before = group.call("weights")[0]
        group.call("poison", True)
        for _ in range(2):  # the default limit is 3 in a row
            assert step()["nonfinite_skipped"] == 1.0
        after = group.call("weights")[0]
        assert all(after[k].equal(before[k]) and torch.isfinite(after[k]).all() for k in before)
        group.call("poison", False)
        assert step()["nonfinite_skipped"] == 0.0  # a finite step resets the count, and trains
        assert any(not group.call("weights")[0][k].equal(before[k]) for k in before)
        group.call("poison", True)
        step(), step()
        with pytest.raises(ActorGroupError) as err:
            step()
        assert isinstance(find_user_error(err.value), NonFiniteError)
        assert "3 optimizer steps in a row had a non-finite" in str(find_user_error(err.value))
