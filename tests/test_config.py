"""The config loader: defaults, base chains, overrides, and the user-facing errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from tandem.config import Config, apply_overrides, dump_config, load_config
from tandem.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_yaml_values(tmp_path):
    cfg = load_config(write(tmp_path, "a.yaml", "learner:\n  zero_stage: 3\n  optim:\n    lr: 0.01\n"))
    assert cfg.learner.zero_stage == 3
    assert cfg.learner.optim.lr == 0.01
    assert cfg.learner.optim.warmup_steps == Config().learner.optim.warmup_steps


def test_overrides_are_yaml_typed_and_win(tmp_path):
    path = write(tmp_path, "a.yaml", "ppo:\n  steps: 5\n")
    cfg = load_config(path, ["ppo.steps=7", "model.path=tiny-llama", "wandb.tags=[a, b]", "ray.address=null"])
    assert cfg.ppo.steps == 7
    assert cfg.model.path == "tiny-llama"
    assert cfg.wandb.tags == ["a", "b"]
    assert cfg.ray.address is None


def test_base_chain_merges_deeply(tmp_path):
    write(
        tmp_path, "base.yaml", "learner:\n  zero_stage: 2\n  micro_batch_size: 8\n  global_batch_size: 16\n"
    )
    child = write(tmp_path, "child.yaml", "base: base.yaml\nlearner:\n  zero_stage: 3\n")
    cfg = load_config(child)
    assert (cfg.learner.zero_stage, cfg.learner.micro_batch_size) == (3, 8)


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.ppo.steps = 3  # type: ignore[misc]


def test_unknown_key_names_key_file_line_and_suggestion(tmp_path):
    path = write(tmp_path, "bad.yaml", "run:\n  name: x\nlearner:\n  zero_stag: 3\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    msg = str(e.value)
    assert "learner.zero_stag" in msg
    assert f"{path}, line 4" in msg
    assert "did you mean `learner.zero_stage`" in msg


def test_unknown_section_suggests_nearest(tmp_path):
    with pytest.raises(UserError, match=r"unknown key `lerner`.*did you mean `learner`"):
        load_config(write(tmp_path, "bad.yaml", "lerner:\n  zero_stage: 1\n"))


def test_wrong_type_names_key_value_and_expectation(tmp_path):
    path = write(tmp_path, "bad.yaml", "ppo:\n  steps: many\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    msg = str(e.value)
    assert "`ppo.steps` = 'many'" in msg and f"{path}, line 2" in msg and "integer" in msg


def test_out_of_range_names_bound(tmp_path):
    with pytest.raises(UserError, match=r"`learner.zero_stage` = 4 .*less than or equal to 3"):
        load_config(write(tmp_path, "bad.yaml", "learner:\n  zero_stage: 4\n"))


def test_bad_override_is_attributed_to_command_line(tmp_path):
    with pytest.raises(UserError, match=r"`ppo.clip_eps` = -1 \(command line\).*greater than 0"):
        load_config(None, ["ppo.clip_eps=-1"])


def test_batch_sizes_must_divide():
    with pytest.raises(UserError, match="global_batch_size 10 must be a multiple of"):
        load_config(None, ["learner.micro_batch_size=4", "learner.global_batch_size=10"])


def test_algorithm_names_come_from_the_registries(tmp_path):
    path = write(tmp_path, "bad.yaml", "run:\n  name: x\nppo:\n  steps: 2\n  advantage: rlooo\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    msg = str(e.value)
    assert f"`ppo.advantage` = 'rlooo' ({path}, line 5): unknown advantage estimator" in msg
    assert "choose from gae, grpo, reinforce++, rloo; did you mean 'rloo'?" in msg
    bad = ["ppo.kl_estimator=k4", "ppo.kl_controller=pid", "ppo.policy_loss=sppo", "dpo.loss=kto"]
    with pytest.raises(UserError) as e:
        load_config(None, bad)
    msg = str(e.value)
    for key, kind, names in (
        ("ppo.kl_estimator", "KL estimator", "k1, k2, k3"),
        ("ppo.kl_controller", "KL controller", "adaptive, fixed"),
        ("ppo.policy_loss", "policy loss", "ppo"),
        ("dpo.loss", "preference loss", "dpo, ipo"),
    ):
        assert f"`{key}` = " in msg and f"(command line): unknown {kind}; choose from {names}" in msg
    cfg = load_config(None, ["ppo.advantage=reinforce++", "ppo.kl_controller=adaptive", "dpo.loss=ipo"])
    assert (cfg.ppo.advantage, cfg.ppo.kl_controller, cfg.dpo.loss) == ("reinforce++", "adaptive", "ipo")


def test_a_kl_in_the_loss_refuses_k1_and_an_adaptive_coefficient():
    with pytest.raises(UserError, match=r"ppo.kl_penalty: loss needs ppo.kl_estimator k2 or k3"):
        load_config(None, ["ppo.kl_penalty=loss"])
    with pytest.raises(UserError, match=r"ppo.kl_controller 'adaptive' adapts the KL in the reward"):
        load_config(None, ["ppo.kl_penalty=loss", "ppo.kl_estimator=k3", "ppo.kl_controller=adaptive"])
    assert load_config(None, ["ppo.kl_penalty=loss", "ppo.kl_estimator=k2"]).ppo.kl_penalty == "loss"


def test_default_algorithm_names_are_registered():
    # Defaults skip validation: check them against the registries here.
    from tandem import algos

    cfg = Config()
    assert cfg.ppo.advantage in algos.ADV_ESTIMATORS.names()
    assert cfg.ppo.kl_estimator in algos.KL_ESTIMATORS.names()
    assert cfg.ppo.kl_controller in algos.KL_CONTROLLERS.names()
    assert cfg.ppo.policy_loss == "ppo" and cfg.ppo.policy_loss in algos.POLICY_LOSSES.names()
    assert cfg.dpo.loss in algos.PREFERENCE_LOSSES.names()


def test_a_preference_loss_option_the_loss_does_not_read_is_refused():
    with pytest.raises(UserError, match=r"dpo.simpo_gamma is not used by loss 'dpo' \(it reads: \[.*\]\)"):
        load_config(None, ["dpo.simpo_gamma=0.5"])
    assert load_config(None, ["dpo.loss=simpo", "dpo.simpo_gamma=0.5"]).dpo.simpo_gamma == 0.5


def test_the_config_imports_without_torch():
    # A config that names no algorithm (SFT's, RM's) is then read, and its mistakes told, in under a
    # second, not after torch's 3 s import.
    code = "import sys, tandem.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_file_names_path(tmp_path):
    with pytest.raises(UserError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_malformed_yaml_and_non_mapping(tmp_path):
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(write(tmp_path, "a.yaml", "run: [unclosed\n"))
    with pytest.raises(UserError, match="must be a mapping"):
        load_config(write(tmp_path, "b.yaml", "- 1\n- 2\n"))


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(UserError, match="includes itself"):
        load_config(tmp_path / "a.yaml")


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["ppo.steps=3", "learner.zero_stage=2"])
    again = load_config(write(tmp_path, "dump.yaml", dump_config(cfg)))
    assert again == cfg


def test_dump_of_set_values_keeps_what_was_set(tmp_path):
    write(tmp_path, "base.yaml", "learner:\n  micro_batch_size: 8\n")
    cfg = load_config(write(tmp_path, "job.yaml", "base: base.yaml\nppo:\n  steps: 3\n"), ["run.name=x"])
    text = dump_config(cfg, only_set=True)
    assert yaml.safe_load(text) == {
        "run": {"name": "x"},
        "learner": {"micro_batch_size": 8},
        "ppo": {"steps": 3},
    }
    again = load_config(write(tmp_path, "dump.yaml", text))
    assert again == cfg and again.learner.model_fields_set == {"micro_batch_size"}


def test_overrides_of_a_loaded_job_leave_its_unset_values_unset(tmp_path):
    # A study's arms are its job plus overrides: PPO must still tell the batch sizes the job left unset.
    cfg = load_config(write(tmp_path, "job.yaml", "learner:\n  micro_batch_size: 8\n"), ["ppo.steps=3"])
    arm = apply_overrides(cfg, ["ppo.prompts_per_step=4", "run.name=arm"])
    assert arm.learner.model_fields_set == {"micro_batch_size"}
    assert (arm.ppo.steps, arm.ppo.prompts_per_step, arm.run.name) == (3, 4, "arm")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    load_config(path)


def test_every_field_is_documented():
    def walk(model):
        for name, field in model.model_fields.items():
            yield f"{model.__name__}.{name}", field.description
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                yield from walk(field.annotation)

    missing = [name for name, doc in walk(Config) if not doc]
    assert not missing, f"fields without a docstring: {missing}"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli", *args], check=False, capture_output=True, text=True, cwd=REPO
    )


def test_cli_config_show_prints_resolved_yaml():
    out = run_cli("config", "show", "configs/generate.yaml", "ppo.steps=9")
    assert out.returncode == 0, out.stderr
    assert "steps: 9" in out.stdout and "zero_stage:" in out.stdout


def test_cli_user_error_exit_2_without_traceback(tmp_path):
    bad = write(tmp_path, "bad.yaml", "ppo:\n  stepz: 3\n")
    out = run_cli("config", "show", str(bad))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "unknown key `ppo.stepz`" in out.stderr and "did you mean `ppo.steps`" in out.stderr
    missing = run_cli("config", "show", str(tmp_path / "none.yaml"))
    assert missing.returncode == 2 and "config file not found" in missing.stderr


def test_cli_ppo_job_keeps_train_as_an_alias(tmp_path):
    from tandem.cli import job_entry
    from tandem.recipes import ppo

    assert job_entry("ppo") is job_entry("train") is ppo.main
    for command in ("ppo", "train"):  # both parse as a job; the missing file is the only complaint
        out = run_cli(command, str(tmp_path / "none.yaml"))
        assert out.returncode == 2 and "config file not found" in out.stderr, out.stderr
    assert "ppo (train)" in run_cli("--help").stdout


def test_checkpoint_retention_is_one_run_key_for_every_job(tmp_path):
    assert load_config(None, ["run.keep_checkpoints=3"]).run.keep_checkpoints == 3
    with pytest.raises(
        UserError,
        match=r"unknown key `train.keep_checkpoints`.*"
        r"did you mean `run.keep_checkpoints`",
    ):
        load_config(None, ["train.keep_checkpoints=3"])


def test_eval_reward_is_imported_when_the_job_loads(tmp_path):
    spec = "tests.recipes.rewards:reverse_score"
    assert load_config(None, [f"eval.reward={spec}"]).eval.reward == spec
    assert Config().eval.reward is None  # the built-in task's true reward
    path = write(tmp_path, "bad.yaml", "eval:\n  reward: tests.recipes.rewards:nope\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    assert f"`eval.reward` = 'tests.recipes.rewards:nope' ({path}, line 2): reward function" in str(e.value)
    assert "has no attribute 'nope'" in str(e.value)
    out = run_cli("config", "show", "configs/sft.yaml", "eval.reward=no_such_pkg.mod:fn")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "`eval.reward` = 'no_such_pkg.mod:fn' (command line)" in out.stderr
    assert "cannot import module 'no_such_pkg.mod': not found" in out.stderr


def test_a_finished_jobs_folder_a_bad_row_or_no_model_is_refused_before_ray_starts(tmp_path):
    """Every job that trains checks its run folder (and SFT, RM and PPO their data and model) before
    starting a local Ray (10 s here), so the mistake is told at once; nothing is written. The
    pipeline checks all three stages' before its first trains."""
    (tmp_path / "done" / "checkpoints" / "step_000001").mkdir(parents=True)
    bad = write(tmp_path, "bad.jsonl", '{"prompt": "sort 3 1 2"}\n{"question": "where is the prompt"}\n')
    common = [f"run.output_dir={tmp_path}", "wandb.mode=disabled"]
    # rm and dpo enter Ray through the same `job_cluster`.
    runs = {job: [job, f"configs/{job}.yaml", *common, "run.name=done"] for job in ("sft", "ppo")}
    runs["bad row"] = ["ppo", "configs/ppo.yaml", *common, "run.name=new", f"data.train_files=[{bad}]"]
    # The pipeline reads its third stage's prompts before its first stage trains (stages of 16 rows:
    # the demo's read 16k rows first, 10 s here).
    stages = [
        f"pipeline.{stage}_config={write(tmp_path, f'{stage}.yaml', 'data: {task: sort, num_train: 16}')}"
        for stage in ("sft", "rm")
    ]
    runs["pipeline"] = [
        "pipeline",
        "configs/demo.yaml",
        *common,
        "run.name=new",
        *stages,
        f"data.train_files=[{bad}]",
    ]
    runs["no model"] = ["rm", "configs/rm.yaml", *common, "run.name=new", "model.path=runs/none/final"]
    # A mistyped local folder reads as a hub name ('owner/name'); offline, the hub answers at once.
    runs["no folder"] = ["sft", "configs/sft.yaml", *common, "run.name=new", "model.path=models/none"]
    runs["a run folder"] = ["ppo", "configs/ppo.yaml", *common, "run.name=new", f"model.path={tmp_path}/done"]
    expected = {
        "bad row": f"{bad}: row 2: column 'prompt' is missing",
        "pipeline": f"{bad}: row 2: column 'prompt' is missing",
        "no model": "no model at 'runs/none/final': no such folder, and not a hub name",
        "no folder": f"no model at 'models/none': no such folder here ({REPO}), and the hub did not give one",
        "a run folder": f"no model in '{tmp_path}/done': it holds no config.json",
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "tandem.cli", *argv],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        for name, argv in runs.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        message = expected.get(name, f"run folder {tmp_path / 'done'} already holds checkpoints")
        assert proc.returncode == 2 and f"tandem: error: {message}" in err, (name, err)
        # Ray logs "Started a local Ray instance" when it starts.
        assert "Traceback" not in err and "Ray" not in out + err, (name, out, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "done", "rm.yaml", "sft.yaml"]
    assert [p.name for p in (tmp_path / "done").iterdir()] == ["checkpoints"]
