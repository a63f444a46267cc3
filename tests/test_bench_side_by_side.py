"""The side-by-side bench's arithmetic (bench/side_by_side.py) on hand-computed numbers; the runs
themselves are `make bench`'s."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import _sbs_reward
import side_by_side as sbs

sys.path.remove(str(BENCH))


def test_trl_steady_step_is_the_median_after_warmup():
    # Steps 3-6 of [9, 5, 1.0, 3.0, 2.0, 10.0]: median of (1, 3, 2, 10) = 2.5.
    assert sbs.steady_step_s([9.0, 5.0, 1.0, 3.0, 2.0, 10.0], warmup=2) == 2.5


def test_tandem_steady_step_from_logged_times():
    # Rows logged at these times: step 2 took 4 s, step 3 1 s, step 4 2 s, step 5 6 s.
    times = [100.0, 104.0, 105.0, 107.0, 113.0]
    assert sbs.tandem_step_s(times, warmup=1) == 3.0  # median(4, 1, 2, 6)
    assert sbs.tandem_step_s(times, warmup=2) == 2.0  # steps 3-5: median(1, 2, 6)
    with pytest.raises(ValueError, match="warmup"):
        sbs.tandem_step_s(times, warmup=0)


def test_steady_means_and_cpu_summary():
    rows = [
        {"perf/cpu_util/generate": 0.1, "timing/generate": 9.0, "timing/policy_update": 9.0},  # warm-up
        {"perf/cpu_util/generate": 0.8, "perf/cpu_util/policy_update": 0.5, "timing/generate": 1.0},
        {"perf/cpu_util/generate": 0.6, "timing/generate": 3.0, "timing/policy_update": 6.0},
    ]
    assert sbs.steady_means(rows, 1, "perf/cpu_util/") == pytest.approx(
        {"perf/cpu_util/generate": 0.7, "perf/cpu_util/policy_update": 0.5}
    )
    overall, note = sbs.cpu_summary(rows, 1)
    # generate 0.7 over a mean 2 s, policy_update 0.5 over 6 s: (1.4 + 3.0) / 8 = 0.55.
    assert overall == pytest.approx(0.55)
    assert note == "generate 0.70, policy_update 0.50"


def test_ratio_rows():
    # TRL 0.3 s a step at 20 tokens; sync 0.6 s at 20 tokens, async 0.2 s at 10 tokens.
    trl = dict.fromkeys(["sync", "async (K=1)"], (0.3, 20.0))
    rows = sbs.ratio_rows("tiny", trl, {"sync": (0.6, 20.0), "async (K=1)": (0.2, 10.0)})
    assert [(m, round(v, 6), u) for m, v, u, _ in rows] == [
        ("tiny: tandem sync / TRL", 0.5, "x"),
        ("tiny: tandem async (K=1) / TRL", 1.5, "x"),
    ]
    assert rows[0][3].endswith("per response token 0.50x")
    assert rows[1][3].endswith("per response token 0.75x")
    assert sbs.ratio_rows("tiny", {}, {"sync": (0.6, 20.0)}) == []


def test_trl_runs_bracketing_groups_of_modes_give_each_the_mean_of_its_groups_neighbours():
    runs = [(0.3, 10.0), (0.5, 20.0), (0.4, 30.0)]
    groups = [["sync", "async"], ["sync, hf", "async, hf"]]
    assert sbs.trl_per_mode(runs, groups) == {
        "sync": pytest.approx((0.4, 15.0)),
        "async": pytest.approx((0.4, 15.0)),
        "sync, hf": pytest.approx((0.45, 25.0)),
        "async, hf": pytest.approx((0.45, 25.0)),
    }
    assert sbs.trl_per_mode(runs[:1], [["sync", "async"]]) == {"sync": (0.3, 10.0), "async": (0.3, 10.0)}
    with pytest.raises(ValueError, match="bracket"):
        sbs.trl_per_mode(runs[:2], groups)


def test_size_rows_without_trl_still_reports_tandem():
    size = sbs.Size(8, 16, 1, 1, 1, max_len=4, steps=3, warmup=1, bracket=False)
    metrics = [
        {"time": 0.0, "perf/cpu_util/generate": 1.0, "timing/generate": 1.0},
        {"time": 2.0, "perf/cpu_util/generate": 0.5, "timing/generate": 1.0, "offpolicy/staleness_mean": 1.0},
        {"time": 6.0, "perf/cpu_util/generate": 0.5, "timing/generate": 1.0, "offpolicy/staleness_mean": 0.0},
    ]
    rows = sbs.size_rows("t", size, 1000, "skipped: no trl", {"sync": metrics, "async (K=1)": metrics})
    by_name = {m: v for m, v, _, _ in rows}
    assert by_name["t: TRL GRPOTrainer"] == "-"
    assert by_name["t: tandem sync"] == pytest.approx(64 / 3.0)  # median(2, 4) = 3 s a step
    assert by_name["t: tandem async (K=1) staleness_mean"] == pytest.approx(0.5)
    assert not any("/ TRL" in m for m in by_name)


def test_each_backends_tandem_runs_are_compared_with_the_trl_runs_around_them():
    size = sbs.Size(8, 16, 1, 1, 1, max_len=4, steps=3, warmup=1, bracket=True, transformers=True)
    # Steady steps (after 1 warm-up step): TRL 0.3 s, then 0.5 s, then 0.4 s a step.
    trl = [
        {"step_s": [9.0, s, s], "completion_length": [1.0, 10.0, 10.0], "trl": "x"} for s in (0.3, 0.5, 0.4)
    ]
    sync = [{"time": 0.0}, {"time": 0.2}, {"time": 0.4}]  # 0.2 s a step
    fast = [{"time": 0.0}, {"time": 0.1}, {"time": 0.2}]  # 0.1 s a step
    tandem = {"sync": sync, "async (K=1)": fast}  # vLLM's pair, between TRL's 0.3 and 0.5
    tandem |= {f"{m}, transformers rollout": rows for m, rows in tandem.items()}  # between 0.5 and 0.4
    rows = sbs.size_rows("t", size, 1000, trl, tandem)
    by_name = {m: (v, n) for m, v, _, n in rows}
    assert by_name["t: TRL GRPOTrainer"][0] == pytest.approx(64 / 0.4)  # over all three runs
    assert "runs 0.300, 0.500, 0.400 s" in by_name["t: TRL GRPOTrainer"][1]
    assert by_name["t: tandem sync / TRL"][0] == pytest.approx(0.4 / 0.2)
    assert by_name["t: tandem async (K=1) / TRL"][0] == pytest.approx(0.4 / 0.1)
    assert by_name["t: tandem sync, transformers rollout / TRL"][0] == pytest.approx(0.45 / 0.2)
    assert by_name["t: tandem async (K=1), transformers rollout / TRL"][0] == pytest.approx(0.45 / 0.1)


def test_count_params(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, tmp_path / "m.safetensors")
    assert sbs.count_params(tmp_path / "m.safetensors") == 17


def test_trl_pin_matches_the_bench_extra():
    pyproject = tomllib.loads((BENCH.parent / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["bench"]
    assert sorted(extra) == [f"accelerate=={sbs.TRL_VERSION}", f"trl=={sbs.TRL_VERSION}"]


def test_sizes_from_the_environment(monkeypatch):
    monkeypatch.setenv("SBS_SIZES", "mid, tiny")
    assert sbs.selected_sizes() == ["mid", "tiny"]
    monkeypatch.setenv("SBS_SIZES", "huge")
    with pytest.raises(ValueError, match="huge"):
        sbs.selected_sizes()


def test_partial_sort_reward_by_hand():
    prompts = ["sort: 7 3 9 1", "sort: 10 2", "sort: 5 4"]
    responses = ["1 3 7 9", "2 5", "no digits"]
    assert _sbs_reward.partial_sort(prompts, responses) == [1.0, 0.5, 0.0]


def test_tiny_runs_each_mode_on_both_rollout_backends_and_mid_on_vllm():
    assert sbs.modes(sbs.SIZES["tiny"]) == {
        "sync": (0, "vllm"),
        "async (K=1)": (1, "vllm"),
        "sync, transformers rollout": (0, "transformers"),
        "async (K=1), transformers rollout": (1, "transformers"),
    }
    assert sbs.modes(sbs.SIZES["mid"]) == {"sync": (0, "vllm"), "async (K=1)": (1, "vllm")}
    # Tiny's TRL runs bracket each backend's pair: before, between and after.
    assert sbs.mode_groups(sbs.SIZES["tiny"]) == [
        ["sync", "async (K=1)"],
        ["sync, transformers rollout", "async (K=1), transformers rollout"],
    ]
    assert sbs.mode_groups(sbs.SIZES["mid"]) == [["sync", "async (K=1)"]]
