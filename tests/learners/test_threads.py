"""Learner compute threads: a rank trains on its share of the node's cores, not on Ray's CPU count
(1 for a 1-CPU actor), and goes back to Ray's count for passes that run beside other roles."""

from __future__ import annotations

import os

import pytest
import torch

from tandem.config import LearnerConfig
from tandem.learners.base import DeepSpeedLearner
from tandem.learners.threads import CoreSplit, on_all_cores, rank_threads

CORES = len(os.sched_getaffinity(0))


def test_rank_threads_share_the_cores_among_the_ranks_on_the_node(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert rank_threads() == CORES
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert rank_threads() == max(1, CORES // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(4 * CORES))
    assert rank_threads() == 1  # more ranks than cores: one thread each, never 0


class _Rank:
    def __init__(self, threads: int | None, core_sharers: int = 1) -> None:
        self.cfg = LearnerConfig(threads=threads)
        self.core_sharers = core_sharers

    @on_all_cores
    def work(self) -> int:
        return torch.get_num_threads()

    @on_all_cores
    def fail(self) -> None:
        raise RuntimeError("the step failed")


def test_on_all_cores_sets_the_threads_for_the_call_and_restores_them(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # what Ray gives a 1-CPU actor
        assert _Rank(None).work() == CORES
        assert _Rank(None, core_sharers=2).work() == max(1, CORES // 2)  # the engines' half left
        assert _Rank(3).work() == 3  # learner.threads wins
        assert torch.get_num_threads() == 1
        with pytest.raises(RuntimeError, match="the step failed"):
            _Rank(3).fail()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_training_and_held_out_loss_run_on_all_cores():
    # Every method on_all_cores wraps runs the code of its one wrapper function.
    for method in (DeepSpeedLearner.train_batch, DeepSpeedLearner.eval_loss):
        assert method.__code__ is on_all_cores(lambda self: None).__code__, method.__qualname__


def test_core_split_tries_half_then_all_and_keeps_the_faster_per_token():
    split = CoreSplit(True)
    assert [split.sharers(s) for s in (1, 2, 3)] == [None, 2, 1]  # step 1 overlaps nothing
    split.record(1, 9.0, 10)  # not a trial step: ignored
    split.record(2, 0.30, 1500)  # half the cores: 0.200 ms a token
    assert split.sharers(4) is None  # undecided until both were tried
    split.record(3, 0.40, 1600)  # all of them: 0.250 ms a token, though more tokens
    assert split.sharers(4) == split.sharers(50) == 2
    # Kept in checkpoints: a resumed run keeps the choice.
    assert CoreSplit(True, split.state_dict()).sharers(5) == 2
    other = CoreSplit(True, {"2": 2e-4, "1": 1e-4})
    assert other.sharers(4) == 1
    assert CoreSplit(False).sharers(2) is None  # learner.threads set, synchronous, or on GPUs
