"""The HTTP reward client's retry logic, with a fake transport (the real server is in test_reward.py)."""

from __future__ import annotations

import io
import json
import urllib.error

import pytest

from tandem.actors.http_reward import HttpRewardError, post_rewards


class FakeTransport:
    """Answers each request with the next scripted outcome: an exception, or a JSON payload."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.requests = []

    def __call__(self, request, timeout):
        self.requests.append((request, timeout))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return io.BytesIO(json.dumps(outcome).encode())


def _http_error(code: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("http://x", code, "status", {}, io.BytesIO(b"detail"))


def test_sends_batch_with_token_and_timeout():
    transport, sleeps = FakeTransport({"rewards": [1.0, 2.0]}), []
    assert post_rewards(
        "http://x/score",
        ["p1", "p2"],
        ["r1", "r2"],
        "s3cret",
        timeout_s=7,
        opener=transport,
        sleep=sleeps.append,
    ) == [1.0, 2.0]
    ((request, timeout),) = transport.requests
    assert timeout == 7 and request.get_method() == "POST"
    assert request.get_header("Authorization") == "Bearer s3cret"
    assert json.loads(request.data) == {"prompts": ["p1", "p2"], "responses": ["r1", "r2"]}
    assert sleeps == []


def test_transient_failures_are_retried_with_exponential_backoff():
    transport = FakeTransport(
        urllib.error.URLError("refused"), _http_error(503), TimeoutError("slow"), {"rewards": [0.5]}
    )
    sleeps = []
    assert post_rewards(
        "http://x", ["p"], ["r"], "t", retries=3, backoff_s=0.5, opener=transport, sleep=sleeps.append
    ) == [0.5]
    assert sleeps == [0.5, 1.0, 2.0]


def test_gives_up_after_retries_naming_the_last_error():
    transport = FakeTransport(*[_http_error(502)] * 3)
    with pytest.raises(HttpRewardError, match=r"failed after 3 attempts; last error: HTTP 502"):
        post_rewards("http://x", ["p"], ["r"], "t", retries=2, opener=transport, sleep=lambda s: None)
    assert len(transport.requests) == 3


@pytest.mark.parametrize("code", [400, 401, 403, 404])
def test_client_errors_are_not_retried(code):
    transport = FakeTransport(_http_error(code), {"rewards": [1.0]})
    with pytest.raises(HttpRewardError, match=f"HTTP {code}"):
        post_rewards("http://x", ["p"], ["r"], "t", retries=3, opener=transport, sleep=lambda s: None)
    assert len(transport.requests) == 1


def test_malformed_answers_are_errors():
    with pytest.raises(HttpRewardError, match="'rewards' list"):
        post_rewards(
            "http://x", ["p"], ["r"], "t", opener=FakeTransport({"scores": [1]}), sleep=lambda s: None
        )
