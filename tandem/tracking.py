"""Run tracking: every logged row goes to `<run_dir>/metrics.jsonl`, and to W&B unless disabled.

Only the driver (rank 0 of nothing: the single controller) creates a Tracker; learners return
metrics and never log. Keys use slashes (`train/loss`, `eval/accuracy`, `timing/step`).

W&B mode: `wandb.mode` from the config wins; when it is null, the WANDB_MODE environment variable;
when that is unset too, online if WANDB_API_KEY is set, else offline. Offline runs land in the run
folder (`WANDB_DIR=<run_dir>`) and upload later with `wandb sync <run_dir>/wandb/offline-run-*`.
A resumed run continues the same W&B run (its id is kept in `<run_dir>/wandb_id`).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, Self

from tandem.config import WandbConfig
from tandem.errors import UserError

METRICS_FILE = "metrics.jsonl"
_WANDB_ID_FILE = "wandb_id"


def wandb_mode(cfg: WandbConfig) -> str:
    """ "online", "offline" or "disabled", by the rule in the module docstring."""
    if cfg.mode is not None:
        return cfg.mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # tensors and numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def _jsonable_rows(rows: list[list[Any]]) -> list[list[Any]]:
    return [[_jsonable(v) for v in row] for row in rows]


class Tracker:
    """Logs metric rows for one run folder.

    Args:
        run_dir: the run folder (created if missing).
        cfg: the W&B section.
        name: the W&B run name; job: the W&B job type ("sft", "rm", ...).
        config: the resolved config as a plain dict (stored with the W&B run).
        resume_step: when resuming from a checkpoint at this step, rows logged after it by the
            interrupted run are dropped from metrics.jsonl, so each step appears once.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        cfg: WandbConfig,
        name: str,
        job: str,
        config: dict[str, Any] | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        if resume_step is not None:
            _truncate_after(self.path, resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a", encoding="utf-8")
        self._resume_step = resume_step
        self.last_step = resume_step or 0  # the last step logged (or resumed from)
        self._tables: set[str] = set()  # tables written by this Tracker (their files are current)
        self.mode = wandb_mode(cfg)
        self._wandb = (
            None if self.mode == "disabled" else self._init_wandb(cfg, name, job, config, resume_step)
        )

    def _init_wandb(
        self, cfg: WandbConfig, name: str, job: str, config: dict[str, Any] | None, resume_step: int | None
    ) -> Any:
        import wandb

        id_file = self.run_dir / _WANDB_ID_FILE
        if resume_step is not None and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            id_file.write_text(run_id)
        os.environ["WANDB_DIR"] = str(self.run_dir)
        return wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=name,
            tags=list(cfg.tags),
            job_type=job,
            config=config,
            dir=str(self.run_dir),
            mode=self.mode,
            id=run_id,
            resume="allow",
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """One row: `{"step": step, "time": unix seconds, **metrics}`."""
        row = {"step": step, "time": round(time.time(), 3), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.last_step = step
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=step)

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        """A table of examples (e.g. prompt, response, reward): appended to `<name>.jsonl` in the run
        folder, one line per step (a resumed run first drops the lines after its checkpoint), and
        logged to W&B as a `wandb.Table`."""
        path = self.run_dir / f"{name}.jsonl"
        if name not in self._tables:  # like metrics.jsonl: start over, or drop what followed the checkpoint
            self._tables.add(name)
            if self._resume_step is not None:
                _truncate_after(path, self._resume_step)
            else:
                path.unlink(missing_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "columns": columns, "rows": _jsonable_rows(rows)}) + "\n")
        if self._wandb is not None:
            import wandb

            self._wandb.log({name: wandb.Table(columns=columns, data=rows)}, step=step)

    def rewind(self, step: int) -> None:
        """Drop the rows and table lines logged after `step` (a job restarting from its checkpoint at
        `step` logs them again), so each step stays logged once. W&B keeps what it was sent: it
        ignores the repeated steps with a warning."""
        self._file.close()
        _truncate_after(self.path, step)
        for name in self._tables:
            _truncate_after(self.run_dir / f"{name}.jsonl", step)
        self._file = self.path.open("a", encoding="utf-8")
        # Tables not written yet by this Tracker: their first write drops what followed `step`.
        self._resume_step, self.last_step = step, step

    def summary(self, values: dict[str, Any]) -> None:
        """Final values of the run (the W&B run summary; the caller writes summary.json)."""
        if self._wandb is not None:
            self._wandb.summary.update({k: _jsonable(v) for k, v in values.items()})

    def finish(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file (a run folder or the file itself); UserError naming the file
    and line when it is missing or unreadable (`tandem report` hands users these)."""
    return _read_jsonl(Path(path) / METRICS_FILE if Path(path).is_dir() else Path(path))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"no metrics in {path.parent}: {path} does not exist")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}, line {n}: not JSON ({e.msg})") from None
    return rows


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    rows = [r for r in _read_jsonl(path) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
