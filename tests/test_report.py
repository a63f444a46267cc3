"""`tandem report`: plots from metrics.jsonl, only for panels with data; clear errors."""

from __future__ import annotations

import json

import pytest

from tandem.errors import UserError
from tandem.report import _series, write_report


def test_writes_png_per_panel_with_data(tmp_path):
    rows = [
        {"step": s, "reward/mean": 0.1 * s, "kl/mean": 0.01 * s, "timing/generate": 1.0} for s in range(1, 5)
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    paths = write_report(tmp_path)
    assert sorted(p.name for p in paths) == ["plot_kl.png", "plot_reward.png", "plot_timing.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_series_matches_exact_keys_and_prefixes():
    rows = [
        {"step": 3, "reward/mean": 1.0, "reward/std": 0.5, "rewardx": 9, "true_reward/mean": 0.2, "note": "s"}
    ]
    assert _series(rows, ("reward/",)) == {"reward/mean": ([3], [1.0]), "reward/std": ([3], [0.5])}
    assert _series(rows, ("true_reward/mean",)) == {"true_reward/mean": ([3], [0.2])}


def test_missing_and_corrupt_metrics_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        write_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{oops\n')
    with pytest.raises(UserError, match=r"metrics.jsonl, line 2: not JSON"):
        write_report(tmp_path)
