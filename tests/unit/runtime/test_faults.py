"""Fault points: nothing happens unless armed; armed, exactly the chosen calls of any process fire.

Every firing happens in a child process (a real `python`), never in the test process itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from a2bs.runtime import faults

# Calls the point "demo" with i = 0..4 and prints each i it survived. Ctrl-C's handler is set first: a
# suite started in the background by a non-interactive shell (`pytest &`) hands its children SIGINT ignored.
CHILD = (
    "import signal, sys\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "from a2bs.runtime.faults import fault_point\n"
    "for i in range(5):\n"
    "    fault_point('demo', prepare=lambda: print('prepare', flush=True), i=i, parity=i % 2)\n"
    "    print(i, flush=True)\n"
)


@pytest.fixture(autouse=True)
def fault_env(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv(faults.ENV_VAR, str(tmp_path / "faults"))
    (tmp_path / "faults").mkdir()
    return tmp_path / "faults"


def _child(env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120,
                          env=env or os.environ.copy())


def test_unarmed_or_without_the_environment_nothing_fires() -> None:
    assert _child().stdout.split() == ["0", "1", "2", "3", "4"]
    with faults.armed("demo"):
        env = {k: v for k, v in os.environ.items() if k != faults.ENV_VAR}
        assert _child(env).stdout.split() == ["0", "1", "2", "3", "4"]
        faults.fault_point("another point")  # armed for "demo" only: this process goes on
    assert _child().stdout.split() == ["0", "1", "2", "3", "4"]  # disarmed when the block ends
    assert faults.fired() == []


def test_the_chosen_call_fires_after_prepare() -> None:
    with faults.armed("demo", skip=2):
        run = _child()
    assert run.returncode == -signal.SIGKILL
    assert run.stdout.split() == ["0", "1", "prepare"]
    (record,) = faults.fired()
    assert record == {**record, "point": "demo", "call": 2, "signal": "SIGKILL", "context": {"i": 2, "parity": 0}}


def test_calls_are_counted_across_processes_and_filtered_by_context() -> None:
    with faults.armed("demo", when={"parity": 1}, skip=3, signal_name="SIGINT"):
        first, second = _child(), _child()
    assert first.stdout.split() == ["0", "1", "2", "3", "4"]  # matching calls 0 and 1 (i = 1, 3)
    assert second.stdout.split() == ["0", "1", "2", "prepare"]  # matching calls 2 (i = 1) and 3 (i = 3: fires)
    assert "KeyboardInterrupt" in second.stderr and second.returncode != 0
    assert [(r["call"], r["context"]["i"], r["signal"]) for r in faults.fired()] == [(3, 3, "SIGINT")]


def test_times_fires_several_calls_and_arming_again_starts_afresh() -> None:
    with faults.armed("demo", times=2):
        runs = [_child() for _ in range(3)]
    assert [r.returncode for r in runs] == [-signal.SIGKILL, -signal.SIGKILL, 0]
    assert [r["call"] for r in faults.fired()] == [0, 1]
    with faults.armed("demo", skip=4):
        run = _child()
    assert run.stdout.split() == ["0", "1", "2", "3", "prepare"]
    assert [r["call"] for r in faults.fired()] == [4]


def test_arming_needs_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(faults.ENV_VAR)
    with pytest.raises(RuntimeError, match=faults.ENV_VAR), faults.armed("demo"):
        pass
    faults.fault_point("demo")  # and an unset environment never fires
