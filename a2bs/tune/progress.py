"""Search progress on the console: trials running and finished, and the best so far."""

from __future__ import annotations

import math
from typing import Any

from ray.tune import Callback

from a2bs.runtime import console


class TrialProgress(Callback):
    """A Ray Tune callback (it runs in the driver) that moves a progress display on per trial.

    Args:
        num_samples: trials in the search.
        metric: the metric ASHA compares (lower is better), shown for the best trial so far.
    """

    def __init__(self, num_samples: int, metric: str) -> None:
        self.total = num_samples
        self.metric = metric
        self.running: set[str] = set()
        self.finished = self.errors = 0
        self.best: tuple[float, str] = (math.inf, "")
        self.bar: console.Tracker | None = None

    def setup(self, **info: Any) -> None:
        self.bar = console.track("tune", self.total, "trials")

    def _show(self, milestone: bool = False) -> None:
        if self.bar is None:
            return
        text = f"{len(self.running)} running"
        if self.errors:
            text += f", {self.errors} failed"
        if self.best[1]:
            text += f", best {self.metric} {self.best[0]:.4f} ({self.best[1]})"
        self.bar.update(completed=self.finished + self.errors, info=text, milestone=milestone)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._show()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and value < self.best[0]:
            self.best = (float(value), trial.trial_id)
        self._show()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.finished += 1
        self._show(milestone=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.errors += 1
        self._show(milestone=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.bar is not None:
            self.bar.close()
