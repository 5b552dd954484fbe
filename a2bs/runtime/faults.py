"""Fault points: places where a test makes a process die at an exact moment.

A run without ``A2BS_FAULTS`` in its environment never fires one (each point is one environment
lookup). A test sets ``A2BS_FAULTS`` to a folder before the processes it targets start: Ray's workers
inherit the environment of the driver that starts the local cluster, subprocesses that of their parent.
It then arms one point with :func:`armed`. Every process reads the plan from the folder when it
reaches a point, so a plan armed after Ray started still reaches its workers.

The points (name: context a plan can match):

- ``extract.before_write`` (clip_id, source): a clip's features are computed, its Parquet file not yet written.
- ``storage.before_replace`` (path): an atomic local write's temporary file is complete, not yet renamed.
- ``train.epoch_start`` (epoch, rank): a training worker is about to train an epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Callable, Iterator

ENV_VAR = "A2BS_FAULTS"
PLAN_FILE = "plan.json"
CALLS_DIR = "calls"
FIRED_DIR = "fired"


def fault_point(name: str, prepare: Callable[[], None] | None = None, **context: Any) -> None:
    """Send this process the armed signal if a test armed `name` for this call; else do nothing.

    Args:
        name: the point's name (listed in the module docstring).
        prepare: called just before the signal, only when the point fires (e.g. wait until the last
            checkpoint is committed, so that the crash lands where the test expects it).
        context: JSON values that the plan's ``when`` must match and the fired record keeps.
    """
    folder = os.environ.get(ENV_VAR)
    if not folder:
        return
    try:
        plan = json.loads(Path(folder, PLAN_FILE).read_text())
    except FileNotFoundError:
        return
    if plan["point"] != name or any(context.get(k) != v for k, v in plan["when"].items()):
        return
    call = _claim_call(Path(folder, CALLS_DIR))
    if not plan["skip"] <= call < plan["skip"] + plan["times"]:
        return
    if prepare is not None:
        prepare()
    record = {"point": name, "call": call, "pid": os.getpid(), "signal": plan["signal"], "context": context}
    Path(folder, FIRED_DIR, f"{call:04d}.json").write_text(json.dumps(record))
    os.kill(os.getpid(), signal.Signals[plan["signal"]])


def _claim_call(calls_dir: Path) -> int:
    """This call's index among the matching calls of every process (exclusive creation is atomic)."""
    call = 0
    while True:
        try:
            os.close(os.open(calls_dir / f"{call:04d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return call
        except FileExistsError:
            call += 1


def _folder() -> Path:
    folder = os.environ.get(ENV_VAR)
    if not folder:
        raise RuntimeError(f"{ENV_VAR} is not set: set it before starting the processes a fault should reach")
    return Path(folder)


@contextlib.contextmanager
def armed(name: str, *, signal_name: str = "SIGKILL", when: dict[str, Any] | None = None, skip: int = 0,
          times: int = 1) -> Iterator[None]:
    """Arm the point `name` for the ``with`` block (for tests).

    Calls of `name` whose context matches `when` are counted across processes from 0; calls
    ``skip .. skip + times - 1`` fire: the process records itself (see :func:`fired`) and sends itself
    `signal_name` (SIGKILL: dies like a killed node; SIGINT: a Ctrl-C).
    """
    folder = _folder()
    for sub in (CALLS_DIR, FIRED_DIR):
        shutil.rmtree(folder / sub, ignore_errors=True)
        (folder / sub).mkdir(parents=True)
    plan = {"point": name, "signal": signal.Signals[signal_name].name, "when": when or {}, "skip": skip,
            "times": times}
    tmp = folder / f".{PLAN_FILE}.tmp"
    tmp.write_text(json.dumps(plan))
    os.replace(tmp, folder / PLAN_FILE)  # a process reaching a point reads the whole plan or none
    try:
        yield
    finally:
        (folder / PLAN_FILE).unlink(missing_ok=True)


def fired() -> list[dict[str, Any]]:
    """The firings of the last armed plan, in call order: point, call, pid, signal and context."""
    return [json.loads(p.read_text()) for p in sorted((_folder() / FIRED_DIR).glob("*.json"))]
