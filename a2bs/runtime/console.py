"""a2bs's console: one progress display per stage, the warnings that matter, and the summary line.

A command runs inside :func:`session`. Its process's fd 1 and 2, and so every child process and Ray
worker output, go to ``OUT/_logs/<stage>-<timestamp>.log`` (:class:`a2bs.runtime.logs.RunLog`); the
terminal belongs to this module:

- a progress display per stage (:func:`track`, :func:`tracked`): a ``rich`` bar on a terminal; plain
  lines elsewhere (CI, pipes, ``ray job submit``), at most one per ``CONSOLE_LINE_INTERVAL_S`` plus one
  per milestone (an epoch, a trial), never a carriage return;
- the ``a2bs`` logger: WARNING and above on screen (a clip failed and why, a config falling back, a
  resume), everything in the log; a Ray worker that dies is shown with its reason;
- :func:`summary`: the command's one-line summary, the last line on screen; :func:`say` for other
  results (tune's ranking table).

``--verbose`` also shows everything the log gets, as it comes; ``--quiet`` shows only the summary and
errors. Outside a session (the Python API, tests calling stage functions) progress is silent,
:func:`summary` and :func:`say` print, and the ``a2bs`` logger is left to the application.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, TextIO, TypeVar

from a2bs.config import CONSOLE_LINE_INTERVAL_S
from a2bs.runtime.logs import OWN_PREFIX, LogFollower, RunLog, alert

T = TypeVar("T")
QUIET, NORMAL, VERBOSE = "quiet", "normal", "verbose"
_SHOWN_LEVEL = {QUIET: logging.ERROR, NORMAL: logging.WARNING, VERBOSE: logging.INFO}
# Set while a session runs (read when Ray starts): no colour codes around the worker lines Ray relays to
# the log, and every line kept (Ray's de-duplication folds lines that differ only in numbers, such as
# the epoch lines of a training worker, into "[repeated Nx across cluster]").
_SESSION_ENV = {"RAY_COLOR_PREFIX": "0", "RAY_DEDUP_LOGS": "0"}

_active: Session | None = None


def error_line(exc: BaseException) -> str:
    """One line for an exception: its type and first line and, for a multi-line message (Ray wraps a
    worker's error in one), the innermost error line, or else the first line that says something."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = f"{type(exc).__name__}: {lines[0]}"
    inner = [line for line in lines[1:] if _looks_like_error(line)]
    plain = [line for line in lines[1:] if not line.endswith(":") and not line.startswith(("File ", "Traceback"))]
    if inner or plain:
        text += f" {(inner or plain)[-1 if inner else 0]}"
    return text if len(text) <= 400 else text[:399] + "…"


def _looks_like_error(line: str) -> bool:
    head = line.split(":", 1)[0]
    return ":" in line and " " not in head and head.split(".")[-1].endswith(("Error", "Exception", "Exit"))


class Session:
    """The console of one command run (see the module docstring)."""

    def __init__(self, stage: str, out_dir: str | None, mode: str) -> None:
        self.stage = stage
        self.mode = mode
        self.out, self._own_out = _terminal(sys.stdout, 1)
        self.err, self._own_err = _terminal(sys.stderr, 2)
        self.fancy = _isatty(self.err) and os.environ.get("TERM", "") not in ("dumb", "unknown")
        self.rich: Any = _rich_console(self.err) if self.fancy else None
        self.log: RunLog | None = None
        self.log_problem = ""
        if out_dir:
            try:
                self.log = RunLog(out_dir, stage)
            except OSError as exc:
                self.log_problem = f"no log file in {out_dir} ({exc})"
        self.done = False  # the summary (or the final error) is out: nothing more on screen
        self._discard_log = False
        self._follower: LogFollower | None = None
        self._trackers: list[Tracker] = []
        self._lock = threading.RLock()
        self._env: dict[str, str | None] = {}
        self._handler = _Handler(self)
        self._logger_state: tuple[int, bool] = (0, True)
        self._started_ray = False
        self._t0 = time.time()

    # -- start and end ---------------------------------------------------------------------------

    def open(self, argv: list[str] | None = None) -> None:
        for key, value in _SESSION_ENV.items():
            self._env[key] = os.environ.get(key)
            os.environ.setdefault(key, value)
        logger = logging.getLogger("a2bs")
        self._logger_state = (logger.level, logger.propagate)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # the session's handler writes the log; the root handler would repeat it
        logger.addHandler(self._handler)
        self._started_ray = not _ray_initialized()
        if self.log is not None:
            self.log.write(f"a2bs {' '.join(argv or [self.stage])} (pid {os.getpid()})")
            self.log.capture()
            self._follower = LogFollower(self.log.path, self._captured_line)
            if self.mode != QUIET:
                self._show(self.err, f"{self.stage}: log in {self.log.uri}", "dim")
        elif self.log_problem:
            self._show(self.err, f"warning: {self.log_problem}", "yellow")

    def close(self) -> None:
        """End the session: close the displays, stop a Ray it started, give the fds back, store the log."""
        for tracker in list(self._trackers):
            tracker.close()
        if self._started_ray and _ray_initialized():
            import ray

            ray.shutdown()  # inside the capture: its farewell lines belong in the log, not after the summary
        if self.log is not None:
            self.log.write(f"exit after {time.time() - self._t0:.1f} s")
            self.log.release()
            if self._follower is not None:
                self._follower.stop()
            problem = None
            if self._discard_log:
                self.log.discard()
            else:
                problem = self.log.close()
            if problem:
                self._show(self.err, f"warning: {problem}", "yellow", force=True)
        logger = logging.getLogger("a2bs")
        logger.removeHandler(self._handler)
        logger.setLevel(self._logger_state[0])
        logger.propagate = self._logger_state[1]
        for key, old in self._env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        for stream, own in ((self.out, self._own_out), (self.err, self._own_err)):
            with contextlib.suppress(Exception):
                stream.close() if own else stream.flush()

    def refused(self, line: str) -> None:
        """The command was refused before any work (a configuration error): show `line`, keep no log."""
        self._discard_log = True
        self.error(line)

    # -- output ----------------------------------------------------------------------------------

    def summary(self, text: str) -> None:
        """The command's result line(s): shown in every mode, the last thing on screen."""
        self._settle()
        self.record(text)
        self._show(self.out, text, "bold", force=True)
        self.done = True

    def say(self, text: str) -> None:
        """A result worth showing (hidden with --quiet)."""
        self._settle()
        self.record(text)
        if self.mode != QUIET:
            self._show(self.out, text, None)

    def error(self, text: str) -> None:
        """The command's final error line (shown in every mode)."""
        self._settle()
        self.record(text)
        self._show(self.err, text, "bold red", force=True)
        self.done = True

    def message(self, level: int, text: str) -> None:
        """A log record of the ``a2bs`` logger: into the log; on screen from the mode's level up."""
        self.record(text if level < logging.WARNING else f"{logging.getLevelName(level).lower()}: {text}")
        if level >= _SHOWN_LEVEL[self.mode]:
            if level >= logging.ERROR:
                self._show(self.err, text, "red")
            elif level >= logging.WARNING:
                self._show(self.err, f"warning: {text}", "yellow")
            else:
                self._show(self.err, text, None)

    def _settle(self) -> None:
        # Lines already captured come first: an alert about a dead worker belongs before the summary.
        if self._follower is not None:
            self._follower.drain()

    def record(self, text: str) -> None:
        """Into the log only."""
        if self.log is not None:
            self.log.write(text)

    def _captured_line(self, line: str) -> None:
        # Called by the log follower for every line the log gets.
        if line.startswith(OWN_PREFIX) or self.done:
            return
        warning = alert(line)
        if warning:
            self.record(f"warning: {warning}")
            if self.mode != QUIET:
                self._show(self.err, f"warning: {warning}", "yellow")
        elif self.mode == VERBOSE:
            self._show(self.err, line, None, raw=True)

    def _show(self, stream: TextIO, text: str, style: str | None, *, force: bool = False, raw: bool = False) -> None:
        """Write `text` to a terminal stream (through rich on a terminal, so a live bar stays below)."""
        if self.done and not force:
            return
        with self._lock:
            # On a terminal, stdout's lines go through rich too: printed while a bar is live, they land above it.
            if self.rich is not None and (stream is self.err or _isatty(stream)):
                from rich.text import Text

                # A styled Text, not print(style=...): that style would also tint the live bar redrawn below.
                self.rich.print(Text.from_ansi(text) if raw else Text(text, style=style or ""), soft_wrap=True)
            else:
                stream.write(text + "\n")
                stream.flush()

    # -- progress --------------------------------------------------------------------------------

    def track(self, label: str, total: int | None, unit: str, done: int = 0) -> Tracker:
        tracker = Tracker(self, label, total, unit, done)
        self._trackers.append(tracker)
        return tracker


class _Handler(logging.Handler):
    """Routes the ``a2bs`` logger to the session (tracebacks to the log only)."""

    def __init__(self, session: Session) -> None:
        super().__init__(logging.INFO)
        self.session = session

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.session.message(record.levelno, record.getMessage())
            if record.exc_info:
                self.session.record(logging.Formatter().formatException(record.exc_info))
        except Exception:
            self.handleError(record)


def _terminal(stream: TextIO, fd: int) -> tuple[TextIO, bool]:
    """A stream on what `fd` is now (the terminal), for after fd 1/2 go to the log; or `stream` itself
    when it is not that fd (e.g. a test's redirect_stdout)."""
    try:
        if stream.fileno() == fd:
            encoding = getattr(stream, "encoding", None) or "utf-8"
            return os.fdopen(os.dup(fd), "w", buffering=1, encoding=encoding, errors="replace"), True
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    return stream, False


def _rich_console(stream: TextIO) -> Any:
    """A rich Console on `stream` that takes its width from `stream` (rich measures fds 0-2, which a
    session points at the log, and stdin may not be the terminal)."""
    from rich.console import Console, ConsoleDimensions

    class _Console(Console):
        @property
        def size(self) -> ConsoleDimensions:
            try:
                width, height = os.get_terminal_size(stream.fileno())
            except (OSError, ValueError):
                return super().size
            return ConsoleDimensions(width or 80, height or 25)

    return _Console(file=stream, highlight=False)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _clock(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Tracker:
    """One stage's progress: a rich bar on a terminal, plain lines elsewhere, lines in the log.

    Without a session (or with ``enabled=False``) every method does nothing.
    """

    def __init__(self, session: Session | None, label: str, total: int | None, unit: str, done: int = 0) -> None:
        self.session = session
        self.label, self.total, self.unit = label, total, unit
        self.completed = done
        self.info = ""
        self._start_completed = done  # units done before this run (a resume): shown, not in the ETA
        self._t0 = time.time()
        self._last_line = 0.0
        self._lines_at = -1  # `completed` at the last plain line
        self._lock = threading.Lock()
        self._progress: Any = None
        self._task: Any = None
        self.closed = session is None
        if session is None:
            return
        if session.fancy and session.mode != QUIET:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.table import Column

            # The status text takes the rest of the line and is cut (…) on a narrow terminal.
            # redirect_*=False: rich must not take over sys.stdout/sys.stderr, which go to the log.
            self._progress = Progress(
                SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(bar_width=16),
                MofNCompleteColumn(), TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}", markup=False,
                           table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
                console=session.rich, redirect_stdout=False, redirect_stderr=False, refresh_per_second=4,
                expand=True)
            self._task = self._progress.add_task(label, total=total, completed=done, unit=unit, info="")
            self._progress.start()
        self._line(force=True)

    @property
    def elapsed_s(self) -> float:
        return time.time() - self._t0

    def update(self, advance: int = 0, *, completed: int | None = None, info: str | None = None,
               milestone: bool = False) -> None:
        """Move the display on.

        Args:
            advance: units done since the last call.
            completed: or the units done in all (e.g. epochs read from a history file).
            info: the stage's status text (rates, metrics, failures so far).
            milestone: a unit worth its own plain line (an epoch, a trial), whatever the interval.
        """
        if self.closed:
            return
        with self._lock:
            if completed is not None:
                self.completed = completed
            self.completed += advance
            if info is not None:
                self.info = info
            if self._progress is not None:
                self._progress.update(self._task, completed=self.completed, info=self.info)
            self._line(force=milestone)

    def _line(self, force: bool) -> None:
        now = time.time()
        if not force and now - self._last_line < CONSOLE_LINE_INTERVAL_S:
            return
        if not force and self.completed == self._lines_at:
            return
        self._last_line, self._lines_at = now, self.completed
        text = self.plain()
        session = self.session
        assert session is not None
        session.record(text)
        if self._progress is None and session.mode != QUIET:
            session._show(session.err, text, None)

    def plain(self) -> str:
        """The plain progress line, e.g. ``extract: 3/4 clips (75%), ... [0:00:31 elapsed, eta 0:00:10]``."""
        total = "?" if self.total is None else str(self.total)
        pct = f" ({100 * self.completed / self.total:.0f}%)" if self.total else ""
        text = f"{self.label}: {self.completed}/{total} {self.unit}{pct}".rstrip()
        if self.info:
            text += f", {self.info}"
        elapsed = self.elapsed_s
        times = f"{_clock(elapsed)} elapsed"
        done_here = self.completed - self._start_completed
        if self.total and 0 < done_here and self.completed < self.total:
            times += f", eta {_clock(elapsed / done_here * (self.total - self.completed))}"
        return f"{text} [{times}]"

    def close(self) -> None:
        """Final state: the bar stays on screen; outside a terminal a last line if anything moved."""
        if self.closed:
            return
        with self._lock:
            self.closed = True
            if self._progress is not None:
                self._progress.update(self._task, completed=self.completed, info=self.info)
                self._progress.stop()
            if self.completed != self._lines_at:
                self._line(force=True)
        assert self.session is not None
        with contextlib.suppress(ValueError):
            self.session._trackers.remove(self)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the functions stages call ---------------------------------------------------------------------


@contextlib.contextmanager
def session(stage: str, out_dir: str | None = None, *, quiet: bool = False, verbose: bool = False,
            argv: list[str] | None = None) -> Iterator[Session]:
    """Run a command with a2bs's console; framework output goes to ``OUT/_logs/`` when `out_dir` is given.

    A session inside a session (e.g. ``a2bs demo`` running stages) is the outer one.
    """
    global _active
    if _active is not None:
        yield _active
        return
    mode = QUIET if quiet else VERBOSE if verbose else NORMAL
    active = Session(stage, out_dir, mode)
    active.open(argv)
    _active = active
    try:
        yield active
    finally:
        _active = None
        active.close()


def current() -> Session | None:
    """The active session, if any."""
    return _active


def track(label: str, total: int | None, unit: str = "", enabled: bool = True, done: int = 0) -> Tracker:
    """A progress display for one stage (use as a context manager, or call ``close()``).

    Args:
        done: units already done before this run (a resume): shown, but not counted in the ETA.
    """
    if _active is None or not enabled:
        return Tracker(None, label, total, unit, done)
    return _active.track(label, total, unit, done)


def tracked(items: Iterable[T], label: str, total: int | None, unit: str = "",
            describe: Callable[[list[T], float], str] | None = None, enabled: bool = True) -> Iterator[T]:
    """Yield `items`, advancing a progress display by one each.

    Args:
        describe: (items so far, elapsed seconds) -> the status text (rates, failures so far).
    """
    with track(label, total, unit, enabled) as bar:
        done: list[T] = []
        for item in items:
            done.append(item)
            bar.update(1, info=describe(done, bar.elapsed_s) if (describe and not bar.closed) else None)
            yield item


def summary(text: str) -> None:
    """Print the command's one-line summary (on a session's terminal, and into its log)."""
    if _active is not None:
        _active.summary(text)
    else:
        print(text, flush=True)


def say(text: str) -> None:
    """Print a result worth showing (hidden with --quiet)."""
    if _active is not None:
        _active.say(text)
    else:
        print(text, flush=True)
