"""The reward scorer: functions, a reward model, tandem's own HTTP server, weighted sums, errors."""

from __future__ import annotations

import math
import subprocess
import sys
import threading

import pytest

from tandem.actors.reward import RewardError, RewardScorer, make_reward_actor
from tandem.config import Config, RewardComponent
from tandem.errors import UserError
from tandem.recipes.serve_reward import make_server

PROMPTS = ["sort: 3 1 2", "sort: 9 8", "sort: 5 5 1 0"]
RESPONSES = ["1 2 3", "9 8", "0 1 5 5"]


def length_reward(prompts, responses):
    return [float(len(r)) for r in responses]


def nan_reward(prompts, responses):
    return [1.0, float("nan")] + [0.0] * (len(responses) - 2)


def short_reward(prompts, responses):
    return [1.0]


def raising_reward(prompts, responses):
    raise KeyError("no such thing")


def fn(name: str) -> str:
    return f"{__name__}:{name}"


def test_task_reward_and_weighted_sum():
    scorer = RewardScorer(
        [
            RewardComponent(kind="function", path="task", name="true", weight=2.0),
            RewardComponent(kind="function", path=fn("length_reward"), weight=-0.1),
        ],
        task="sort",
    )
    result = scorer.score(PROMPTS, RESPONSES)
    assert result.components["true"] == [1.0, 0.0, 1.0]  # "9 8" is unsorted: 0 of 2 positions right
    assert result.components["function"] == [5.0, 3.0, 7.0]
    assert result.total == pytest.approx([2 - 0.5, 0 - 0.3, 2 - 0.7])


def test_chat_prompts_reach_functions_as_text():
    scorer = RewardScorer([RewardComponent(kind="function", path="task")], task="sort")
    messages = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": p}] for p in PROMPTS]
    assert scorer.score(messages, RESPONSES).total == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "nan_reward",
            r"'bad' \(function '.*:nan_reward'\) returned a non-finite value \(nan\) for sample 1",
        ),
        ("short_reward", r"'bad' \(function '.*:short_reward'\) returned 1 values for 3 samples"),
        ("raising_reward", r"'bad' \(function '.*:raising_reward'\) raised KeyError: 'no such thing'"),
    ],
)
def test_bad_reward_functions_are_named(name, message):
    scorer = RewardScorer([RewardComponent(kind="function", path=fn(name), name="bad")])
    with pytest.raises(RewardError, match=message):
        scorer.score(PROMPTS, RESPONSES)


def test_ppo_reward_actor_lets_nan_through_for_the_driver_to_skip():
    """`allow_nonfinite` (PPO's reward actor): NaN reaches the driver, which skips the step's update;
    the other failures stay errors."""
    component = [RewardComponent(kind="function", path=fn("nan_reward"), name="bad", weight=2.0)]
    result = RewardScorer(component, allow_nonfinite=True).score(PROMPTS, RESPONSES)
    assert result.total[0] == 2.0 and math.isnan(result.total[1]) and math.isnan(result.components["bad"][1])
    short = [RewardComponent(kind="function", path=fn("short_reward"), name="bad")]
    with pytest.raises(RewardError, match="returned 1 values for 3 samples"):
        RewardScorer(short, allow_nonfinite=True).score(PROMPTS, RESPONSES)


def test_a_function_scorer_scores_the_engines_draws_without_loading_torch():
    """`score_draws` (PPO's reward actor): the engines' batches in request order, each sample scored
    against the prompt it answers. A scorer of functions never loads torch: its actor starts in ~2.6 s
    of CPU instead of ~4.7 s (toy PPO job)."""
    code = """
import pickle, sys
from tandem.actors.reward import RewardScorer
from tandem.actors.samples import Sample, SampleBatch
from tandem.config import RewardComponent

def draw(answers):  # (prompt index, response) -> one engine's batch, as it crosses processes
    samples = [Sample([1], [2, 3], [-0.5, -0.5], text, "stop", 0, i) for i, text in answers]
    return pickle.loads(pickle.dumps(SampleBatch.from_samples(samples)))

scorer = RewardScorer([RewardComponent(kind="function", path="task")], task="sort")
first, second = draw([(0, "1 2 3"), (0, "3 1 2")]), draw([(1, "8 9"), (2, "0 1 5 5")])
print(scorer.score_draws(sys.argv[1:], first, second).total, "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code, *PROMPTS], capture_output=True, text=True, check=True)
    # "8 9" answers "sort: 9 8" (right); scored against prompt 0 it would be wrong.
    assert out.stdout.split() == ["[1.0,", "0.0,", "1.0,", "1.0]", "False"]


def test_config_errors():
    with pytest.raises(UserError, match="share the metric name"):
        RewardScorer([RewardComponent(kind="function", path="task")] * 2, task="sort")
    with pytest.raises(UserError, match="needs `data.task`"):
        RewardScorer([RewardComponent(kind="function", path="task")], task=None)
    with pytest.raises(UserError, match="cannot import module"):
        RewardScorer([RewardComponent(kind="function", path="no_such_module_xyz:f")])


def _direct_scores(path, prompts, responses):
    """The reward model on one unpadded sequence at a time: prompt (chat template) + response + EOS."""
    import torch

    from tandem.data.chat import prompt_ids, response_ids
    from tandem.models import load_reward_model, load_tokenizer

    model, tok = load_reward_model(path).eval(), load_tokenizer(path)
    with torch.no_grad():
        return [
            model(input_ids=torch.tensor([prompt_ids(tok, p) + response_ids(tok, r)])).logits[0, 0].item()
            for p, r in zip(prompts, responses)
        ]


@pytest.fixture(scope="module")
def rm_scorer(reward_model_dir):
    # batch_size 2: the 3 rows need two forwards, one of them padded
    return RewardScorer([RewardComponent(kind="model", path=reward_model_dir, name="rm")], batch_size=2)


def test_reward_model_scores_match_unbatched_forward(rm_scorer, reward_model_dir):
    scores = rm_scorer.score(PROMPTS, RESPONSES).components["rm"]
    assert scores == pytest.approx(_direct_scores(reward_model_dir, PROMPTS, RESPONSES), abs=1e-5)
    assert len({round(s, 4) for s in scores}) == 3  # distinct: the test would see mixed-up rows


@pytest.fixture()
def server(rm_scorer):
    srv = make_server(rm_scorer, "127.0.0.1", 0, "s3cret")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/score"
    srv.shutdown()
    srv.server_close()


def test_http_component_against_tandem_server(server, rm_scorer, monkeypatch):
    monkeypatch.setenv("MY_RM_TOKEN", "s3cret")
    remote = RewardScorer(
        [
            RewardComponent(kind="http", path=server, token_env="MY_RM_TOKEN", weight=0.5),
            RewardComponent(kind="function", path="task"),
        ],
        task="sort",
    )
    result = remote.score(PROMPTS, RESPONSES)
    local = rm_scorer.score(PROMPTS, RESPONSES).total
    assert result.components["http"] == pytest.approx(local, abs=1e-6)
    assert result.total == pytest.approx([0.5 * s + t for s, t in zip(local, [1.0, 0.0, 1.0])])


def test_server_rejects_wrong_or_missing_token(server, monkeypatch):
    monkeypatch.setenv("MY_RM_TOKEN", "wrong")
    remote = RewardScorer([RewardComponent(kind="http", path=server, token_env="MY_RM_TOKEN", retries=0)])
    with pytest.raises(RewardError, match=r"HTTP 401.*check the token"):
        remote.score(PROMPTS, RESPONSES)
    monkeypatch.delenv("MY_RM_TOKEN")
    with pytest.raises(RewardError, match="MY_RM_TOKEN .* is not set"):
        remote.score(PROMPTS, RESPONSES)
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:  # no Authorization header at all
        urllib.request.urlopen(urllib.request.Request(server, data=b"{}", method="POST"), timeout=10)
    assert err.value.code == 401


def test_serve_reward_refuses_to_start_without_token(tmp_path, monkeypatch, capsys):
    from tandem.cli import main

    monkeypatch.delenv("TANDEM_TEST_TOKEN", raising=False)
    config = tmp_path / "serve.yaml"
    config.write_text("serve:\n  token_env: TANDEM_TEST_TOKEN\n  port: 0\n")
    assert main(["serve-reward", str(config)]) == 2
    assert "set the environment variable TANDEM_TEST_TOKEN" in capsys.readouterr().err


def test_reward_actor(ray_session, server, rm_scorer, monkeypatch):
    """In a Ray actor, with the HTTP token set in the driver after Ray started: the actor gets it
    from make_reward_actor, not from an inherited environment."""
    monkeypatch.setenv("MY_RM_TOKEN", "s3cret")
    cfg = Config.model_validate(
        {
            "data": {"task": "sort"},
            "reward": {
                "cpus": 0.5,
                "components": [
                    {"kind": "function", "path": "task", "name": "true"},
                    {
                        "kind": "function",
                        "path": "tandem.data.rewards:sort_reward",
                        "name": "again",
                        "weight": 0.5,
                    },
                    {
                        "kind": "http",
                        "path": server,
                        "name": "remote",
                        "token_env": "MY_RM_TOKEN",
                        "weight": 0.0,
                    },
                ],
            },
        }
    )
    actor = make_reward_actor(cfg)
    result = ray_session.get(actor.score.remote(PROMPTS, RESPONSES))
    ray_session.kill(actor)
    assert result.components["true"] == result.components["again"] == [1.0, 0.0, 1.0]
    assert result.components["remote"] == pytest.approx(rm_scorer.score(PROMPTS, RESPONSES).total, abs=1e-6)
    assert result.total == [1.5, 0.0, 1.5]


def test_length_penalty_per_token_of_the_policys_tokenizer():
    from tandem.models import load_tokenizer

    tokenizer = load_tokenizer("tiny-qwen2")
    tokens = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in RESPONSES]
    assert tokens[0] != tokens[2]  # a longer answer, more tokens: the penalty tells them apart
    task = [RewardComponent(kind="function", path="task", name="true")]
    scorer = RewardScorer(task, task="sort", length_penalty=0.25, tokenizer_path="tiny-qwen2")
    result = scorer.score(PROMPTS, RESPONSES)
    assert result.components == {"true": [1.0, 0.0, 1.0], "length_tokens": [float(n) for n in tokens]}
    assert result.total == pytest.approx([1.0 - 0.25 * tokens[0], -0.25 * tokens[1], 1.0 - 0.25 * tokens[2]])
    # From a job's config: the policy's (model.path) tokenizer; off by default.
    cfg = Config().model_copy(update={"reward": Config().reward.model_copy(update={"length_penalty": 0.25})})
    assert RewardScorer.from_config(cfg).score(PROMPTS, RESPONSES).total == pytest.approx(result.total)
    assert "length_tokens" not in RewardScorer.from_config(Config()).score(PROMPTS, RESPONSES).components
    taken = [*task, RewardComponent(kind="function", path="task", name="length_tokens")]
    with pytest.raises(UserError, match=r"share the metric name\(s\) \['length_tokens'\]"):
        RewardScorer(taken, task="sort", length_penalty=0.25, tokenizer_path="tiny-qwen2")


def test_length_debias_removes_the_within_prompt_slope():
    from tandem.actors.reward import length_debias

    # Prompt a: lengths 2, 4 score 1, 2 (slope 0.5); prompt b: lengths 3, 5 score 0, 1 (slope 0.5).
    # Pooled over prompts the slope would differ (b's answers are longer but score less).
    scores, lengths, groups = [1.0, 2.0, 0.0, 1.0], [2.0, 4.0, 3.0, 5.0], ["a", "a", "b", "b"]
    corrections = length_debias(scores, lengths, groups)
    assert corrections == pytest.approx([0.75, -0.25, 0.25, -0.75])  # -0.5 * (length - 3.5)
    debiased = [s + c for s, c in zip(scores, corrections)]
    assert debiased[0] == pytest.approx(debiased[1]) and debiased[2] == pytest.approx(debiased[3])
    # One answer per prompt: the slope is pooled over the batch (here 1.0, mean length 2).
    assert length_debias([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], ["x", "y", "z"]) == pytest.approx([1.0, 0.0, -1.0])
    # No length variation: nothing to remove.
    assert length_debias([0.0, 1.0], [4.0, 4.0], ["x", "x"]) == [0.0, 0.0]


def test_length_debias_in_the_scorer_is_fit_before_the_penalty():
    from tandem.models import load_tokenizer

    tokenizer = load_tokenizer("tiny-qwen2")
    prompts = ["sort: 3 1 2", "sort: 3 1 2", "sort: 9 8", "sort: 9 8"]
    responses = ["1 2 3", "1 2 3 3 3", "8 9", "8 9 9"]
    tokens = [float(len(tokenizer(r, add_special_tokens=False)["input_ids"])) for r in responses]
    assert tokens[1] > tokens[0] and tokens[3] > tokens[2]
    length_rm = [RewardComponent(kind="function", path=fn("length_reward"), name="chars")]
    chars = [float(len(r)) for r in responses]
    scorer = RewardScorer(length_rm, length_penalty=0.1, tokenizer_path="tiny-qwen2", length_debias=True)
    result = scorer.score(prompts, responses)
    expected_debias = length_debias_reference(chars, tokens)
    assert result.components["length_debias"] == pytest.approx(expected_debias)
    assert result.total == pytest.approx([c - 0.1 * t + d for c, t, d in zip(chars, tokens, expected_debias)])
    cfg = Config().model_copy(update={"reward": Config().reward.model_copy(update={"length_debias": True})})
    assert "length_debias" in RewardScorer.from_config(cfg).score(PROMPTS, RESPONSES).components
    assert RewardScorer(length_rm, tokenizer_path="tiny-qwen2", length_debias=True).score([], []).total == []


def length_debias_reference(scores: list[float], lengths: list[float]) -> list[float]:
    """The within-prompt slope for two prompts of two answers each, written out."""
    slope = (
        (lengths[1] - lengths[0]) * (scores[1] - scores[0])
        + (lengths[3] - lengths[2]) * (scores[3] - scores[2])
    ) / ((lengths[1] - lengths[0]) ** 2 + (lengths[3] - lengths[2]) ** 2)
    mean = sum(lengths) / 4
    return [-slope * (n - mean) for n in lengths]
