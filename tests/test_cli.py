"""The command line: overrides anywhere after the config, and user errors raised inside Ray actors
reaching the terminal as tandem's one paragraph (exit 2), the traceback only with --debug."""

from __future__ import annotations

import logging
import time

import pytest

from tandem import cli
from tandem.errors import UserError, find_user_error


def test_overrides_are_accepted_after_the_options():
    args = cli.parse_args(
        [
            "submit",
            "job.yaml",
            "a=1",
            "--address",
            "http://head:8265",
            "b=2",
            "--follow",
            "c=3",
            "--job",
            "sft",
        ]
    )
    assert (args.config, args.overrides) == ("job.yaml", ["a=1", "b=2", "c=3"])  # order kept: last wins
    assert (args.address, args.follow, args.job) == ("http://head:8265", True, "sft")
    args = cli.parse_args(["ppo", "job.yaml", "--resume", "runs/x", "ppo.steps=3", "--debug"])
    assert (args.overrides, args.resume, args.debug) == (["ppo.steps=3"], "runs/x", True)
    assert cli.parse_args(["--debug", "ppo", "job.yaml"]).debug
    assert not cli.parse_args(["ppo", "job.yaml"]).debug


@pytest.mark.parametrize(
    "argv",
    [["submit", "job.yaml", "--address", "x", "--bogus"], ["report", "runs/x", "extra=1"]],
    ids=["unknown-option", "command-without-overrides"],
)
def test_what_is_not_an_override_is_still_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(argv)
    assert exit_.value.code == 2
    assert f"unrecognized arguments: {argv[-1]}" in capsys.readouterr().err


def _ray_task_error(cause: BaseException):
    from ray.exceptions import RayTaskError

    # As Ray builds it in the driver: Ray's banner and the remote traceback as its text.
    banner = "\x1b[36mray::RewardScorer.score()\x1b[39m (pid=1, ip=10.0.0.1)\nTraceback ...\n"
    return RayTaskError("score", banner, cause).as_instanceof_cause()


def test_find_user_error_unwraps_ray_and_tandem_wrappers():
    from ray.exceptions import ActorDiedError

    from tandem.actors.reward import RewardError
    from tandem.cluster.groups import ActorGroupError

    raised = RewardError("reward function 'mod:fn' returned NaN for sample 3")
    wrapped = _ray_task_error(raised)
    assert "ray::" in str(wrapped)  # what the CLI printed before
    assert find_user_error(wrapped) is raised
    try:
        raise ActorGroupError("policy rank 0 failed in 'setup'", "policy", [0]) from wrapped
    except ActorGroupError as group_error:
        assert find_user_error(group_error) is raised
    # A constructor that raised: Ray keeps only the text of the remote traceback.
    from ray.exceptions import RayTaskError

    remote_traceback = (
        'Traceback (most recent call last):\n  File "reward.py", line 3, in __init__\n'
        "tandem.actors.reward.RewardError: reward spec \"m:f\": no module named 'm'"
    )
    died = ActorDiedError(RayTaskError("RewardScorer.__init__", remote_traceback, raised, actor_id="ab12"))
    assert died.error_msg.startswith("The actor died because of an error raised in its creation task")
    assert str(find_user_error(died)) == "reward spec \"m:f\": no module named 'm'"
    assert find_user_error(_ray_task_error(ValueError("a bug"))) is None
    assert find_user_error(RuntimeError("a bug")) is None


def test_rays_log_of_a_user_error_raised_in_a_constructor_is_dropped():
    logger = logging.getLogger("ray._raylet")  # where a Ray worker logs an actor constructor's error

    def kept(traceback_text: str) -> bool:
        record = logger.makeRecord(
            logger.name,
            logging.ERROR,
            "_raylet.pyx",
            1,
            "Exception raised in creation task: %s",
            (traceback_text,),
            None,
        )
        return bool(logger.filter(record))

    frames = '\x1b[36mray::RewardScorer.__init__()\x1b[39m\n  File "reward.py", line 3, in __init__\n'
    assert not kept(frames + "tandem.actors.reward.RewardError: reward spec 'm:f': no module named 'm'")
    assert kept(frames + "ValueError: a bug")  # a bug keeps its traceback
    assert kept(frames + "tandem.errors.JobError: the reward kept failing")  # not a UserError


def _raise_in_actor(cfg, args) -> int:
    """A job whose reward-like actor raises a UserError in a method (`--where method`) or in its
    constructor."""
    import ray

    from tandem.actors.reward import RewardError

    @ray.remote(num_cpus=0.1)
    class Scorer:
        def __init__(self, fail: bool) -> None:
            if fail:
                raise UserError("reward spec 'nope:fn': no module named 'nope'")

        def score(self) -> None:
            raise RewardError("reward function 'mod:fn' returned NaN for sample 3")

    fail_in_init = cfg.run.name == "init"
    scorer = Scorer.remote(fail_in_init)
    ray.get(scorer.score.remote(), timeout=60)
    return 0


@pytest.mark.slow  # a real Ray actor
def test_a_user_error_inside_an_actor_is_one_paragraph(ray_session, monkeypatch, capsys):
    monkeypatch.setitem(cli.JOB_COMMANDS, "probe", ("tests.test_cli:_raise_in_actor", "raise in an actor"))
    assert cli.main(["probe", "configs/sft.yaml", "run.name=method"]) == 2
    err = capsys.readouterr().err
    assert err == "tandem: error: reward function 'mod:fn' returned NaN for sample 3\n"
    assert cli.main(["probe", "configs/sft.yaml", "run.name=init"]) == 2
    time.sleep(2)  # time for Ray to forward the worker's log of the constructor's error, were it written
    assert capsys.readouterr().err == "tandem: error: reward spec 'nope:fn': no module named 'nope'\n"
    # --debug: the remote traceback first, then the same paragraph.
    assert cli.main(["probe", "configs/sft.yaml", "run.name=method", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ray::" in err
    assert err.endswith("tandem: error: reward function 'mod:fn' returned NaN for sample 3\n")


def test_study_config_is_optional(tmp_path, monkeypatch, capsys):
    from tandem.studies import STUDIES

    assert {"length", "overoptimization"} <= set(STUDIES) and "common" not in STUDIES
    args = cli.parse_args(["study", "length", "ppo.steps=3", "--debug", "run.name=x"])
    assert (args.study, args.config, args.overrides) == ("length", "ppo.steps=3", ["run.name=x"])
    args = cli.parse_args(["study", "overoptimization", "mine.yaml", "ppo.steps=3"])
    assert (args.config, args.overrides) == ("mine.yaml", ["ppo.steps=3"])
    # Without CONFIG, configs/study-NAME.yaml of the working directory; elsewhere a clear error.
    monkeypatch.chdir(tmp_path)
    assert cli.main(["study", "length", "ppo.steps=3"]) == 2
    assert "configs/study-length.yaml is not in the working directory" in capsys.readouterr().err
