"""Training progress on the console: epochs done, with the loss and validation metrics.

Training runs in Ray Train workers (or in this process); rank 0 rewrites ``RUN_DIR/history.json``
after every epoch. The driver reads that file every ``CONSOLE_POLL_S`` and moves the display on, so
the display works the same for local and s3:// runs and needs nothing from the workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Any, Iterator

from a2bs.config import CONSOLE_POLL_S
from a2bs.runtime import console, storage
from a2bs.train.loop import HISTORY_JSON

log = logging.getLogger(__name__)


def epoch_text(row: dict[str, Any]) -> str:
    """The last epoch's losses and validation metrics, short enough for one terminal line."""
    return (f"loss {row['train_loss']:.4f} val {row['val_loss']:.4f}, mae {row['val_mae']:.4f} "
            f"mouth {row['val_mouth_mae']:.4f} jaw_r {row['val_jaw_corr']:.2f} lip_r {row['val_lip_corr']:.2f}")


def _read(uri: str) -> list[dict[str, Any]]:
    try:
        return json.loads(storage.read_text(uri)) if storage.exists(uri) else []
    except (OSError, ValueError):  # written atomically, but a remote store may still be listing it
        return []


@contextlib.contextmanager
def track_epochs(run_dir: str, epochs: int, resume: bool) -> Iterator[None]:
    """Show the epochs of the run in `run_dir` while the block trains it.

    A resume is announced (it always shows): from which epoch the run goes on.
    """
    uri = storage.join(run_dir, HISTORY_JSON)
    before = _read(uri) if resume else []
    if before:
        log.warning(f"train: resuming {run_dir} after epoch {before[-1]['epoch']} of {epochs}")
    session = console.current()
    if session is None or session.mode == console.QUIET:
        yield
        return
    stop = threading.Event()
    with console.track("train", epochs, "epochs", done=len(before)) as bar:
        seen = len(before)

        def poll() -> None:
            nonlocal seen
            rows = _read(uri)
            for row in rows[seen:]:
                bar.update(completed=int(row["epoch"]) + 1, info=epoch_text(row), milestone=True)
            seen = max(seen, len(rows))

        def loop() -> None:
            while not stop.wait(CONSOLE_POLL_S):
                poll()

        thread = threading.Thread(target=loop, name="a2bs-train-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            poll()  # the last epoch, written just before training returned
