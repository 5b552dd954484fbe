"""A wheel built from the repo runs outside the source tree: `a2bs --help`, `a2bs info`, a short demo.

The wheel goes into a fresh virtual environment whose only other path is the project environment's
site-packages (a .pth line), so its dependencies resolve without a second multi-GB install while
`a2bs` itself, its demo preset and corpus, and its assets can come only from the wheel: the source
checkout is neither on the path nor the working directory, and the editable install's finder is not
loaded (a .pth path line does not process the .pth files inside it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from support import REPO, demo_clips

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout_s: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> tuple[Path, Path]:
    """(the built wheel, a venv with only that wheel installed on top of the project's dependencies)."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                  "-w", str(tmp / "dist")], cwd=tmp)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("a2bs-*.whl")
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
    Path(purelib.stdout.strip(), "a2bs_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp)
    assert installed.returncode == 0, installed.stderr[-2000:]
    return wheel, venv


def test_the_wheel_holds_the_demo_preset_corpus_and_assets(wheel_env) -> None:
    wheel, _ = wheel_env
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "a2bs/demo/demo.yaml" in names and "a2bs/assets/face_landmarker.task" in names
    corpus = {str(p.relative_to(REPO)) for p in (REPO / "a2bs" / "demo" / "corpus").rglob("*") if p.is_file()}
    assert corpus and corpus <= names, sorted(corpus - names)[:5]
    assert not any(n.startswith(("tests/", "jobs/", "benchmarks/")) for n in names)


def test_installed_a2bs_runs_the_demo_from_outside_the_source_tree(wheel_env, tmp_path) -> None:
    _, venv = wheel_env
    a2bs = str(venv / "bin" / "a2bs")
    where = _run([str(venv / "bin" / "python"), "-c", "import a2bs; print(a2bs.__file__)"], cwd=tmp_path)
    assert where.returncode == 0 and str(venv) in where.stdout, (where.stdout, where.stderr)

    helped = _run([a2bs, "--help"], cwd=tmp_path)
    assert helped.returncode == 0 and "demo" in helped.stdout and "info" in helped.stdout

    # A short demo: four voices (both faces), two clips each (train and held-out clips), one epoch, every stage.
    assert len(demo_clips()) > 8
    out = tmp_path / "demo"
    demo = _run([a2bs, "demo", "--out", str(out), "--speakers", "4", "--clips-per-speaker", "2", "train.epochs=1",
                 "ray.num_cpus=2"],
                cwd=tmp_path, timeout_s=900)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    model = out / "train" / "model.safetensors"
    report = json.loads((out / "report" / "report.json").read_text())
    assert model.is_file() and report["metrics"], report.keys()
    assert list((out / "infer").glob("*.csv")), "the demo writes a Live Link CSV of a held-out clip"
    assert demo.stdout.strip().splitlines()[-1].startswith("demo: done")

    info = _run([a2bs, "info", str(model)], cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "audio front end: 16000 Hz" in info.stdout and "hop 160" in info.stdout, info.stdout
