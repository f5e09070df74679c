"""Imports point down only (DESIGN §2): lower layers never import the CLI, plots or engine;
every subpackage's allowed dependencies are listed; nothing imports the package root; every
module imports on its own in a fresh process."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "cohort"

# What each top-level part of the package may import (besides itself); anything else, and any
# part missing from this table, fails the test: a new subpackage states its place here.
BASE = {"_version", "_started", "_seed", "_prng", "errors", "devices", "_toml", "timing"}
ALLOWED = {
    "_version": set(),
    "errors": set(),
    "devices": set(),
    "_toml": set(),
    "_started": set(),
    "_seed": set(),
    "_prng": set(),
    "dosing_formats": {"errors"},  # other tools' record columns, for dosing's and data's readers
    "timing": {"_started"},
    "models": BASE,
    "dosing": BASE | {"dosing_formats"},
    "store": BASE,
    "distributed": BASE,
    "data": BASE | {"dosing", "dosing_formats", "models"},
    "engine": BASE | {"distributed", "dosing", "models", "store"},
    "population": BASE | {"models", "store"},
    "inference": BASE | {"data", "dosing", "engine", "models", "store"},
    "glucose": BASE | {"distributed", "engine", "models", "store"},
    "trial": BASE | {"dosing", "engine", "glucose", "models", "population", "store"},
    "twin": BASE
    | {"data", "distributed", "dosing", "engine", "glucose", "inference", "models"}
    | {"population", "store"},
    "plots": BASE | {"store"},
    "cli": BASE
    | {"data", "dosing", "engine", "glucose", "inference", "models", "plots", "population"}
    | {"store", "trial", "twin"},
}
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


def _part(path: Path) -> str:
    return path.relative_to(PKG).parts[0].removesuffix(".py")


def _cohort_targets(path: Path) -> set[str]:
    """Top-level parts of cohort that ``path`` imports (``<root>`` for the package itself)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "cohort":  # `from cohort import x`: a submodule or the root
                subs = {p.name.removesuffix(".py") for p in PKG.iterdir()}
                names = [f"cohort.{a.name}" if a.name in subs else "cohort" for a in node.names]
        else:
            continue
        for name in names:
            if name == "cohort":
                out.add("<root>")
            elif name.startswith("cohort."):
                out.add(name.split(".")[1])
    return out


def test_every_subpackage_imports_only_what_it_may():
    bad = []
    for f in sorted(PKG.rglob("*.py")):
        part = _part(f)
        if part == "__init__":
            continue
        assert part in ALLOWED, f"{part}: add it to ALLOWED with its dependencies"
        for target in _cohort_targets(f) - {part}:
            if target == "<root>":
                bad.append(f"{f.relative_to(PKG)} imports the package root")
            elif target not in ALLOWED[part]:
                bad.append(f"{f.relative_to(PKG)} imports cohort.{target}")
    assert not bad, bad


@pytest.mark.slow  # ~90 fresh interpreters, each importing JAX: minutes on 2 cores
def test_every_module_imports_alone_in_a_fresh_process():
    modules = sorted(
        ".".join(("cohort", *f.relative_to(PKG).with_suffix("").parts)).removesuffix(".__init__")
        for f in PKG.rglob("*.py")
    )
    script = (
        "import importlib, subprocess, sys\n"
        "bad = []\n"
        "for m in sys.argv[1:]:\n"
        "    r = subprocess.run([sys.executable, '-c', f'import {m}'], capture_output=True,"
        " text=True)\n"
        "    if r.returncode: bad.append((m, r.stderr.strip().splitlines()[-1:]))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *modules], capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
