"""Side by side, in one run on this machine: TRL's `GRPOTrainer` (HF generate, one process) against
`tandem ppo` synchronous (`ppo.max_staleness=0`) and asynchronous (`ppo.max_staleness=1`), on the same
model, prompts (the sort task's), reward (`_sbs_reward.partial_sort`: partial credit), batch (16 prompts x 4), lengths, lr 1e-4,
fp32, and the KL as TRL's GRPO takes it: 0.04 x k3 in the loss (`ppo.kl_penalty: loss`; tandem's
default, the KL in the reward, makes mid's answers shrink within 6 steps, 99 -> 40 tokens, where
TRL's stay at 120). Each run is a subprocess of its own, one after another. On the tiny model each
mode runs twice: with vLLM engines (the default) and with `rollout.backend: transformers`.

Steady-state completions/s: 64 / the median step interval, leaving out the first steps (warm-up).
Where the size says so (tiny), TRL runs before and after each backend's pair of tandem runs (sync,
then async), and each tandem run is compared with the mean of its pair's two neighbours: this
machine's speed drifts within minutes.
TRL's intervals are those between `on_step_end` callbacks (bench/_trl_grpo.py); tandem's the
differences of the `time` field of consecutive metrics.jsonl rows. This is the measurement of the
team's `side_by_side/run.sh`, made self-contained (model, prompts and reward built here).

TRL and accelerate (the `bench` extra): used when importable, else from `$TANDEM_BENCH_EXTRA`
(default `$TANDEM_CACHE/bench-extra`), installed there with `pip --target` if missing; without
them the TRL rows say why they were skipped. `SBS_SIZES=tiny` (or `mid`, `tiny,mid`) picks the
sizes; `SBS_WORK=DIR` keeps the runs' folders and logs there instead of a temporary folder.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

TITLE = (
    "side by side: TRL GRPOTrainer vs tandem ppo sync and async (K=1); sort task, GRPO, "
    "16 prompts x 4, fp32, lr 1e-4, kl 0.04 x k3 in the loss"
)
TRL_VERSION = "1.16.0"  # trl and accelerate: the `bench` extra of pyproject.toml
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROMPTS, SAMPLES = 16, 4
MODES = {"sync": 0, "async (K=1)": 1}  # -> ppo.max_staleness
TRANSFORMERS = ", transformers rollout"  # the suffix of a mode run with `rollout.backend: transformers`
Row = tuple[str, float | str, str, str]


@dataclass(frozen=True)
class Size:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_len: int  # response tokens
    steps: int
    warmup: int  # leading steps left out of the timing
    bracket: bool  # a TRL run before and after each backend's pair of runs, compared with both
    transformers: bool = False  # each mode with `rollout.backend: transformers` too


SIZES = {
    # Tiny's steps are timed as run.sh times them. This VM's speed shifts by up to 30% from one
    # minute to the next (TRL's tiny step measured 0.31, 0.34, then 0.40 s in back-to-back runs of
    # the same script), so tiny's TRL runs bracket each backend's pair of tandem runs (about a minute); a mid
    # TRL run takes 2-3 minutes, and the bench's budget allows one. Mid times steps 2-5, one step
    # fewer than run.sh (2-6): its steps take 14-29 s here, and with 6 the bench took 637 s.
    # Tiny's modes run with the transformers rollout backend too: at 0.66M parameters vLLM's
    # per-sequence scheduling costs more than the forward (`tandem.actors.transformers_engine`).
    "tiny": Size(128, 256, 4, 4, 2, max_len=24, steps=12, warmup=2, bracket=True, transformers=True),
    "mid": Size(512, 1408, 8, 8, 2, max_len=128, steps=5, warmup=1, bracket=False),
}


# ---- pure helpers (tests/test_bench_side_by_side.py) ----


def modes(size: Size) -> dict[str, tuple[int, str]]:
    """The tandem runs of a size: label -> (ppo.max_staleness, rollout.backend)."""
    runs = {mode: (k, "vllm") for mode, k in MODES.items()}
    if size.transformers:
        runs |= {mode + TRANSFORMERS: (k, "transformers") for mode, k in MODES.items()}
    return runs


def mode_groups(size: Size) -> list[list[str]]:
    """The labels of `modes(size)` by backend, in run order: the runs one TRL bracket spans."""
    groups: dict[str, list[str]] = {}
    for mode, (_, backend) in modes(size).items():
        groups.setdefault(backend, []).append(mode)
    return list(groups.values())


def steady_step_s(step_s: list[float], warmup: int) -> float:
    """Median duration of the steps after the first `warmup` (`step_s[i]` = step i + 1's duration)."""
    return statistics.median(step_s[warmup:])


def tandem_step_s(times: list[float], warmup: int) -> float:
    """Median step interval from the `time` of consecutive metrics rows: the first row's step has no
    start time, so its interval is unknown (never counted: warmup >= 1)."""
    if warmup < 1:
        raise ValueError("warmup must be >= 1: the first step's start is not logged")
    return statistics.median([b - a for a, b in itertools.pairwise(times)][warmup - 1 :])


def steady_means(rows: list[dict], warmup: int, prefix: str) -> dict[str, float]:
    """Means over the rows after the first `warmup` of every metric starting with `prefix` (each over
    the rows that carry it)."""
    steady = rows[warmup:]
    keys = sorted({k for r in steady for k in r if k.startswith(prefix)})
    return {k: statistics.fmean(r[k] for r in steady if k in r) for k in keys}


def cpu_summary(rows: list[dict], warmup: int) -> tuple[float, str]:
    """Per-stage CPU utilisation (share of the node's cores busy, means over steady steps) and
    their time-weighted mean over the stages that report one."""
    util = steady_means(rows, warmup, "perf/cpu_util/")
    wall = steady_means(rows, warmup, "timing/")
    stages = [k.removeprefix("perf/cpu_util/") for k in util]
    weights = [wall.get(f"timing/{s}", 0.0) for s in stages]
    total = sum(weights)
    overall = sum(util[f"perf/cpu_util/{s}"] * w for s, w in zip(stages, weights)) / total if total else 0.0
    note = ", ".join(f"{s} {util[f'perf/cpu_util/{s}']:.2f}" for s in stages)
    return overall, note


def ratio_rows(
    label: str, trl: dict[str, tuple[float, float]], tandem: dict[str, tuple[float, float]]
) -> list[Row]:
    """tandem/TRL completions/s ratios (= TRL step time / tandem step time), one per tandem mode
    against the TRL figures `trl[mode]`, each noting the ratio per response token too; runs are
    (median step s, mean response length): the two learn apart, and so do their lengths."""
    return [
        (
            f"{label}: tandem {mode} / TRL",
            trl[mode][0] / step_s,
            "x",
            f"completions/s ratio; per response token {trl[mode][0] / step_s * length / trl[mode][1]:.2f}x",
        )
        for mode, (step_s, length) in tandem.items()
        if mode in trl
    ]


def trl_per_mode(runs: list[tuple[float, float]], groups: list[list[str]]) -> dict[str, tuple[float, float]]:
    """The TRL (step s, length) each tandem mode is compared with: the one run, or (runs bracketing
    the groups of modes, run i before group i and run i + 1 after it) the mean of its group's two
    neighbours."""
    if len(runs) == 1:
        return {mode: runs[0] for group in groups for mode in group}
    if len(runs) != len(groups) + 1:
        raise ValueError(f"{len(runs)} TRL runs cannot bracket {len(groups)} groups of tandem runs")
    return {
        mode: (
            statistics.fmean(s for s, _ in runs[i : i + 2]),
            statistics.fmean(n for _, n in runs[i : i + 2]),
        )
        for i, group in enumerate(groups)
        for mode in group
    }


# ---- the runs ----


def selected_sizes() -> list[str]:
    names = [s.strip() for s in os.environ.get("SBS_SIZES", "tiny,mid").split(",") if s.strip()]
    unknown = [n for n in names if n not in SIZES]
    if unknown:
        raise ValueError(f"SBS_SIZES: unknown size(s) {unknown}; sizes: {sorted(SIZES)}")
    return names


def build_model(name: str, size: Size) -> tuple[Path, int]:
    """A seeded random-init Qwen2 of `size` with the embedded models' tokenizer (tandem.models.tiny),
    cached under $TANDEM_CACHE/bench-models; its directory and parameter count."""
    import hashlib

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tandem.models import build_tiny_model
    from tandem.models.tiny import ARCHITECTURES, SEED, cache_root

    base = build_tiny_model("tiny-qwen2")  # its tokenizer is the one to share
    dims = {k: v for k, v in asdict(size).items() if k.startswith(("hidden", "intermediate", "num_"))}
    arch = {**ARCHITECTURES["tiny-qwen2"], **dims, "head_dim": size.hidden_size // size.num_attention_heads}
    digest = hashlib.sha256(json.dumps([base.name, arch], sort_keys=True).encode()).hexdigest()[:12]
    target = cache_root() / "bench-models" / f"sbs-{name}-{digest}"
    if not (target / "model.safetensors").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-sbs-{name}-", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp's 0700 would follow the rename
        try:
            for f in base.iterdir():
                if f.name not in ("model.safetensors", "config.json", "tandem_spec.json"):
                    shutil.copy(f, tmp / f.name)
            gen = json.loads((base / "generation_config.json").read_text())
            ids = {k: gen[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
            vocab = json.loads((base / "config.json").read_text())["vocab_size"]
            config = AutoConfig.for_model(arch.pop("model_type"), vocab_size=vocab, **arch, **ids)
            config.dtype = torch.float32
            with torch.random.fork_rng():
                torch.manual_seed(SEED)
                AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(tmp)
            try:
                os.replace(tmp, target)  # atomic, as tandem.models.tiny builds
            except OSError:
                if not target.is_dir():  # not a lost race with another build
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target, count_params(target / "model.safetensors")


def count_params(path: Path) -> int:
    """Parameters stored in a safetensors file (a tied lm_head is stored once), read from its header."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (not iterable)


def find_trl() -> tuple[str | None, str]:
    """(a directory to put on PYTHONPATH, "" when the venv has them; or None) and a note."""
    import importlib.util

    if importlib.util.find_spec("trl") and importlib.util.find_spec("accelerate"):
        return "", "trl from the venv"
    cache = os.environ.get("TANDEM_CACHE") or os.path.expanduser("~/.cache/tandem")
    extra = os.environ.get("TANDEM_BENCH_EXTRA") or os.path.join(cache, "bench-extra")
    if not (Path(extra, "trl").is_dir() and Path(extra, "accelerate").is_dir()):
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
        pip += ["--retries", "1", "--timeout", "20", "--target", extra]
        pins = [f"trl=={TRL_VERSION}", f"accelerate=={TRL_VERSION}"]
        done = subprocess.run([*pip, *pins], check=False, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["?"])[-1]
            return None, f"skipped: trl/accelerate not in the venv nor {extra}, and pip failed: {tail}"
    return extra, f"trl from {extra}"


def _env(extra: str = "") -> dict[str, str]:
    paths = [str(REPO), str(REPO / "bench"), extra, os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def _check(done: subprocess.CompletedProcess, what: str, log: Path) -> None:
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}); log {log}:\n{tail}")


def run_trl(name: str, size: Size, model: Path, work: Path, extra: str, index: int) -> dict:
    out, log = work / f"trl-{name}-{index}.json", work / f"trl-{name}-{index}.log"
    cmd = [sys.executable, str(HERE / "_trl_grpo.py"), "--model", str(model), "--steps", str(size.steps)]
    cmd += ["--max-completion-length", str(size.max_len), "--prompts", str(PROMPTS), "--out", str(out)]
    with open(log, "w") as f:
        done = subprocess.run(
            cmd, check=False, cwd=work, env=_env(extra), stdout=f, stderr=subprocess.STDOUT, timeout=1800
        )
    _check(done, f"TRL GRPOTrainer ({name})", log)
    return json.loads(out.read_text())


def try_trl(name: str, size: Size, model: Path, work: Path, extra: str, index: int) -> dict | str:
    """`run_trl`'s result, or why it failed."""
    try:
        return run_trl(name, size, model, work, extra, index)
    except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as err:
        return f"skipped: {str(err).splitlines()[0]}"


def run_tandem(name: str, size: Size, model: Path, work: Path, staleness: int, backend: str) -> list[dict]:
    run_name = f"{name}-k{staleness}-{backend}"
    cfg = {
        "run": {"name": run_name, "output_dir": str(work / "runs")},
        "model": {"path": str(model), "max_response_len": size.max_len},
        "data": {"task": "sort", "num_train": 2048},
        "wandb": {"mode": "disabled"},
        "rollout": {"backend": backend},
        "train": {"num_generate_eval": 0},  # the held-out table after the run: not compared, and slow
        "reward": {"components": [{"kind": "function", "path": "_sbs_reward:partial_sort", "name": "sort"}]},
        "learner": {
            "micro_batch_size": PROMPTS * SAMPLES,
            "global_batch_size": PROMPTS * SAMPLES,
            "precision": "fp32",
            "optim": {"lr": 1.0e-4, "warmup_steps": 0, "min_lr_ratio": 1.0},  # constant, as TRL's
        },
        "ppo": {
            "steps": size.steps,
            "prompts_per_step": PROMPTS,
            "samples_per_prompt": SAMPLES,
            "advantage": "grpo",
            "kl_coef": 0.04,
            "kl_penalty": "loss",  # TRL's GRPO: beta x k3 in the loss
            "kl_estimator": "k3",
            "num_minibatches": 1,
            "max_staleness": staleness,
            "save_every": 0,  # TRL saves nothing either
            "sample_table_every": 1000,
        },
    }
    path, log = work / f"tandem-{run_name}.yaml", work / f"tandem-{run_name}.log"
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    shutil.rmtree(work / "runs" / run_name, ignore_errors=True)
    cmd = [sys.executable, "-m", "tandem.cli", "ppo", str(path)]
    with open(log, "w") as f:
        done = subprocess.run(
            cmd, check=False, cwd=work, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=1800
        )
    _check(done, f"tandem ppo ({run_name})", log)
    from tandem.tracking import read_metrics

    return read_metrics(work / "runs" / run_name)


def size_rows(
    name: str, size: Size, params: int, trl: list[dict] | str, tandem: dict[str, list[dict]]
) -> list[Row]:
    """The table rows of one size: completions/s of each run (TRL's over all its runs), the
    ratios (each against its bracketing TRL runs, `trl_per_mode`), and tandem's CPU use and (async)
    staleness and importance ratios."""
    batch, label = PROMPTS * SAMPLES, f"{name}"
    timed = f"steps {size.warmup + 1}-{size.steps}"
    rows: list[Row] = []
    trl_runs: dict[str, tuple[float, float]] = {}
    if isinstance(trl, str):
        rows.append((f"{label}: TRL GRPOTrainer", "-", "completions/s", trl))
    else:
        each = [
            (steady_step_s(r["step_s"], size.warmup), statistics.fmean(r["completion_length"][size.warmup :]))
            for r in trl
        ]
        trl_runs = trl_per_mode(each, mode_groups(size))
        trl_s, length = statistics.fmean(s for s, _ in each), statistics.fmean(n for _, n in each)
        runs = f"; runs {', '.join(f'{s:.3f}' for s, _ in each)} s, bracketing each backend's tandem runs"
        rows.append(
            (
                f"{label}: TRL GRPOTrainer",
                batch / trl_s,
                "completions/s",
                (
                    f"{trl_s:.3f} s/step (median of {timed}{runs if len(each) > 1 else ''}), "
                    f"mean length {length:.1f}; "
                    f"{params / 1e6:.2f}M params, <= {size.max_len} tokens, trl {trl[0]['trl']}"
                ),
            )
        )
    runs = {}
    for mode, metrics in tandem.items():
        step_s = tandem_step_s([r["time"] for r in metrics], size.warmup)
        length = steady_means(metrics, size.warmup, "rollout/response_length/mean")
        runs[mode] = step_s, length.get("rollout/response_length/mean", float("nan"))
        rows.append(
            (
                f"{label}: tandem {mode}",
                batch / step_s,
                "completions/s",
                f"{step_s:.3f} s/step (median of {timed}), mean length {runs[mode][1]:.1f}",
            )
        )
    rows += ratio_rows(label, trl_runs, runs)
    for mode, metrics in tandem.items():
        overall, note = cpu_summary(metrics, size.warmup)
        rows.append((f"{label}: tandem {mode} CPU use", overall, "of all cores", note))
    for mode, metrics in tandem.items():
        if modes(size)[mode][0]:
            off = steady_means(metrics, size.warmup, "offpolicy/")
            for key, unit in (("staleness_mean", "versions"), ("is_ratio_mean", "ratio")):
                value = off.get(f"offpolicy/{key}", float("nan"))
                rows.append(
                    (f"{label}: tandem {mode} {key}", value, unit, f"offpolicy/{key}, mean of {timed}")
                )
    return rows


def _stop_local_ray() -> None:
    """Free the cores of a Ray an earlier section started in this process."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()


def run() -> list[Row]:
    _stop_local_ray()
    names = selected_sizes()
    extra, trl_note = find_trl()
    keep = os.environ.get("SBS_WORK")
    with tempfile.TemporaryDirectory(prefix="tandem-sbs-") as tmp:
        work = Path(keep or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        rows: list[Row] = []
        for name in names:
            size = SIZES[name]
            model, params = build_model(name, size)
            runs = [] if extra is None else [try_trl(name, size, model, work, extra, 0)]
            tandem, kinds = {}, modes(size)
            for i, group in enumerate(mode_groups(size), start=1):
                for mode in group:
                    tandem[mode] = run_tandem(name, size, model, work, *kinds[mode])
                if extra is not None and size.bracket:
                    runs.append(try_trl(name, size, model, work, extra, i))
            skipped = [r for r in runs if isinstance(r, str)]
            trl = skipped[0] if skipped else runs or trl_note
            rows += size_rows(name, size, params, trl, tandem)
    return rows
