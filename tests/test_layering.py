"""Imports point down only (DESIGN §2): lower layers never import the CLI, plots or engine."""

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "cohort"
FORBIDDEN = {
    "models": ("cohort.engine", "cohort.store", "cohort.cli", "cohort.plots", "cohort.dosing"),
    "dosing.py": ("cohort.engine", "cohort.store", "cohort.cli", "cohort.plots"),
    "store": ("cohort.engine", "cohort.models", "cohort.cli", "cohort.plots"),
    "engine": ("cohort.cli", "cohort.plots"),
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_layering():
    bad = []
    for part, banned in FORBIDDEN.items():
        files = [PKG / part] if part.endswith(".py") else sorted((PKG / part).rglob("*.py"))
        assert files, part
        for f in files:
            for name in _imports(f):
                if name.startswith(banned):
                    bad.append(f"{f.relative_to(PKG)} imports {name}")
    assert not bad, bad


def test_nothing_below_cli_prints():
    offenders = [
        str(f.relative_to(PKG))
        for f in PKG.rglob("*.py")
        if f.name != "cli.py" and re.search(r"(?<![\w.])print\(", f.read_text())
    ]
    assert not offenders, offenders
