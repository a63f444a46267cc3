"""The held-out evaluation (what the SFT, DPO and PPO summaries and the pipeline's table print), on the
embedded model: one score per prompt, means by hand, KL 0 to itself, paired gains by hand, and the
prompts and reward of a task of one's own (files and an import path, no built-in task)."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from tandem.actors.reward import RewardError
from tandem.config import load_config
from tandem.data import task_reward
from tandem.recipes.evaluate import (
    Evaluation,
    HeldOut,
    correlation,
    evaluate_before_after,
    evaluate_policy,
    format_table,
    generate,
    held_out,
    mean_and_stderr,
    paired_gain,
)
from tests.recipes.rewards import reverse_score

PROMPTS = [f"sort: {i} {7 - i} {i % 3}" for i in range(5)]
MAX_TOKENS = 6
OWN_REWARD = "tests.recipes.rewards:reverse_score"


def test_evaluate_policy_scores_every_held_out_prompt():
    from tandem.models import load_causal_lm, load_tokenizer

    reward = task_reward("sort")
    result = evaluate_policy("tiny-qwen2", reward, PROMPTS, MAX_TOKENS, seed=3, ref_path="tiny-qwen2")
    # Greedy answers again, scored by hand: one reward per prompt, in [0, 1], and their mean.
    model, tokenizer = load_causal_lm("tiny-qwen2").eval(), load_tokenizer("tiny-qwen2")
    answers = generate(model, tokenizer, PROMPTS, MAX_TOKENS, sample=False, seed=3)
    assert len(answers.texts) == len(PROMPTS) and all(1 <= len(r) <= MAX_TOKENS for r in answers.response_ids)
    rewards = reward(PROMPTS, answers.texts)
    assert result.rewards["greedy"] == rewards and all(0.0 <= r <= 1.0 for r in rewards)
    r = result.metrics
    assert (r["greedy/mean"], r["greedy/stderr"]) == pytest.approx(mean_and_stderr(rewards))
    assert r["greedy/length"] == pytest.approx(statistics.fmean(len(r) for r in answers.response_ids))
    assert 0.0 <= r["sampled/mean"] <= 1.0 and 1 <= r["sampled/length"] <= MAX_TOKENS
    assert len(result.rewards["sampled"]) == len(PROMPTS)
    assert r["kl_to_ref"] == 0.0  # the policy is its own reference


def test_proxies_score_the_same_answers():
    # A proxy that is the gold reward plus 0.1 per token: its scores are the gold ones shifted by the
    # answers' lengths, answer by answer, and its length correlation is computed like the gold one's.
    gold = task_reward("sort")
    from tandem.models import load_tokenizer

    tokenizer = load_tokenizer("tiny-qwen2")

    def proxy(prompts, responses):
        return [g + 0.1 * len(tokenizer(r)["input_ids"]) for g, r in zip(gold(prompts, responses), responses)]

    result = evaluate_policy("tiny-qwen2", gold, PROMPTS, MAX_TOKENS, seed=3, proxies={"rm": proxy})
    for mode in ("greedy", "sampled"):
        gold_values, proxy_values = result.rewards[mode], result.rewards[f"{mode}/rm"]
        assert len(proxy_values) == len(gold_values) == len(result.lengths[mode]) == len(PROMPTS)
        r = result.metrics
        assert (r[f"{mode}/rm"], r[f"{mode}/rm_stderr"]) == pytest.approx(mean_and_stderr(proxy_values))
        assert r[f"{mode}/rm"] > r[f"{mode}/mean"]  # every answer has tokens: the proxy pays for them
        assert r[f"{mode}/rm_length_corr"] == pytest.approx(correlation(proxy_values, result.lengths[mode]))
        assert -1.0 <= r[f"{mode}/length_corr"] <= 1.0
    assert correlation([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]) > 0.98 and correlation([1.0, 1.0], [0.0, 5.0]) == 0.0


def test_kl_to_another_reference_is_computed():
    # Two different embedded models: the KL of one to the other is a real, positive number.
    result = evaluate_policy("tiny-qwen2", task_reward("sort"), PROMPTS[:2], 4, ref_path="tiny-llama")
    assert math.isfinite(result.metrics["kl_to_ref"]) and result.metrics["kl_to_ref"] != 0.0


def _evaluation(sampled: list[float], greedy: list[float]) -> Evaluation:
    metrics = {"sampled/length": 3.0, "kl_to_ref": 0.5}
    for mode, values in (("sampled", sampled), ("greedy", greedy)):
        metrics[f"{mode}/mean"], metrics[f"{mode}/stderr"] = mean_and_stderr(values)
    return Evaluation({"sampled": sampled, "greedy": greedy}, metrics)


def test_paired_gain_by_hand():
    new, old = (
        _evaluation([1.0, 0.5, 1.0, 0.0], [1, 1, 1, 1]),
        _evaluation([0.5, 0.5, 0.0, 0.0], [1, 1, 1, 0]),
    )
    # Differences 0.5, 0, 1, 0: mean 0.375, sample variance (0.125² + 0.375² + 0.625² + 0.375²) / 3.
    stderr = math.sqrt((0.125**2 + 0.375**2 + 0.625**2 + 0.375**2) / 3) / 2
    assert paired_gain(new, old) == pytest.approx(0.375 / stderr)
    # Unpaired, the prompts' spread would count: the independent test is weaker on these numbers.
    unpaired = 0.375 / math.hypot(new.metrics["sampled/stderr"], old.metrics["sampled/stderr"])
    assert paired_gain(new, old) > unpaired
    assert paired_gain(new, old, "greedy") == pytest.approx(1.0)  # differences 0, 0, 0, 1: 0.25 / (0.5 / 2)
    assert paired_gain(old, old) == 0.0
    # The same gain on every prompt: certain, in either direction.
    better = _evaluation([0.75, 0.75, 0.25, 0.25], [1, 1, 1, 0])
    assert (paired_gain(better, old), paired_gain(old, better)) == (math.inf, -math.inf)


def test_format_table_rows_and_gains():
    held = HeldOut(["p"] * 4, task_reward("sort"), "my.mod:fn")
    results = {
        "sft": _evaluation([0.5, 0.5, 0.0, 0.0], [1, 1, 1, 0]),
        "ppo": _evaluation([1.0, 0.5, 1.0, 0.0], [1, 1, 1, 1]),
    }
    lines = format_table(results, held, "sft", [("ppo", "sft")]).splitlines()
    assert lines[0] == "my.mod:fn on 4 held-out prompts (mean +- standard error)"
    assert lines[1].split() == ["policy", "sampled", "greedy", "length", "KL", "to", "sft"]
    assert lines[3].split() == ["ppo", "0.625", "+-", "0.239", "1.000", "+-", "0.000", "3.00", "0.500"]
    assert lines[4] == "ppo - sft: +1.6 (sampled), +1.0 (greedy) standard errors, paired"


def test_evaluate_before_after_prints_the_table_and_names_both_models(capsys):
    cfg = load_config(
        "configs/sft.yaml", ["train.num_generate_eval=3", f"model.max_response_len={MAX_TOKENS}"]
    )
    out = evaluate_before_after(cfg, "tiny-qwen2", "tiny-qwen2", "sft")
    assert set(out) == {
        f"eval/{who}/{mode}" for who in ("init_true_reward", "true_reward") for mode in ("greedy", "sampled")
    }
    # The same model twice, the same seed: the same numbers.
    assert out["eval/true_reward/greedy"] == out["eval/init_true_reward/greedy"]
    assert out["eval/true_reward/sampled"] == out["eval/init_true_reward/sampled"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "sort true reward on 3 held-out prompts (mean +- standard error)"
    assert [line.split()[0] for line in printed[2:4]] == ["initial", "sft"]
    assert printed[4] == "sft - initial: +0.0 (sampled), +0.0 (greedy) standard errors, paired"
    none = load_config("configs/sft.yaml", ["train.num_generate_eval=0"])
    assert evaluate_before_after(none, "tiny-qwen2", "tiny-qwen2", "sft") == {}
    assert capsys.readouterr().out == ""  # switched off: nothing to say


def _own_eval_file(tmp_path):
    """Held-out preference pairs of the tests' own task: two pairs share the first prompt."""
    rows = [
        {"prompt": "reverse: 1 2 3", "chosen": "3 2 1", "rejected": "1 2 3"},
        {"prompt": "reverse: 1 2 3", "chosen": "3 2 1", "rejected": "3 1 2"},
        {"prompt": [{"role": "user", "content": "reverse: 4 5"}], "chosen": "5 4", "rejected": "4"},
        {"prompt": "reverse: 6 7 8", "chosen": "8 7 6", "rejected": "6"},
    ]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_held_out_of_ones_own_task_from_files_and_an_import_path(tmp_path):
    path = _own_eval_file(tmp_path)
    cfg = load_config(None, ["data.task=null", f"data.eval_files=[{path}]", f"eval.reward={OWN_REWARD}"])
    held = held_out(cfg, "pairs", n=2)
    # Distinct prompts, in file order, the first n; chat prompts stay messages.
    assert held.prompts == [
        [{"role": "user", "content": "reverse: 1 2 3"}],
        [{"role": "user", "content": "reverse: 4 5"}],
    ]
    assert held.reward_name == OWN_REWARD
    # The reward sees the prompt's text (the last user turn) and its values are checked.
    assert (
        held.reward(held.prompts, ["3 2 1", "4 5"])
        == [1.0, 0.5]
        == reverse_score(["reverse: 1 2 3", "reverse: 4 5"], ["3 2 1", "4 5"])
    )
    assert len(held_out(cfg, "pairs", n=10).prompts) == 3
    # A reward that fails is named by its key and import path.
    broken = held_out(
        cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"reward": "os:getcwd"})}), "pairs", 2
    )
    with pytest.raises(
        RewardError, match=r"reward component 'eval.reward' \(function 'os:getcwd'\) raised TypeError"
    ):
        broken.reward(broken.prompts, ["1", "2"])


def test_held_out_without_a_reward_or_prompts_says_so_in_one_line(tmp_path, capsys):
    no_reward = load_config(None, ["data.task=null", f"data.eval_files=[{_own_eval_file(tmp_path)}]"])
    assert held_out(no_reward, "pairs", 4) == (
        "held-out evaluation skipped: no evaluation reward (set eval.reward: package.module:function)"
    )
    no_prompts = load_config(None, ["data.task=null", f"eval.reward={OWN_REWARD}"])
    assert (
        held_out(no_prompts, "rl", 4)
        == "held-out evaluation skipped: no held-out prompts (set data.eval_files)"
    )
    assert evaluate_before_after(no_reward, "tiny-qwen2", "tiny-qwen2", "dpo") == {}
    assert capsys.readouterr().out.count("\n") == 1
