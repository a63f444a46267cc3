"""The entrypoint of a `tandem submit` job on the cluster: checks that the job's Python has tandem's
stack, then runs `tandem.cli` with the job's arguments.

Ray Jobs runs an entrypoint with the `python` first on the PATH the head was started with, which
need not be the interpreter Ray itself runs on: a head started as `VENV/bin/ray start --head`
without the venv activated runs jobs on the system Python. The job then died on a bare
`ModuleNotFoundError: No module named 'torch'` traceback; this says what to do instead. Only the
standard library is imported before the check, so the check itself runs on any Python 3.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

#: Top-level modules of tandem's dependencies that every job imports (see pyproject.toml).
STACK = ("ray", "torch", "transformers", "deepspeed", "vllm", "datasets", "pydantic", "yaml")


def missing_modules(names: Sequence[str] = STACK) -> list[str]:
    """The modules of `names` this Python cannot import."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str]) -> int:
    missing = missing_modules()
    if missing:
        print(
            f"tandem: error: the job's Python ({sys.executable}) lacks {', '.join(missing)}: Ray Jobs "
            "runs `python` from the PATH the head was started with. Start the head from tandem's "
            "environment (activate it, or put its bin/ first on PATH, then `ray start --head`) and "
            "submit again",
            file=sys.stderr,
        )
        return 2
    from tandem.cli import main as cli_main

    return cli_main(list(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
