"""`tandem study length` at toy scale, end to end (real Ray, vLLM and DeepSpeed): the table's
structure and finite numbers, and its plots. Whether the mitigations work is the default config's
measurement (README), not a two-step run's."""

from __future__ import annotations

import json

import pytest

from tandem.config import load_config
from tandem.studies import length
from tandem.studies.common import run_study
from tests.studies.toy import all_finite, study_overrides

pytestmark = pytest.mark.slow  # end to end: real Ray, vLLM and DeepSpeed processes


def test_length_study_writes_its_table_and_plots(ray_session, tmp_path, capsys):
    arms = {"unmitigated": [], "debias": ["reward.length_debias=true"]}
    cfg = load_config(None, study_overrides(tmp_path, "evens", arms))
    result = run_study("length", cfg)
    printed = capsys.readouterr().out
    folder = tmp_path / "study"
    table = json.loads((folder / "table.json").read_text())
    assert table["columns"] == length.COLUMNS == result["columns"]
    assert [row[0] for row in table["rows"]] == ["sft", "unmitigated", "debias"]
    assert all_finite(table["rows"]) and all_finite([list(table["summary"].values())])
    summary = table["summary"]
    assert -1 <= summary["rm_length_corr_sft"] <= 1 and 0 <= summary["probe/rm_prefers_padded"] <= 1
    assert summary["probe/true_gain_from_padding"] < 0  # padding a correct answer costs F1
    assert "debias/true_vs_baseline_se" in summary and "debias/meets_goal" in summary
    assert "true (sampled)" in printed and f"plot: {folder / 'length_steps.png'}" in printed
    for plot in ("length_steps.png", "length_mitigations.png", "rm_length_bias.png"):
        assert (folder / plot).stat().st_size > 0
    # Each arm's PPO run is in the study's folder and scored with its own switch.
    debias_rows = [
        json.loads(line) for line in (folder / "ppo-debias" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all("reward/length_debias" in row for row in debias_rows)
    assert (folder / "sft" / "final").is_dir() and (folder / "rm" / "final").is_dir()
