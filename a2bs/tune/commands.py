"""`a2bs tune`: Ray Tune search over model and loss settings."""

from __future__ import annotations

import argparse
from typing import Callable

from a2bs.config import load_config
from a2bs.runtime import console
from a2bs.runtime.commands import positionals


def cmd_tune(args: argparse.Namespace, rest: list[str]) -> int:
    """``a2bs tune SHARDS_DIR --out TUNE_DIR [key=value ...]``."""
    from a2bs.tune.search import run_tune

    (shards,), overrides = positionals(args, rest, ("SHARDS_DIR",))
    result = run_tune(shards, args.out, load_config(args.config, overrides), progress=not args.quiet)
    console.summary(result.line())
    return 0 if result.best is not None else 1


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable], add_common: Callable) -> None:
    """Add ``tune`` to the `a2bs` parser."""
    p = sub.add_parser("tune", help="Ray Tune search (ASHA) -> results table + best-config YAML")
    p.add_argument("inputs", nargs="*", help="SHARDS_DIR (and key=value overrides)")
    p.add_argument("--out", required=True, help="tune folder: results.csv, best.yaml, trials")
    add_common(p)
    handlers["tune"] = cmd_tune
