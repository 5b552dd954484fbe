"""CLI subcommands of the training stage: ``a2bs train``, ``a2bs tune``, ``a2bs evaluate``."""

from __future__ import annotations

import argparse
from typing import Callable

from a2bs.config import ConfigError, load_config


def _positional(args: argparse.Namespace, rest: list[str], names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    from a2bs.cli import _split_overrides

    inputs, overrides = _split_overrides(list(args.inputs) + list(rest))
    if len(inputs) != len(names):
        raise ConfigError(f"{args.command}: expected {' '.join(names)} (got {' '.join(inputs) or 'nothing'})")
    return inputs, overrides


def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    """``a2bs train SHARDS_DIR --out RUN_DIR [--resume] [key=value ...]``."""
    from a2bs.train.trainer import resume_config, train

    (shards,), overrides = _positional(args, rest, ("SHARDS_DIR",))
    cfg = resume_config(args.out, args.config, overrides) if args.resume else load_config(args.config, overrides)
    result = train(shards, args.out, cfg, resume=args.resume, use_ray=not args.no_ray)
    print(result.line())
    return 0


def cmd_tune(args: argparse.Namespace, rest: list[str]) -> int:
    """``a2bs tune SHARDS_DIR --out TUNE_DIR [key=value ...]``."""
    from a2bs.tune import run_tune

    (shards,), overrides = _positional(args, rest, ("SHARDS_DIR",))
    result = run_tune(shards, args.out, load_config(args.config, overrides), progress=not args.quiet)
    print(result.line())
    return 0 if result.best is not None else 1


def cmd_evaluate(args: argparse.Namespace, rest: list[str]) -> int:
    """``a2bs evaluate MODEL SHARDS_DIR --out REPORT_DIR [--split val] [--clip ID]``."""
    from a2bs.train.evaluate import evaluate
    from a2bs.train.loop import resolve_device

    (model, shards), overrides = _positional(args, rest, ("MODEL", "SHARDS_DIR"))
    cfg = load_config(args.config, overrides)
    report = evaluate(model, shards, args.out, split=args.split, clip_id=args.clip,
                      device=str(resolve_device(cfg.train)))
    print(report.line())
    return 0


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable], add_common: Callable) -> None:
    """Add ``train``, ``tune`` and ``evaluate`` to the `a2bs` parser."""
    p = sub.add_parser("train", help="sequence shards -> trained model (Ray Train, DDP, checkpoints)")
    p.add_argument("inputs", nargs="*", help="SHARDS_DIR (and key=value overrides)")
    p.add_argument("--out", required=True, help="run folder (local or s3://); RUN_DIR/model.safetensors is the best model")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--no-ray", action="store_true", help="run the same loop in this process (one worker)")
    add_common(p)
    handlers["train"] = cmd_train

    p = sub.add_parser("tune", help="Ray Tune search (ASHA) -> results table + best-config YAML")
    p.add_argument("inputs", nargs="*", help="SHARDS_DIR (and key=value overrides)")
    p.add_argument("--out", required=True, help="tune folder: results.csv, best.yaml, trials")
    add_common(p)
    handlers["tune"] = cmd_tune

    p = sub.add_parser("evaluate", help="model + shards -> metrics vs the seed's targets, plots")
    p.add_argument("inputs", nargs="*", help="MODEL SHARDS_DIR (and key=value overrides)")
    p.add_argument("--out", required=True, help="report folder (report.json, targets.md, PNG plots)")
    p.add_argument("--split", default="val", choices=("val", "train"), help="which split to score")
    p.add_argument("--clip", default=None, help="clip id for the curve plot (default: longest scored clip)")
    add_common(p)
    handlers["evaluate"] = cmd_evaluate
