"""The batch order: the step alone says which examples a batch holds (what makes resume exact)."""

from __future__ import annotations

import pytest

from tandem.data.records import BatchOrder
from tandem.errors import UserError


def test_each_epoch_covers_every_full_batch_once_and_reshuffles():
    order = BatchOrder(n_examples=10, global_batch=3, epochs=2, max_steps=None, seed=1)
    assert (order.steps_per_epoch, order.total_steps) == (3, 6)
    epochs = [[i for s in range(e * 3, e * 3 + 3) for i in order.indices(s)] for e in (0, 1)]
    for seen in epochs:
        assert len(seen) == len(set(seen)) == 9  # the last partial batch (one example) is dropped
    assert epochs[0] != epochs[1]
    again = BatchOrder(10, 3, 2, None, seed=1)
    assert [again.indices(s) for s in range(6)] == [order.indices(s) for s in range(6)]


def test_max_steps_and_too_few_examples():
    assert BatchOrder(10, 3, 5, max_steps=4, seed=0).total_steps == 4
    with pytest.raises(UserError, match="fewer than one global batch"):
        BatchOrder(2, 3, 1, None, seed=0)
