"""What every stage's subcommands share: positional arguments separated from ``key=value`` overrides."""

from __future__ import annotations

import argparse

from a2bs.config import ConfigError, split_overrides


def positionals(args: argparse.Namespace, rest: list[str], names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Exactly ``len(names)`` positional arguments and the overrides; a one-line error otherwise."""
    inputs, overrides = split_overrides(list(args.inputs) + list(rest))
    if len(inputs) != len(names):
        raise ConfigError(f"{args.command}: expected {' '.join(names)} (got {' '.join(inputs) or 'nothing'})")
    return inputs, overrides
