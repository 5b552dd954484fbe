"""train.loop.one_cycle: the LR schedule, fresh and continued part-way (resume with a new length)."""

from __future__ import annotations

import pytest
import torch

from a2bs.config import TrainConfig
from a2bs.train.loop import one_cycle

TC = TrainConfig(lr=0.01)


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=TC.lr)


def test_fresh_schedule_peaks_at_train_lr() -> None:
    opt = _optimizer()
    sched = one_cycle(opt, TC, total_steps=20)
    lrs = []
    for _ in range(19):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert max(lrs) == pytest.approx(TC.lr) and lrs[-1] < TC.lr / 100


def test_continued_schedule_matches_the_stepped_one() -> None:
    opt = _optimizer()
    stepped = one_cycle(opt, TC, total_steps=20)
    for _ in range(7):
        opt.step()
        stepped.step()
    resumed = one_cycle(opt, TC, total_steps=20, done_steps=7)  # opt holds initial_lr from the first call
    assert resumed.last_epoch == stepped.last_epoch == 7
    assert resumed.get_last_lr() == pytest.approx(stepped.get_last_lr())
