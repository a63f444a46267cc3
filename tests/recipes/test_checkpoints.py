"""Atomic checkpoints and their verification on resume (tandem.recipes.checkpoints, start_run).

The learner group is a stub that writes files the way a learner's `save` does; everything else (the
temporary folder, manifest, rename, pruning, the run folder's resume decision) is the real code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandem.config import load_config
from tandem.errors import UserError
from tandem.recipes.checkpoints import MANIFEST, Checkpoints, verify
from tandem.recipes.run_dir import start_run


class _Writer:
    """Stands in for a learner group: `save(path)` writes a model shard, a DeepSpeed shard and an
    rng file under `path`, or fails like a rank dying mid-save."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.paths = fail, []

    def async_call(self, method: str, path: str) -> list[Path]:
        assert method == "save"
        self.paths.append(Path(path))
        root = Path(path)
        for name, size in (
            ("model/model.safetensors", 3000),
            ("deepspeed/rank0.pt", 2000),
            ("rng/rank0.pt", 50),
        ):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(bytes(i % 251 for i in range(size)))
        if self.fail:
            raise RuntimeError("policy rank 0 died during 'save'")
        return [root]

    def collect(self, refs: list, what: str) -> list:
        return refs


def _saved(root: Path, steps: list[int], keep: int = 5) -> Checkpoints:
    ckpts = Checkpoints(root, keep)
    for step in steps:
        ckpts.save({"policy": _Writer()}, step, {"note": "x"})
    return Checkpoints(root, keep)  # a fresh reader, as a resumed job has


def test_save_writes_in_a_temporary_folder_then_renames_with_a_manifest(tmp_path):
    writer = _Writer()
    path = Checkpoints(tmp_path, 2).save({"policy": writer}, 3, {"kl": 1.0})
    assert path == tmp_path / "step_000003"
    # The learners wrote beside the final place, not into it.
    assert writer.paths[0].parent.parent == tmp_path and writer.paths[0].parent.name.startswith(".tmp-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000003"]
    files = json.loads((path / MANIFEST).read_text())["files"]
    assert set(files) == {
        "state.json",
        "policy/model/model.safetensors",
        "policy/deepspeed/rank0.pt",
        "policy/rng/rank0.pt",
    }
    assert files["policy/deepspeed/rank0.pt"]["size"] == 2000
    assert verify(path) is None
    assert (tmp_path / "latest").read_text() == "step_000003"


def test_a_save_that_fails_leaves_nothing_half_written(tmp_path):
    ckpts = _saved(tmp_path, [1])
    with pytest.raises(RuntimeError, match="died during 'save'"):
        ckpts.save({"policy": _Writer(fail=True)}, 2, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000001"]
    assert Checkpoints(tmp_path, 5).latest() == tmp_path / "step_000001"


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda p: (p / "policy/deepspeed/rank0.pt").write_bytes(b"trunc"), "has 5 bytes"),
        (lambda p: (p / "policy/rng/rank0.pt").unlink(), "rng/rank0.pt is missing"),
        (lambda p: (p / MANIFEST).unlink(), "no manifest.json"),
        (lambda p: (p / "state.json").write_text((p / "state.json").read_text()[:-1] + "]"), "checksum"),
        (lambda p: (p / MANIFEST).write_text('{"files": {'), "unreadable manifest.json"),
    ],
    ids=["truncated-shard", "missing-rng", "no-manifest", "flipped-byte-state", "torn-manifest"],
)
def test_resume_skips_a_damaged_newest_checkpoint_naming_it(tmp_path, capsys, damage, why):
    ckpts = _saved(tmp_path, [1, 2])
    damage(tmp_path / "step_000002")
    assert ckpts.latest() == tmp_path / "step_000001"
    err = capsys.readouterr().err
    assert f"skipping checkpoint {tmp_path / 'step_000002'}" in err and why in err


def test_the_latest_pointer_is_not_trusted(tmp_path):
    ckpts = _saved(tmp_path, [1, 2])
    (tmp_path / "latest").write_text("")  # emptied, as the probe did
    assert ckpts.latest() == tmp_path / "step_000002"
    (tmp_path / "latest").write_text("step_000001")  # stale
    assert ckpts.latest() == tmp_path / "step_000002"


def test_redoing_a_damaged_step_replaces_it_and_pruning_keeps_complete_ones(tmp_path):
    ckpts = _saved(tmp_path, [1, 2, 3], keep=2)
    assert [p.name for p in ckpts.folders()] == ["step_000002", "step_000003"]
    (tmp_path / "step_000003" / "policy/model/model.safetensors").write_bytes(b"")
    # Resume falls back to step 2; the run then redoes step 3, whose new folder replaces the bad one.
    assert ckpts.latest() == tmp_path / "step_000002"
    ckpts.save({"policy": _Writer()}, 3, {})
    assert [p.name for p in ckpts.folders()] == ["step_000002", "step_000003"]
    assert verify(tmp_path / "step_000003") is None
    # keep=1 deletes step 2 only once step 4 is written and complete.
    Checkpoints(tmp_path, 1).save({"policy": _Writer()}, 4, {})
    assert [p.name for p in ckpts.folders()] == ["step_000004"]


def _cfg(tmp_path, *extra):
    return load_config(
        "configs/sft.yaml", [f"run.output_dir={tmp_path}", "run.name=r", "wandb.mode=disabled", *extra]
    )


def test_resume_with_no_complete_checkpoint_is_an_error_that_touches_nothing(tmp_path):
    run_dir = tmp_path / "r"
    _saved(run_dir / "checkpoints", [1, 2])
    for folder in Checkpoints(run_dir / "checkpoints", 1).folders():
        (folder / MANIFEST).unlink()
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    with pytest.raises(UserError, match="none of its 2 checkpoint"):
        start_run(_cfg(tmp_path), "sft", resume_dir=str(run_dir))
    with pytest.raises(UserError, match="none of its 2 checkpoint"):
        start_run(_cfg(tmp_path, "run.resume=true"), "sft")
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    assert len(Checkpoints(run_dir / "checkpoints", 1).folders()) == 2
    # Not resuming: refused too, rather than overwriting the folder.
    with pytest.raises(UserError, match="already holds checkpoints"):
        start_run(_cfg(tmp_path), "sft")


def test_resume_starts_from_the_newest_complete_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "r"
    _saved(run_dir / "checkpoints", [1, 2])
    (run_dir / "checkpoints/step_000002/state.json").write_text("{")
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    run = start_run(_cfg(tmp_path), "sft", resume_dir=str(run_dir))
    run.tracker.finish()
    assert run.resume_from == run_dir / "checkpoints/step_000001" and run.start_step == 1
    assert "skipping checkpoint" in capsys.readouterr().err
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1}\n'  # step 2 is redone


@pytest.mark.slow  # end to end: real Ray and DeepSpeed learners on the embedded tiny model
def test_resume_after_a_truncated_shard_redoes_the_step_from_the_previous_checkpoint(
    ray_session, tmp_path, capsys
):
    from tandem.recipes import sft
    from tandem.tracking import read_metrics

    cfg = load_config(
        "configs/sft.yaml",
        [
            "data.num_train=16",
            "data.num_eval=4",
            "model.max_response_len=16",
            "learner.micro_batch_size=4",
            "learner.global_batch_size=4",
            "learner.optim.warmup_steps=1",
            "train.max_steps=3",
            "train.eval_every=100",
            "train.num_generate_eval=2",
            "train.save_every=1",
            "run.keep_checkpoints=2",
            f"run.output_dir={tmp_path}",
            "run.name=r",
            "wandb.mode=disabled",
        ],
    )
    run_dir = tmp_path / "r"
    assert sft.run(cfg, None, 2)["stopped_at"] == 2
    first = {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}
    bad = run_dir / "checkpoints/step_000002"
    shard = max((bad / "deepspeed").rglob("*.pt"), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a writer killed mid-file

    summary = sft.run(cfg, resume_dir=str(run_dir))
    err = capsys.readouterr().err
    assert f"skipping checkpoint {bad}" in err and "bytes, the manifest says" in err
    rows = [r for r in read_metrics(run_dir) if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]  # step 2 redone from step 1's checkpoint, logged once
    assert rows[1]["train/loss"] == pytest.approx(first[2], rel=1e-5)  # and redone exactly
    assert summary["steps"] == 3
    assert [p.name for p in Checkpoints(run_dir / "checkpoints", 2).folders()] == [
        "step_000002",
        "step_000003",
    ]
    assert verify(run_dir / "checkpoints/step_000002") is None
