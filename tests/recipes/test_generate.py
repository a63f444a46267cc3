"""`tandem generate`: one in-process rollout engine samples held-out prompts; each is scored."""

from __future__ import annotations

import argparse
import re

import pytest

from tandem.config import load_config
from tandem.recipes import generate

pytestmark = pytest.mark.slow  # end to end: real Ray, vLLM and DeepSpeed processes


def test_generate_prints_one_scored_sample_per_prompt(capsys):
    cfg = load_config(
        "configs/generate.yaml",
        ["data.num_eval=4", "model.max_response_len=8", "rollout.kv_cache_mb=16", "rollout.max_num_seqs=8"],
    )
    assert generate.main(cfg, argparse.Namespace()) == 0
    lines = capsys.readouterr().out.splitlines()
    scored = [float(m.group(1)) for m in map(re.compile(r"true reward (\d\.\d\d)$").search, lines) if m]
    assert len(scored) == 4 and all(0.0 <= r <= 1.0 for r in scored)
    mean = re.search(r"mean true reward over 4 prompts: (\d\.\d+)", lines[-1])
    assert mean is not None and abs(float(mean.group(1)) - sum(scored) / 4) < 0.01
