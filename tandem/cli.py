"""`tandem <command> CONFIG [key.sub=value ...]`: the entry point of every job.

Commands import their recipe lazily, so `tandem config show` answers without loading Ray, vLLM or
DeepSpeed (torch only when the config names an algorithm, checked against `tandem.algos`' registries).
A `UserError` anywhere, in the driver or inside a Ray actor, becomes one paragraph on stderr and
exit code 2, with no traceback (`--debug` prints it, the remote one included); a `JobError` (a job
that could not recover from failing roles) likewise, with exit code 1. Overrides may come
before or after the options: `tandem submit job.yaml --address URL ppo.steps=5` works.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Callable, Sequence

from tandem.errors import JobError, UserError, find_user_error

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


def _study(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tandem.config import load_config
    from tandem.studies.common import default_config, run_study

    # CONFIG is optional: a first "key=value" that names no file is an override.
    if args.config is not None and "=" in args.config and not Path(args.config).is_file():
        args.overrides, args.config = [args.config, *args.overrides], None
    cfg = load_config(args.config or default_config(args.study), args.overrides)
    run_study(args.study, cfg)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem", description="Distributed RLHF on Ray, vLLM and DeepSpeed."
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of a user error")
    # Also accepted after the command; SUPPRESS: a subcommand's default would overwrite the top one.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="inspect a job configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", parents=[debug], help="print the fully resolved configuration")
    show.add_argument("config", help="YAML job file")
    show.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    show.set_defaults(handler=_config_show)

    for name, (_, help_text) in JOB_COMMANDS.items():
        job = sub.add_parser(
            name, parents=[debug], help=help_text, aliases=[a for a, c in JOB_ALIASES.items() if c == name]
        )
        job.add_argument("config", help="YAML job file")
        job.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        job.add_argument(
            "--resume",
            metavar="RUN_DIR",
            default=None,
            help="continue the run in RUN_DIR from its latest checkpoint",
        )
        job.set_defaults(handler=_run_job)
    submit = sub.add_parser("submit", parents=[debug], help="submit a job to a Ray cluster through Ray Jobs")
    submit.add_argument("config", help="YAML job file")
    submit.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    submit.add_argument("--address", required=True, help="the cluster's job server, http://HEAD:8265")
    submit.add_argument("--job", default="ppo", help="the tandem command to run there (default: ppo)")
    submit.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    submit.set_defaults(handler=_submit)

    from tandem.studies import STUDIES

    study = sub.add_parser(
        "study",
        parents=[debug],
        help="an alignment study in one command (tables and plots in its run folder)",
        description="Run a study: train its SFT and reward models once, then its PPO/DPO arms, and "
        "write the held-out table (table.json) and PNG plots into <run.output_dir>/<run.name>.",
    )
    study.add_argument("study", choices=STUDIES, help="the study: " + ", ".join(STUDIES))
    study.add_argument(
        "config", nargs="?", default=None, help="YAML job file (default: configs/study-NAME.yaml)"
    )
    study.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    study.set_defaults(handler=_study)

    report = sub.add_parser(
        "report", parents=[debug], help="write PNG plots of a run's metrics into its folder"
    )
    report.add_argument("run_dir", help="a run folder holding metrics.jsonl")
    report.set_defaults(handler=_report)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with `key=value` overrides accepted anywhere after the config (argparse
    gives `nargs="*"` positionals only the run before the first option, and subparsers rule out
    `parse_intermixed_args`)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    late = [a for a in extra if not a.startswith("-") and hasattr(args, "overrides")]
    if len(late) < len(extra):
        parser.error(f"unrecognized arguments: {' '.join(a for a in extra if a not in late)}")
    if late:
        args.overrides = [*args.overrides, *late]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.handler(args)
    except Exception as e:
        error = find_user_error(e) or (e if isinstance(e, JobError) else None)
        if error is None:
            raise
        if args.debug:
            traceback.print_exception(e)
        print(f"tandem: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, UserError) else 1


if __name__ == "__main__":
    sys.exit(main())
