"""The remote reward protocol, client side: POST JSON `{"prompts": [...], "responses": [...]}` with a
bearer token, get `{"rewards": [...]}` back. `tandem serve-reward` is the matching server.

Transient failures (connection errors, timeouts, HTTP 429 and 5xx) are retried with exponential
backoff; other HTTP errors (401 bad token, 400 bad request) are not: retrying cannot fix them.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class HttpRewardError(RuntimeError):
    """The endpoint failed for good (after retries, or with a status that retrying cannot fix)."""


def _request(url: str, body: bytes, token: str) -> urllib.request.Request:
    return urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        detail = err.read().decode(errors="replace")[:300]
    except (OSError, ValueError):  # the body is a courtesy; the status says enough
        detail = ""
    return f"HTTP {err.code} {err.reason}" + (f": {detail}" if detail else "")


def post_rewards(
    url: str,
    prompts: list[Any],
    responses: list[str],
    token: str,
    timeout_s: float = 30.0,
    retries: int = 3,
    backoff_s: float = 0.5,
    opener: Callable[..., Any] = urllib.request.urlopen,
    sleep: Callable[[float], None] = time.sleep,
) -> list[float]:
    """The endpoint's rewards for a batch (unchecked: the caller validates count and values).

    Tries `1 + retries` times, sleeping `backoff_s * 2**attempt` between tries. `opener` and
    `sleep` are injectable for tests.
    """
    body = json.dumps({"prompts": prompts, "responses": responses}).encode()
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff_s * 2 ** (attempt - 1))
        try:
            with opener(_request(url, body, token), timeout=timeout_s) as resp:
                payload = json.loads(resp.read().decode())
        except urllib.error.HTTPError as err:
            last = _error_text(err)
            if err.code not in RETRY_STATUS:
                hint = " (check the token in the component's token_env)" if err.code in (401, 403) else ""
                raise HttpRewardError(f"{url}: {last}{hint}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
        except json.JSONDecodeError as err:
            raise HttpRewardError(f"{url}: the response is not JSON: {err}") from None
        else:
            if not isinstance(payload, dict) or not isinstance(payload.get("rewards"), list):
                raise HttpRewardError(
                    f"{url}: expected a JSON object with a 'rewards' list, got {str(payload)[:200]}"
                )
            return payload["rewards"]
    raise HttpRewardError(f"{url}: failed after {retries + 1} attempts; last error: {last}")
