"""What a person sees: `a2bs extract`, `build` and `train` under a real pseudo-terminal and through pipes.

Each command runs as a child process (real Ray, MediaPipe, ffmpeg) with its stdout and stderr on the
slave side of a pty, or on pipes. On screen: a2bs's own lines only (no line of framework noise), a
progress display, the failing clip's one-line reason, the summary last; through pipes, plain lines
and no carriage return. The run's log file holds the framework's lines in every mode; ``--verbose``
shows them; ``--quiet`` shows the summary alone. A Ray worker that dies is named on screen.

One run per mode (each starts its own Ray: 10-30 s on 2 cores); outputs are shared through module
fixtures.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import media_factory as mf
import pytest
from support import REPO, demo_clips

from a2bs.runtime import faults
from a2bs.runtime.logs import LOGS_DIR

pytestmark = pytest.mark.slow

TIMEOUT_S = 900
COLUMNS = 120
SMALL_MODEL = ["model.channels=32", "model.dilations=[1,2]", "train.batch_size=16"]
# The lines issue 17 found around a2bs's own (MediaPipe/absl, TensorFlow Lite, Ray core, Ray Data, Ray Train).
NOISE = re.compile("|".join([
    r"Logging before InitGoogle", r"W0000", r"FaceBlendshapesGraph", r"XNNPACK", r"Feedback manager",
    r"TensorFlow Lite", r"core_worker\.cc", r"Execution plan", r"progress UI", r"repeated \d+x across cluster",
    r"TrainingReport\(", r"Checkpoint successfully created", r"Token authentication", r"Started a local Ray",
    r"\((?:MapWorker|RayTrainWorker|TrainController|SplitCoordinator|raylet)\b", r"\bINFO\b", r"Traceback",
]))
# Framework lines a run's log must hold (and --verbose must show).
RAY_STARTED = "Started a local Ray instance"
RAY_DATA_PLAN = "Execution plan of Dataset"
RAY_TRAIN_REPORT = "TrainingReport("
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")


@dataclass
class Run:
    rc: int
    out: str  # stdout (everything, with a pty: stdout and stderr together as the terminal got them)
    err: str = ""

    def screen_lines(self) -> list[str]:
        """Every line as last drawn (what stays visible after each carriage-return redraw)."""
        lines = []
        for raw in _ANSI.sub("", self.out).replace("\r\n", "\n").split("\n"):
            visible = raw.split("\r")[-1].rstrip()
            if visible:
                lines.append(visible)
        return lines

    def all_text(self) -> str:
        """Everything ever written, redraws included, without escape codes."""
        return _ANSI.sub("", self.out + self.err).replace("\r", "\n")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["TERM"] = "xterm-256color"
    return env


def a2bs_in_pty(*args: str) -> Run:
    """`a2bs ARGS` with stdout and stderr on a pty of COLUMNS columns; read until every writer is gone."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, COLUMNS, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "a2bs.cli", *args], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=_env(), cwd=REPO)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                proc.kill()
                raise TimeoutError(f"a2bs {' '.join(args)}: no end after {TIMEOUT_S} s")
            try:
                data = os.read(master, 1 << 16)
            except OSError as exc:  # EIO: the last process holding the slave side has closed it
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return Run(proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace"))


def a2bs_in_pipes(*args: str) -> Run:
    proc = subprocess.run([sys.executable, "-m", "a2bs.cli", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, env=_env(), cwd=REPO, timeout=TIMEOUT_S)
    return Run(proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))


def foreign_lines(lines: list[str], stage: str) -> list[str]:
    """Lines that are not a2bs's: its progress display, summary, warnings, failures or log notice."""
    ours = re.compile(rf"^(?:\S )?\s*{stage}\b|^(?:failed|warning): ")
    return [line for line in lines if not ours.match(line)]


def the_log(out: Path, stage: str) -> str:
    logs = sorted((out / LOGS_DIR).glob(f"{stage}-*.log"))
    assert len(logs) == 1, logs
    return logs[0].read_text()


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> tuple[Path, Path]:
    """Two 4 s demo clips of two speakers and a text file named .mp4, in one folder."""
    root = tmp_path_factory.mktemp("console") / "in"
    clips = demo_clips()
    for speaker, clip in (("spk_a", clips[0]), ("spk_b", clips[-1])):
        mf.make_baseline(root / speaker, clip)
    broken = mf.CASES["text_as_mp4"].build(root / "spk_c")
    return root, broken


@pytest.fixture(scope="module")
def extract_tty(footage, tmp_path_factory) -> tuple[Run, Path]:
    out = tmp_path_factory.mktemp("console") / "clips"
    return a2bs_in_pty("extract", str(footage[0]), "--out", str(out), "ray.num_cpus=2"), out


@pytest.fixture(scope="module")
def extract_pipe(footage, tmp_path_factory) -> tuple[Run, Path]:
    out = tmp_path_factory.mktemp("console") / "clips"
    return a2bs_in_pipes("extract", str(footage[0]), "--out", str(out), "ray.num_cpus=2"), out


@pytest.fixture(scope="module")
def shards(extract_tty, tmp_path_factory) -> tuple[Run, Path]:
    """Shards of the extracted clips, built by a quiet run (`--quiet --no-ray`, through pipes)."""
    _, clips = extract_tty
    out = tmp_path_factory.mktemp("console") / "shards"
    return a2bs_in_pipes("build", str(clips), "--out", str(out), "--no-ray", "--quiet",
                         "sequence.split_by=clip", "sequence.val_fraction=0.5"), out


def test_extract_in_a_terminal(extract_tty, footage) -> None:
    run, out = extract_tty
    _, broken = footage
    assert run.rc == 0
    assert not NOISE.search(run.all_text()), NOISE.search(run.all_text())
    lines = run.screen_lines()
    assert not foreign_lines(lines, "extract"), foreign_lines(lines, "extract")
    assert "━" in run.out and "\r" in run.out.replace("\r\n", "")  # a rich bar, redrawn in place
    assert any(re.search(r"extract .*2/2 segments", line) for line in lines), lines
    failed = [line for line in lines if line.startswith(f"failed: {broken}: ")]
    assert len(failed) == 1 and mf.CASES["text_as_mp4"].hint_matches(failed[0]), lines
    assert re.match(r"extract: 2 ok, 1 failed, 0 skipped; ", lines[-1]), lines


def test_extract_through_pipes(extract_pipe, footage) -> None:
    run, out = extract_pipe
    _, broken = footage
    assert run.rc == 0
    assert "\r" not in run.out and "\r" not in run.err
    assert not NOISE.search(run.all_text()), NOISE.search(run.all_text())
    assert not foreign_lines(run.err.splitlines(), "extract"), run.err
    # Progress counts segments (each clip here is one); the text file fails when probed, before any.
    progress = [line for line in run.err.splitlines() if re.match(r"extract: \d/2 segments", line)]
    assert progress[0].startswith("extract: 0/2 segments") and progress[-1].startswith("extract: 2/2 segments (100%)")
    assert "1 failed" in progress[-1] and "frames/s" in progress[-1]
    failed = [line for line in run.err.splitlines() if line.startswith(f"failed: {broken}: ")]
    assert len(failed) == 1 and mf.CASES["text_as_mp4"].hint_matches(failed[0])
    assert run.out.splitlines() == [run.out.strip()] and run.out.startswith("extract: 2 ok, 1 failed")


@pytest.mark.parametrize("mode", ["tty", "pipe"])
def test_extract_log_holds_the_framework_lines(mode, extract_tty, extract_pipe, footage) -> None:
    run, out = extract_tty if mode == "tty" else extract_pipe
    log = the_log(out, "extract")
    assert RAY_STARTED in log and RAY_DATA_PLAN in log
    assert f"failed: {footage[1]}: " in log  # and a2bs's own lines, tagged
    assert re.search(r"^\[a2bs [\d:]+\] extract: 2 ok, 1 failed", log, re.M)
    # MediaPipe's start-up notices are dropped where the landmarker starts, in the Ray workers too.
    assert "FaceBlendshapesGraph" not in log and "XNNPACK" not in log


def test_quiet_shows_the_summary_alone(shards) -> None:
    run, out = shards
    assert run.rc == 0 and run.err == ""
    assert re.fullmatch(r"build: 2 clips -> \d+ shards, sequences train \d+, val \d+ in [\d.]+ s\n", run.out)
    assert (out / "_manifest.json").exists()


def test_verbose_shows_the_framework_lines(extract_tty, tmp_path) -> None:
    _, clips = extract_tty
    run = a2bs_in_pipes("build", str(clips), "--out", str(tmp_path / "shards"), "--verbose", "ray.num_cpus=2")
    assert run.rc == 0 and "\r" not in run.err
    assert RAY_STARTED in run.err and RAY_DATA_PLAN in run.err
    log = the_log(tmp_path / "shards", "build")
    assert RAY_STARTED in log and RAY_DATA_PLAN in log
    assert run.out.startswith("build: 2 clips -> ")


def test_train_in_a_terminal_names_a_worker_that_died(shards, tmp_path) -> None:
    """One Ray Train run (each costs ~40 s here) in a terminal: the training worker exits at the start of
    epoch 1 (once); Ray Train restarts it from the epoch-0 checkpoint and the run finishes. The screen
    shows a2bs's own lines, a redrawn bar, that a worker died and why, and the summary last. (Plain lines
    through pipes are the console's, shown by the extract and build runs above.)"""
    _, shards_dir = shards
    with faults.armed("train.epoch_start", when={"epoch": 1}):
        run = a2bs_in_pty("train", str(shards_dir), "--out", str(tmp_path / "run"), "train.epochs=2",
                          "ray.num_cpus=2", *SMALL_MODEL)
    assert run.rc == 0, run.out
    assert len(faults.fired()) == 1
    assert not NOISE.search(run.all_text()), NOISE.search(run.all_text())
    lines = run.screen_lines()
    assert not foreign_lines(lines, "train"), foreign_lines(lines, "train")
    assert "━" in run.out and any(re.search(r"train .*2/2 epochs .*loss [\d.]+ val [\d.]+", line) for line in lines)
    died = [line for line in lines if line.startswith("warning: a Ray worker died")]
    assert died and "exits" in died[0], lines
    assert lines[-1].startswith("train: finished at epoch 2/2 on 1 worker(s)"), lines
    log = the_log(tmp_path / "run", "train")
    assert RAY_STARTED in log and RAY_TRAIN_REPORT in log
