"""`tandem study overoptimization` at toy scale, end to end (real Ray, vLLM and DeepSpeed): points
along a run from its checkpoints, the table's structure and finite numbers, and its plots."""

from __future__ import annotations

import json

import pytest

from tandem.config import load_config
from tandem.studies import overoptimization
from tandem.studies.common import run_study
from tests.studies.toy import all_finite, random_reward_model, study_overrides

pytestmark = pytest.mark.slow  # end to end: real Ray, vLLM and DeepSpeed processes


def test_overoptimization_study_traces_points_along_each_run(ray_session, tmp_path, capsys):
    arms = {"kl-0.01": ["ppo.kl_coef=0.01"]}  # one arm: the points along it are what is new here
    overrides = [*study_overrides(tmp_path, "sort", arms), "ppo.save_every=1", "study.checkpoints=true"]
    # The stages are the length study's to train: this one starts from the embedded model and a fixed
    # random reward model (two learner jobs fewer).
    overrides += [
        "study.sft_model=tiny-qwen2",
        f"study.rm_model={random_reward_model(tmp_path / 'rm-model')}",
    ]
    result = run_study("overoptimization", load_config(None, [*overrides, "run.keep_checkpoints=5"]))
    printed = capsys.readouterr().out
    folder = tmp_path / "study"
    table = json.loads((folder / "table.json").read_text())
    assert table["columns"] == overoptimization.COLUMNS == result["columns"]
    # Each arm: the SFT model (step 0, KL 0), then its checkpoints at steps 1 and 2 (2 is the final).
    assert [(row[0], row[1]) for row in table["rows"]] == [(arm, step) for arm in arms for step in (0, 1, 2)]
    assert all_finite(table["rows"]) and all_finite([list(table["summary"].values())])
    for row in table["rows"]:
        assert row[3] >= 0 and (row[1] > 0 or row[2] == 0.0)  # sqrt KL; the SFT model is its own reference
    assert set(table["summary"]) >= {f"{arm}/gold_fall_after_peak_se" for arm in arms}
    assert "sqrt KL" in printed
    for plot in ("overoptimization.png", "overoptimization_steps.png"):
        assert (folder / plot).stat().st_size > 0
