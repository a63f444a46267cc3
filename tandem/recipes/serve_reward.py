"""`tandem serve-reward CONFIG`: serve the configured reward (typically a reward model) over HTTP.

Protocol (what `tandem.actors.http_reward.post_rewards` speaks): POST any path with JSON
`{"prompts": [...], "responses": [...]}` and `Authorization: Bearer <token>`; the answer is
`{"rewards": [...], "components": {name: [...]}}`. GET /health answers without a token.

Stages: read the token (refuse to start without one), build the scorer, bind, serve until Ctrl-C.
Binds loopback by default (`serve.host`); the token is required on every scoring request.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tandem.config import Config
from tandem.errors import UserError

logger = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 << 20


def make_server(scorer: Any, host: str, port: int, token: str) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) that scores with `scorer.score(prompts, responses)`.

    Port 0 binds a free port: read it from `server.server_address[1]`.
    """
    if not token:
        raise UserError("the reward server needs a non-empty bearer token")
    lock = threading.Lock()  # one scoring at a time: a model forward is not worth interleaving

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/health":
                self._reply(200, {"ok": True})
            else:
                self._reply(404, {"error": "POST prompts and responses to score them; GET /health"})

        def do_POST(self) -> None:
            sent = self.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                self._reply(401, {"error": "missing or wrong bearer token"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                if not 0 < length <= MAX_BODY_BYTES:
                    raise ValueError(f"body must be 1..{MAX_BODY_BYTES} bytes, got {length}")
                body = json.loads(self.rfile.read(length))
                prompts, responses = body["prompts"], body["responses"]
                if not isinstance(prompts, list) or not isinstance(responses, list):
                    raise TypeError("'prompts' and 'responses' must be lists")
                if len(prompts) != len(responses):
                    raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
            except (ValueError, KeyError, TypeError) as err:
                self._reply(400, {"error": f"bad request: {err}"})
                return
            try:
                with lock:
                    result = scorer.score(prompts, [str(r) for r in responses])
            except Exception as err:  # report to the client instead of dropping the connection
                logger.exception("scoring failed")
                self._reply(500, {"error": f"{type(err).__name__}: {err}"})
                return
            self._reply(200, {"rewards": result.total, "components": result.components})

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s " + format, self.address_string(), *args)

    return ThreadingHTTPServer((host, port), Handler)


def main(cfg: Config, args: argparse.Namespace) -> int:
    from tandem.actors.reward import RewardScorer
    from tandem.cluster.runtime import setup_env

    env = cfg.serve.token_env
    token = os.environ.get(env)
    if not token:
        raise UserError(
            f"serve-reward needs a bearer token: set the environment variable {env} "
            f"(clients send it as `Authorization: Bearer ...`; `serve.token_env` names the variable)"
        )
    setup_env()
    scorer = RewardScorer.from_config(cfg)
    server = make_server(scorer, cfg.serve.host, cfg.serve.port, token)
    host, port = server.server_address[:2]
    print(
        f"serving reward ({', '.join(scorer.names)}) on http://{host}:{port} (token from ${env}); Ctrl-C stops",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
