"""Work split over the ranks of a group: contiguous, complete, balanced."""

from __future__ import annotations

from tandem.cluster.sharding import shard


def test_shard_is_contiguous_and_balanced():
    assert shard(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert shard(["a"], 2) == [["a"], []]
    assert shard([], 2) == [[], []]


def test_shard_keeps_every_item_once_in_order():
    for n_items in range(12):
        for n in range(1, 5):
            parts = shard(list(range(n_items)), n)
            assert [x for part in parts for x in part] == list(range(n_items))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
