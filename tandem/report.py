"""`tandem report RUN_DIR`: PNG plots of a run's `metrics.jsonl`, written into the run folder.

One figure per panel (reward, true reward, KL, response length, stage timings); a panel whose
metrics the run did not log is left out, so the same report serves SFT, RM, DPO and PPO runs.
"""

from __future__ import annotations

from pathlib import Path

from tandem.tracking import read_metrics

# panel file stem -> (title, metric key prefixes plotted in it)
PANELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "reward": ("Reward (of the reward model / function)", ("reward/mean", "reward/")),
    "true_reward": ("Task true reward", ("true_reward/mean",)),
    "kl": ("KL to reference", ("kl/", "actor/approx_kl")),
    "response_length": ("Response length (tokens)", ("rollout/response_length/",)),
    "timing": ("Stage time per step (s)", ("timing/",)),
    "loss": ("Losses", ("train/loss", "eval/loss", "actor/pg_loss", "critic/value_loss")),
}


def _series(rows: list[dict], prefixes: tuple[str, ...]) -> dict[str, tuple[list[float], list[float]]]:
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, row in enumerate(rows):
        step = row.get("step", i)
        for key, value in row.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric and any(key == p or (p.endswith("/") and key.startswith(p)) for p in prefixes):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(step)
                ys.append(value)
    return series


def write_report(run_dir: str | Path) -> list[Path]:
    """Write one PNG per panel with data into `run_dir`; return their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    written = []
    for stem, (title, prefixes) in PANELS.items():
        series = _series(rows, prefixes)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key, (xs, ys) in sorted(series.items()):
            ax.plot(xs, ys, label=key, marker="." if len(xs) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(run_dir) / f"plot_{stem}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
