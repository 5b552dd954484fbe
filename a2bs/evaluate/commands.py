"""`a2bs evaluate`: a model on sequence shards -> metrics against the seed's targets, plots."""

from __future__ import annotations

import argparse
from typing import Callable

from a2bs.config import load_config, user_overrides
from a2bs.runtime import console
from a2bs.runtime.commands import positionals


def cmd_evaluate(args: argparse.Namespace, rest: list[str]) -> int:
    """``a2bs evaluate MODEL SHARDS_DIR --out REPORT_DIR [--split test] [--clip ID]``."""
    from a2bs.evaluate.report import evaluate
    from a2bs.train.loop import resolve_device

    (model, shards), overrides = positionals(args, rest, ("MODEL", "SHARDS_DIR"))
    cfg = load_config(args.config, overrides)
    report = evaluate(model, shards, args.out, split=args.split, clip_id=args.clip,
                      batch_size=cfg.train.val_batch_size, device=str(resolve_device(cfg.train)), cfg=cfg,
                      overrides=user_overrides(args.config, overrides))
    console.summary(report.line())
    return 0


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable], add_common: Callable) -> None:
    """Add ``evaluate`` to the `a2bs` parser."""
    p = sub.add_parser("evaluate", help="model + shards -> metrics per split and speaker vs the seed's targets, plots")
    p.add_argument("inputs", nargs="*", help="MODEL SHARDS_DIR (and key=value overrides)")
    p.add_argument("--out", required=True, help="report folder (report.json, targets.md, PNG plots)")
    p.add_argument("--split", default=None, choices=("test", "val", "known", "train"),
                   help="headline split (default: test if the shards have one, else val); every held-out "
                        "split (val, test, known) is scored too")
    p.add_argument("--clip", default=None, help="clip id for the curve plot (default: longest scored clip)")
    add_common(p)
    handlers["evaluate"] = cmd_evaluate
