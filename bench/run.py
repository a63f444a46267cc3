"""`make bench`: run the benchmark sections in bench/ and print one table per section.

A section is any `bench/<name>.py` (not starting with "_") that defines
    TITLE: str                      # the table's heading
    def run() -> list[Row]          # Row = (metric, value, unit, note)
Add a file to add a section. `python bench/run.py [name ...]` runs only the named sections.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
Row = tuple[str, float | str, str, str]


def sections() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem != "run" and not p.stem.startswith("_"))


def _fmt(value: float | str) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def print_table(title: str, rows: list[Row], seconds: float) -> None:
    cells = [("metric", "value", "unit", "note")] + [(m, _fmt(v), u, n) for m, v, u, n in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    line = "  ".join("-" * w for w in widths)
    print(f"\n== {title} ({seconds:.0f} s)")
    for i, cell in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if j == 1 else c.ljust(w) for j, (c, w) in enumerate(zip(cell, widths))
            ).rstrip()
        )
        if i == 0:
            print(line)


def main(argv: list[str]) -> int:
    os.environ.setdefault("TANDEM_CACHE", os.path.expanduser("~/.cache/tandem"))
    os.environ.setdefault("WANDB_MODE", "disabled")
    sys.path.insert(0, str(HERE))
    sys.path.insert(1, str(HERE.parent))  # the repo, when tandem is not installed
    names = argv or sections()
    unknown = sorted(set(names) - set(sections()))
    if unknown:
        print(f"unknown bench section(s) {unknown}; sections: {sections()}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        module = importlib.import_module(name)
        started = time.perf_counter()
        try:
            rows = module.run()
        except Exception:  # noqa: BLE001 (one broken section should not hide the others' numbers)
            traceback.print_exc()
            failed.append(name)
            continue
        print_table(getattr(module, "TITLE", name), rows, time.perf_counter() - started)
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass
    if failed:
        print(f"\nfailed sections: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
