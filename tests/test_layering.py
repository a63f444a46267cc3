"""Package layering: a layer imports only from layers below it, never sideways.

Read from the source (every `import` statement, function-local ones included), so a lazy import
inside a method counts the same as one at the top of the module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tandem"

#: (package, packages it must not import): actors and learners are siblings (what both need lives
#: in `tandem.models.tokens`); models sits below data (tasks live in `tandem.tasks`, below both).
FORBIDDEN = [
    ("tandem.actors", ("tandem.learners",)),
    ("tandem.models", ("tandem.data",)),
]


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (`from a import b` counts as a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _breaks(name: str, forbidden: tuple[str, ...]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize(("package", "forbidden"), FORBIDDEN)
def test_no_sideways_imports(package: str, forbidden: tuple[str, ...]) -> None:
    folder = PACKAGE.joinpath(*package.split(".")[1:])
    modules = sorted(folder.rglob("*.py"))
    assert modules, f"no modules under {folder}"
    bad = {
        str(m.relative_to(PACKAGE.parent)): sorted(n for n in imported_modules(m) if _breaks(n, forbidden))
        for m in modules
    }
    assert not {k: v for k, v in bad.items() if v}


def test_the_check_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\nfrom tandem import data\n\ndef f():\n    from tandem.learners.sft import x\n"
    )
    names = imported_modules(module)
    assert _breaks("tandem.learners.sft", ("tandem.learners",)) and "tandem.learners.sft" in names
    assert "tandem.data" in names and not _breaks("tandem.database", ("tandem.data",))


def test_no_module_over_400_lines():
    """Small files (STYLE.md): a module past 400 lines holds more than one concern; split it."""
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, long
