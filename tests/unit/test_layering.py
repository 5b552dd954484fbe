"""The data flow is enforced: stage layering (import-linter), no private names across modules, no jobs/."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

from support import REPO

PACKAGE = REPO / "a2bs"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts on the `a2bs` package found under `package_parent`."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT_IMPORTS), str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=package_parent, env=env, capture_output=True, text=True, timeout=120)


def test_layer_contracts_are_kept() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_a_stage_importing_a_later_one_breaks_the_contract(tmp_path: Path) -> None:
    copy = tmp_path / "a2bs"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("corpus", "assets", "__pycache__"))
    audio = copy / "extract" / "audio.py"
    audio.write_text(audio.read_text() + "\nfrom a2bs.train import losses  # deliberate violation\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "a2bs.extract.audio -> a2bs.train.losses" in result.stdout


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("a2bs"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private and node.module != name:
                    offenders.append(f"{name} imports {', '.join(private)} from {node.module}")
    assert not offenders, offenders


def test_the_package_never_reads_the_jobs_folder() -> None:
    """jobs/ holds thin entry points for `ray job submit`; the package (and so the wheel) never needs it."""
    offenders = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and \
                    isinstance(node.right, ast.Constant) and node.right.value == "jobs":
                offenders.append(f"{name}: path / 'jobs'")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "jobs/" in node.value:
                offenders.append(f"{name}: {node.value!r}")
    assert not offenders, offenders
