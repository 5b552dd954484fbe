"""Run logs: what a command's process, its child processes and its Ray workers print goes to a file.

:class:`RunLog` points file descriptors 1 and 2 at ``OUT/_logs/<stage>-<timestamp>.log`` (a local
temporary file uploaded at the end when OUT is on s3://). That catches everything the terminal would
otherwise get: C++ logging (glog/absl, TensorFlow Lite) written straight to fd 2, Ray's driver logs,
the workers' output Ray streams to the driver, and the output of processes started meanwhile (Ray's
daemons, ffmpeg). A plain file rather than a pipe: nothing is lost if the process dies, and children
that outlive the capture never hit a closed pipe.

:class:`LogFollower` reads the file as it grows, for ``--verbose`` and for :func:`alert` (a worker
crash reaches the screen with its reason). :func:`without_lines` drops the start-up notices of a
native library that offers no switch for them.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
import time
from typing import Callable, Iterator, Sequence

from a2bs.runtime import storage

LOGS_DIR = "_logs"
# a2bs's own lines in a run log start with this ("[a2bs 06:45:12] ..."); the live echo skips them.
OWN_PREFIX = "[a2bs "
FOLLOW_POLL_S = 0.1

# Lines of Ray's output that mean a worker process died, and how to say so in one line.
_WORKER_DIED = re.compile(r"A worker died or was killed.*?(?:Worker PID: (\d+).*?)?Worker exit detail: (.*?)"
                          r"(?: Some common causes|$)")
_OUT_OF_MEMORY = re.compile(r"(Task was killed due to the node running low on memory.*?)(?: Refer to|$)")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def log_name(stage: str, when: float | None = None) -> str:
    """``<stage>-<YYYYmmdd-HHMMSS>.log`` (local time)."""
    return f"{stage}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}.log"


def alert(line: str) -> str | None:
    """The one-line warning for a line of captured output that reports a dead worker, else None."""
    line = _ANSI.sub("", line)
    m = _WORKER_DIED.search(line)
    if m:
        pid = f" (pid {m.group(1)})" if m.group(1) else ""
        return f"a Ray worker died{pid}: {m.group(2).strip()}"
    m = _OUT_OF_MEMORY.search(line)
    if m:
        return f"a Ray worker was killed: {m.group(1).strip()}"
    return None


class RunLog:
    """The log file of one command run, and the capture of this process's fd 1 and 2 into it.

    Attributes:
        uri: where the log ends up (``OUT/_logs/<name>``, local or s3://).
        path: the local file written while the command runs.
    """

    def __init__(self, out_dir: str, stage: str) -> None:
        name = log_name(stage)
        self.uri = storage.join(out_dir, LOGS_DIR, name)
        self._remote = storage.is_remote(out_dir)
        self._created: list[str] = []  # folders this log creates, innermost first
        if self._remote:
            tmp_fd, self.path = tempfile.mkstemp(prefix=f"a2bs-{stage}-", suffix=".log")
            os.close(tmp_fd)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        else:
            # A run refused before any work leaves none of them behind (see discard()).
            self._created = [d for d in (os.path.dirname(self.uri), str(out_dir)) if not os.path.isdir(d)]
            os.makedirs(os.path.dirname(self.uri), exist_ok=True)
            self.path, fd = _exclusive(self.uri)
            self.uri = self.path
        self._fd = fd
        self._saved: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def capture(self) -> None:
        """Point fd 1 and 2 at the log (children started from now on inherit it)."""
        _flush_std()
        self._saved = (os.dup(1), os.dup(2))
        # Opened with O_APPEND: every write lands at the end, whichever process makes it.
        os.dup2(self._fd, 1)
        os.dup2(self._fd, 2)

    def release(self) -> None:
        """Give fd 1 and 2 back to what they were."""
        if self._saved is None:
            return
        _flush_std()
        for fd, saved in zip((1, 2), self._saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self._saved = None

    def write(self, text: str) -> None:
        """Add a2bs's own lines (tagged with :data:`OWN_PREFIX` and the time) to the log."""
        stamp = time.strftime("%H:%M:%S")
        lines = text.splitlines() or [""]
        data = "".join(f"{OWN_PREFIX}{stamp}] {line}\n" for line in lines).encode("utf-8", "replace")
        with self._lock:
            os.write(self._fd, data)

    def discard(self) -> None:
        """Release the capture and delete the log, and the folders it created if they are empty
        (a command refused before any work, e.g. on a configuration error, writes nothing)."""
        self.release()
        os.close(self._fd)
        os.remove(self.path)
        for folder in self._created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if empty

    def close(self) -> str | None:
        """Release the capture, close the file and upload it if OUT is remote.

        Returns:
            None, or a one-line reason the upload failed (the local copy is kept at :attr:`path`).
        """
        self.release()
        os.close(self._fd)
        if not self._remote:
            return None
        try:
            with open(self.path, "rb") as f:
                storage.atomic_write_bytes(self.uri, f.read())
        except Exception as exc:  # the run's result must not depend on its log upload
            return f"could not upload the log to {self.uri} ({type(exc).__name__}: {exc}); it is in {self.path}"
        os.remove(self.path)
        return None


def _exclusive(path: str) -> tuple[str, int]:
    """Open a new log file at `path`, or at `path` with -2, -3, ... if a run in the same second took it."""
    stem, ext = os.path.splitext(path)
    for n in range(1, 1000):
        candidate = path if n == 1 else f"{stem}-{n}{ext}"
        try:
            return candidate, os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError:
            continue
    raise FileExistsError(path)


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


class LogFollower:
    """Reads the lines appended to a file from now on and hands each to `on_line` (in a thread)."""

    def __init__(self, path: str, on_line: Callable[[str], None]) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 (closed in stop)
        self._file.seek(0, os.SEEK_END)
        self._on_line = on_line
        self._partial = b""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="a2bs-log-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(FOLLOW_POLL_S):
            self.drain()

    def drain(self) -> None:
        """Hand over every complete line written so far."""
        with self._lock:
            data = self._partial + self._file.read()
            *lines, self._partial = data.split(b"\n")
            for line in lines:
                self._on_line(line.decode("utf-8", "replace").rstrip("\r"))

    def stop(self) -> None:
        """Hand over what is left (a last unterminated line too) and close the file."""
        self._stop.set()
        self._thread.join()
        self.drain()
        if self._partial:
            self._on_line(self._partial.decode("utf-8", "replace"))
            self._partial = b""
        self._file.close()


_held_fd2 = threading.Lock()


@contextlib.contextmanager
def without_lines(patterns: Sequence[re.Pattern[bytes]]) -> Iterator[None]:
    """Run a block with fd 2 held in a temporary file, then write back every line that matches none
    of `patterns`.

    For native libraries that print known notices while they start and offer no switch to stop
    them. Whatever else reaches fd 2 meanwhile (another thread, a real error) is kept, only delayed.
    """
    with _held_fd2, tempfile.TemporaryFile() as held:
        _flush_std()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            _flush_std()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True)
                    if not any(p.search(line) for p in patterns)]
            if kept:
                os.write(2, b"".join(kept))
