"""`a2bs train`: sequence shards -> trained model (Ray Train)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from a2bs.config import FINETUNE_MODES, ConfigError, load_config
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
    """``a2bs finetune MODEL CLIPS_OR_SHARDS --identity NEW --out RUN [--train MODE | --head] [key=value ...]``."""
    from a2bs.train.finetune import finetune

    (model, data), overrides = positionals(args, rest, ("MODEL", "CLIPS_OR_SHARDS"))
    if args.head and args.train not in (None, "head"):
        raise ConfigError(f"finetune: --head is --train head; it contradicts --train {args.train}")
    mode = "head" if args.head else args.train
    if mode is not None:  # after the overrides: the flag is what the command line says last
        overrides = [*overrides, f"finetune.train={mode}"]
    result = finetune(model, data, args.identity, args.out, load_config(args.config, overrides),
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
                                        "identity (in this process; by default only its rows learn)")
    p.add_argument("inputs", nargs="*", help="MODEL CLIPS_OR_SHARDS (and key=value overrides, e.g. finetune.epochs=30)")
    p.add_argument("--identity", required=True, help="name of the new face (identity)")
    p.add_argument("--out", required=True, help="output folder: OUT/model.safetensors and OUT/finetune.json")
    p.add_argument("--train", choices=FINETUNE_MODES, default=None,
                   help="what learns (finetune.train): identity = the new rows only, the other faces bit-identical "
                        "(default); head = also the output head; all = also the backbone, at finetune.backbone_lr "
                        "(head and all change the other faces too)")
    p.add_argument("--head", action="store_true", help="the same as --train head")
    add_common(p)
    handlers["finetune"] = cmd_finetune
