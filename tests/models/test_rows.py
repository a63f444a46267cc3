"""`Rows`: the rollout batch as arrays; layouts, row selection and the move between layouts."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tandem.models.rows import Rows, concat_rows, place_rows
from tandem.models.tokens import next_token_targets

PAD = 0


def _rows() -> Rows:
    # Prompt lengths 3, 1, 2; response lengths 2, 3, 1.
    values = torch.tensor([[0.1, 0.2, 0.0], [1.0, 2.0, 3.0], [7.0, 0.0, 0.0]])
    return Rows.from_ids([[5, 6, 7], [8], [9, 10]], [[11, 12], [13, 14, 15], [16]], PAD, values=values)


def test_layouts():
    rows = _rows()
    assert rows["input_ids"].tolist() == [[5, 6, 7, 11, 12], [8, 13, 14, 15, 0], [9, 10, 16, 0, 0]]
    assert rows["response_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]
    assert rows["mask"].tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert len(rows) == 3 and "values" in rows and "advantages" not in rows


def test_at_targets_places_each_value_at_the_position_predicting_its_token():
    # Position t of the logits predicts token t + 1: row 0's responses (tokens 3, 4) sit at 2, 3.
    expected = torch.tensor([[0, 0, 0.1, 0.2], [1, 2, 3, 0], [0, 7, 0, 0]])
    rows = _rows()
    target_mask = next_token_targets(rows.tokens())[1]
    torch.testing.assert_close(rows.at_targets("values", target_mask), expected)
    back = rows.from_targets(rows.at_targets("values", target_mask), target_mask)
    np.testing.assert_array_equal(back, rows["values"].numpy())


def test_select_copies_rows_and_cuts_unused_padding():
    rows = _rows().select([2, 0])
    assert rows["input_ids"].tolist() == [[9, 10, 16, 0, 0], [5, 6, 7, 11, 12]]
    torch.testing.assert_close(rows["values"], torch.tensor([[7.0, 0.0], [0.1, 0.2]]))
    short = _rows()[2:]
    assert short["input_ids"].tolist() == [[9, 10, 16]] and short["values"].tolist() == [[7.0]]
    assert short["mask"].tolist() == [[1.0]]


def test_merge_and_pickle_round_trip():
    rows = _rows()
    more = Rows(advantages=np.ones((3, 3), dtype=np.float32))
    merged = pickle.loads(pickle.dumps(rows.merge(more)))
    assert sorted(merged.keys()) == sorted([*rows.keys(), "advantages"])
    with pytest.raises(ValueError, match="cannot merge 1 rows into 3"):
        rows.merge(Rows(advantages=np.ones((1, 3))))


def test_concat_rows_pads_to_the_widest():
    out = concat_rows([np.ones((1, 2), np.float32), np.full((2, 3), 2, np.float32)])
    assert out.tolist() == [[1, 1, 0], [2, 2, 2], [2, 2, 2]]


def test_length_groups_sort_rows_and_split_while_the_forwards_stay_large_enough():
    # Total lengths (prompt + response) 6, 2, 9, 3, 5, 4, 8, 7: sorted order 1, 3, 5, 4, 0, 7, 6, 2.
    lengths = [6, 2, 9, 3, 5, 4, 8, 7]
    rows = Rows.from_ids([[1] * (n - 1) for n in lengths], [[5]] * len(lengths), 0)
    split = [[int(i) for i in g] for g in rows.length_groups(min_tokens=1)]
    assert split == [[1], [3], [5], [4], [0], [7], [6], [2]]  # up to 8 groups
    # Padded tokens: 2 groups 4*5 + 4*9 = 56 (28 a group); 4 groups 2*3 + 2*5 + 2*7 + 2*9 = 48 (12).
    assert [[int(i) for i in g] for g in rows.length_groups(min_tokens=28)] == [[1, 3, 5, 4], [0, 7, 6, 2]]
    assert len(rows.length_groups(min_tokens=12)) == 4
    assert len(rows.length_groups(min_tokens=29)) == 1
    # At most 3 rows a forward: 3 groups at least, even where the tokens would want one.
    assert [len(g) for g in rows.length_groups(min_tokens=1000, max_rows=3)] == [3, 3, 2]


def test_place_rows_puts_each_groups_results_back_in_row_order():
    groups = [np.array([2, 0]), np.array([1])]
    parts = [np.array([[20.0, 21.0], [0.5, 0.0]]), np.array([[10.0, 11.0, 12.0]])]
    expected = [[0.5, 0.0, 0.0], [10.0, 11.0, 12.0], [20.0, 21.0, 0.0]]
    assert place_rows(parts, groups).tolist() == expected
