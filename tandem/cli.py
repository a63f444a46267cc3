"""`tandem <command> CONFIG [key.sub=value ...]`: the entry point of every job.

Commands import their recipe lazily, so `tandem config show` answers without loading Ray, vLLM or
DeepSpeed (torch only when the config names an algorithm, checked against `tandem.algos`' registries).
A `UserError` anywhere becomes one paragraph on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from tandem.errors import UserError

# command -> ("module:function", help). Each function takes (cfg: Config, args: Namespace).
JOB_COMMANDS: dict[str, tuple[str, str]] = {
    "generate": (
        "tandem.recipes.generate:main",
        "sample from the model with vLLM, print samples and task reward",
    ),
    "serve-reward": (
        "tandem.recipes.serve_reward:main",
        "serve the configured reward model over HTTP (bearer token)",
    ),
    "sft": (
        "tandem.recipes.sft:main",
        "supervised fine-tuning on demonstrations (DeepSpeed learners on Ray)",
    ),
    "rm": ("tandem.recipes.rm:main", "train a reward model on preference pairs (Bradley-Terry)"),
    "dpo": ("tandem.recipes.dpo:main", "direct preference optimization (DPO or IPO) from an SFT checkpoint"),
    "ppo": (
        "tandem.recipes.ppo:main",
        "PPO / GRPO / RLOO / REINFORCE++ with vLLM rollouts and DeepSpeed learners",
    ),
    "pipeline": (
        "tandem.recipes.pipeline:main",
        "SFT -> reward model -> PPO, then a held-out comparison and plots",
    ),
}
# alias -> command: older names that keep working.
JOB_ALIASES: dict[str, str] = {"train": "ppo"}


def _config_show(args: argparse.Namespace) -> int:
    from tandem.config import dump_config, load_config

    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def job_entry(command: str) -> Callable[..., int | None]:
    """The function that runs job `command` (a name of JOB_COMMANDS or an alias)."""
    module, _, func = JOB_COMMANDS[JOB_ALIASES.get(command, command)][0].partition(":")
    return getattr(importlib.import_module(module), func)


def _run_job(args: argparse.Namespace) -> int:
    from tandem.config import load_config

    cfg = load_config(args.config, args.overrides)
    return job_entry(args.command)(cfg, args) or 0


def _submit(args: argparse.Namespace) -> int:
    from tandem.cluster.submit import submit
    from tandem.config import load_config

    job = JOB_ALIASES.get(args.job, args.job)
    if job not in JOB_COMMANDS:
        raise UserError(f"--job {args.job!r} is not a tandem job; choose from {', '.join(JOB_COMMANDS)}")
    cfg = load_config(args.config, args.overrides)
    status = submit(cfg, job, args.address, follow=args.follow)
    return 0 if status in (None, "SUCCEEDED") else 1


def _report(args: argparse.Namespace) -> int:
    from tandem.report import write_report

    for path in write_report(args.run_dir):
        print(path)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem", description="Distributed RLHF on Ray, vLLM and DeepSpeed."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="inspect a job configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the fully resolved configuration")
    show.add_argument("config", help="YAML job file")
    show.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    show.set_defaults(handler=_config_show)

    for name, (_, help_text) in JOB_COMMANDS.items():
        job = sub.add_parser(name, help=help_text, aliases=[a for a, c in JOB_ALIASES.items() if c == name])
        job.add_argument("config", help="YAML job file")
        job.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        job.add_argument(
            "--resume",
            metavar="RUN_DIR",
            default=None,
            help="continue the run in RUN_DIR from its latest checkpoint",
        )
        job.set_defaults(handler=_run_job)
    submit = sub.add_parser("submit", help="submit a job to a Ray cluster through Ray Jobs")
    submit.add_argument("config", help="YAML job file")
    submit.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    submit.add_argument("--address", required=True, help="the cluster's job server, http://HEAD:8265")
    submit.add_argument("--job", default="ppo", help="the tandem command to run there (default: ppo)")
    submit.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    submit.set_defaults(handler=_submit)

    report = sub.add_parser("report", help="write PNG plots of a run's metrics into its folder")
    report.add_argument("run_dir", help="a run folder holding metrics.jsonl")
    report.set_defaults(handler=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as e:
        print(f"tandem: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
