"""a2bs's console session outside a terminal: what reaches the screen, what only the log gets.

The screen here is a pair of StringIO streams standing in for sys.stdout/sys.stderr (not a terminal:
plain lines); the pty case runs in tests/integration/test_console.py.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from pathlib import Path

import pytest

from a2bs.runtime import console
from a2bs.runtime.logs import LOGS_DIR

log = logging.getLogger("a2bs.test")


def _run(tmp_path: Path, **mode: bool) -> tuple[str, str, str]:
    """One scripted command: native output, the a2bs logger at three levels, the summary."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with console.session("extract", str(tmp_path), argv=["extract", "x", "--out", str(tmp_path)], **mode):
            os.write(2, b"W0000 00:00 a native library's notice\n")
            log.info("a detail")
            log.warning("video.fps_limit falls back to 30")
            log.error("failed: x.mp4: no audio track")
            console.summary("extract: 1 ok, 1 failed")
    os.write(2, b"")  # fd 2 is back
    (path,) = (tmp_path / LOGS_DIR).glob("extract-*.log")
    return out.getvalue(), err.getvalue(), path.read_text()


def test_screen_gets_a2bs_lines_and_the_log_gets_everything(tmp_path: Path) -> None:
    out, err, text = _run(tmp_path)
    assert out == "extract: 1 ok, 1 failed\n"
    assert err.splitlines() == [f"extract: log in {next((tmp_path / LOGS_DIR).iterdir())}",
                                "warning: video.fps_limit falls back to 30", "failed: x.mp4: no audio track"]
    assert "W0000 00:00 a native library's notice" in text
    for line in ("a detail", "warning: video.fps_limit falls back to 30", "error: failed: x.mp4: no audio track",
                 "extract: 1 ok, 1 failed"):
        assert re.search(rf"^\[a2bs [\d:]+\] {re.escape(line)}$", text, re.M), line
    assert text.splitlines()[0].endswith(f"a2bs extract x --out {tmp_path} (pid {os.getpid()})")


def test_quiet_shows_only_the_summary_and_errors(tmp_path: Path) -> None:
    out, err, text = _run(tmp_path, quiet=True)
    assert out == "extract: 1 ok, 1 failed\n"
    assert err == "failed: x.mp4: no audio track\n"
    assert "warning: video.fps_limit falls back to 30" in text


def test_verbose_shows_what_the_log_gets_once_and_before_the_summary(tmp_path: Path) -> None:
    out, err, _ = _run(tmp_path, verbose=True)
    lines = err.splitlines()
    assert "W0000 00:00 a native library's notice" in lines and "a detail" in lines
    assert lines.count("warning: video.fps_limit falls back to 30") == 1
    assert out == "extract: 1 ok, 1 failed\n"


def test_nothing_on_screen_after_the_final_error(tmp_path: Path) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        with console.session("train", str(tmp_path), quiet=True) as session:
            session.error("a2bs train: WorkerGroupError: Training failed (details in the log)")
            log.warning("a late warning")
    assert err.getvalue() == "a2bs train: WorkerGroupError: Training failed (details in the log)\n"


def test_plain_progress_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "CONSOLE_LINE_INTERVAL_S", 1e9)  # only the start, milestones and the end
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        with console.session("train", str(tmp_path)):
            with console.track("train", 4, "epochs", done=1) as bar:
                bar.update(completed=2, info="loss 0.5")
                bar.update(completed=3, info="loss 0.4", milestone=True)
                bar.update(advance=1, info="loss 0.3")
    lines = [line for line in err.getvalue().splitlines() if not line.startswith("train: log in")]
    assert [re.sub(r" \[.*\]$", "", line) for line in lines] == [
        "train: 1/4 epochs (25%)", "train: 3/4 epochs (75%), loss 0.4", "train: 4/4 epochs (100%), loss 0.3"]
    assert re.search(r"\[0:00:\d\d elapsed, eta 0:00:\d\d\]$", lines[1])  # 2 epochs done here, 1 to go
    assert "\r" not in err.getvalue()


def test_every_update_is_a_line_when_the_interval_is_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "CONSOLE_LINE_INTERVAL_S", 0.0)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        with console.session("build", None):
            assert list(console.tracked(iter("abc"), "build", 3, "shards",
                                        describe=lambda done, _: f"last {done[-1]}")) == ["a", "b", "c"]
    assert [line.split(" [")[0] for line in err.getvalue().splitlines()] == [
        "build: 0/3 shards (0%)", "build: 1/3 shards (33%), last a", "build: 2/3 shards (67%), last b",
        "build: 3/3 shards (100%), last c"]


def test_without_a_session_progress_is_silent_and_summaries_print(capsys) -> None:
    assert console.current() is None
    assert list(console.tracked([1, 2], "extract", 2, "clips")) == [1, 2]
    with console.track("train", 3, "epochs") as bar:
        bar.update(1, info="x", milestone=True)
    console.summary("extract: 2 ok")
    assert capsys.readouterr().out == "extract: 2 ok\n"


def test_error_line_finds_the_reason_in_a_ray_error() -> None:
    class WorkerGroupError(RuntimeError):
        pass

    crashed = WorkerGroupError("Training failed due to worker errors:\n[Rank 0 Error Snippet]:\n"
                               "A worker health check failed.\nWorker info: Worker(\n  actor=Actor(RayTrainWorker),\n)")
    assert console.error_line(crashed) == ("WorkerGroupError: Training failed due to worker errors: "
                                           "A worker health check failed.")
    raised = WorkerGroupError("Training failed due to worker errors:\n[Rank 0 Error Snippet]:\n"
                              "Traceback (most recent call last):\n  File \"loop.py\", line 3, in run\n"
                              "ValueError: shards hold 40 mel bins")
    assert console.error_line(raised) == ("WorkerGroupError: Training failed due to worker errors: "
                                          "ValueError: shards hold 40 mel bins")
    assert console.error_line(KeyError("x")) == "KeyError: 'x'"


def test_an_unexpected_error_is_one_line_with_the_traceback_in_the_log(tmp_path: Path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from a2bs import cli

    from a2bs.config import AudioConfig
    from a2bs.manifests import ClipEntry, ClipsManifest

    clips = tmp_path / "clips"
    (clips / "clips" / "c1").mkdir(parents=True)  # a listed segment part that holds none of a part's columns
    ClipsManifest(AudioConfig(), {"c1": ClipEntry("c1.mp4", "s", 3.0, 30.0, 30.0, 100.0, 90, 90, 1, 60.0, 1,
                                                  (0,))}).write(clips)
    pq.write_table(pa.table({"unrelated": [1.0]}), clips / "clips" / "c1" / "seg-00000.parquet")
    assert cli.main(["build", str(clips), "--out", str(tmp_path / "shards"), "--no-ray"]) == cli.EXIT_FAILED
    (path,) = (tmp_path / "shards" / LOGS_DIR).glob("build-*.log")
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("a2bs build: ") and err[-1].endswith(f"(details in {path})"), err[-1]
    assert err[-1].split(": ", 2)[1] == "ArrowInvalid", err[-1]  # the exception's type names it
    assert "Traceback (most recent call last)" in path.read_text()
