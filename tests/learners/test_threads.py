"""Learner compute threads: a rank trains on its share of the node's cores, not on Ray's CPU count
(1 for a 1-CPU actor), and goes back to Ray's count for passes that run beside other roles."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from tandem.config import LearnerConfig
from tandem.learners import threads
from tandem.learners.base import DeepSpeedLearner
from tandem.learners.threads import CoreHandoff, on_all_cores, rank_threads

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
        self.handoff = CoreHandoff()
        self.handoff.sharers = core_sharers

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


def test_a_handoff_trains_on_half_the_cores_until_the_others_are_done_then_on_all(monkeypatch):
    from tandem.models import load_causal_lm

    monkeypatch.setattr(threads, "rank_threads", lambda sharers=1: 4 // sharers)
    model = load_causal_lm("tiny-qwen2")
    handoff = CoreHandoff()
    handoff.attach(model)
    layers = model.model.layers
    seen: list[tuple[str, int, int]] = []  # (pass, layer, threads it ran with)

    def record(kind: str, i: int) -> None:
        seen.append((kind, i, torch.get_num_threads()))

    def in_backward(i: int, out: torch.Tensor) -> None:
        out.register_hook(lambda _grad: record("backward", i))

    for i, layer in enumerate(layers):  # registered after the hand-off's checks: they see their effect
        layer.register_forward_pre_hook(lambda *_, i=i: record("forward", i))
        layer.register_forward_hook(lambda _m, _a, out, i=i: in_backward(i, out))
    done = threading.Event()
    layers[1].register_forward_hook(lambda *_: done.set())  # the engines finish during layer 1
    before = torch.get_num_threads()
    try:
        rank = _Rank(None)
        rank.handoff = handoff
        ids = torch.tensor([[2, 6, 40, 41, 50]])

        @on_all_cores
        def step(self) -> None:
            model(ids).logits.sum().backward()

        with handoff.beside(done) as seconds:
            step(rank)
        last = len(layers) - 1
        assert seen[:3] == [("forward", 0, 2), ("forward", 1, 2), ("forward", 2, 4)]
        assert all(t == 4 for _, i, t in seen[2:]) and seen[-1] == ("backward", 0, 4)
        assert ("backward", last, 4) in seen and 0 < seconds["all_cores_s"]
        assert handoff.sharers == 1

        seen.clear()  # never done: half the cores throughout, forward and backward
        with handoff.beside(threading.Event()) as seconds:
            step(rank)
        assert {t for *_, t in seen} == {2} and len(seen) == 2 * len(layers)
        assert seconds["all_cores_s"] < 0.01

        seen.clear()  # nothing beside: all the cores
        with handoff.beside(None):
            step(rank)
        assert {t for *_, t in seen} == {4}
    finally:
        torch.set_num_threads(before)
