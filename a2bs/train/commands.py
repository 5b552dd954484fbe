"""`a2bs train`: sequence shards -> trained model (Ray Train)."""

from __future__ import annotations

import argparse
from typing import Callable

from a2bs.config import load_config
from a2bs.runtime import console
from a2bs.runtime.commands import positionals


def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    """``a2bs train SHARDS_DIR --out RUN_DIR [--resume] [key=value ...]``."""
    from a2bs.train.trainer import resume_config, train

    (shards,), overrides = positionals(args, rest, ("SHARDS_DIR",))
    cfg = resume_config(args.out, args.config, overrides) if args.resume else load_config(args.config, overrides)
    result = train(shards, args.out, cfg, resume=args.resume, use_ray=not args.no_ray)
    console.summary(result.line())
    return 0


def cmd_finetune(args: argparse.Namespace, rest: list[str]) -> int:
    """``a2bs finetune MODEL CLIPS_OR_SHARDS --identity NEW --out RUN [--head] [key=value ...]``."""
    from a2bs.train.finetune import finetune

    (model, data), overrides = positionals(args, rest, ("MODEL", "CLIPS_OR_SHARDS"))
    result = finetune(model, data, args.identity, args.out, load_config(args.config, overrides), head=args.head,
                      progress=not args.quiet)
    console.summary(result.line())
    return 0


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable], add_common: Callable) -> None:
    """Add ``train`` to the `a2bs` parser."""
    p = sub.add_parser("train", help="sequence shards -> trained model (Ray Train, DDP, checkpoints)")
    p.add_argument("inputs", nargs="*", help="SHARDS_DIR (and key=value overrides)")
    p.add_argument("--out", required=True, help="run folder (local or s3://); RUN_DIR/model.safetensors is the best model")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--no-ray", action="store_true", help="run the same loop in this process (one worker)")
    add_common(p)
    handlers["train"] = cmd_train

    p = sub.add_parser("finetune", help="a trained model + a new actor's clips or shards -> the model with one more "
                                        "identity (backbone frozen, in this process)")
    p.add_argument("inputs", nargs="*", help="MODEL CLIPS_OR_SHARDS (and key=value overrides, e.g. finetune.epochs=30)")
    p.add_argument("--identity", required=True, help="name of the new face (identity)")
    p.add_argument("--out", required=True, help="output folder: OUT/model.safetensors and OUT/finetune.json")
    p.add_argument("--head", action="store_true",
                   help="also adapt the output head (the model's other faces then change too)")
    add_common(p)
    handlers["finetune"] = cmd_finetune
