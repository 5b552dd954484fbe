"""`a2bs` command line: thin wrappers around library calls.

Every command takes ``--config FILE.yaml`` and trailing ``key=value`` overrides, prints a one-line
summary at the end, and exits non-zero with a one-line reason on a configuration error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from typing import Callable

from a2bs.config import Config, ConfigError, load_config, split_overrides
from a2bs.errors import InputError, ModelFileError
from a2bs.runtime import console

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C


def _config(args: argparse.Namespace, overrides: list[str]) -> Config:
    return load_config(args.config, overrides)


def cmd_extract(args: argparse.Namespace, rest: list[str]) -> int:
    from a2bs.extract.pipeline import run_extract

    inputs, overrides = split_overrides(args.inputs + rest)
    if not inputs:
        raise ConfigError("extract: give at least one input file, folder, glob or s3:// prefix")
    cfg = _config(args, overrides)
    summary = run_extract(inputs, args.out, cfg, write_json=args.json, use_ray=not args.no_ray,
                          progress=not args.quiet)
    console.summary(summary.line())  # each failure was shown (and logged) as it happened
    return EXIT_OK if (summary.ok or summary.skipped) else EXIT_FAILED


def cmd_build(args: argparse.Namespace, rest: list[str]) -> int:
    from a2bs.build.pipeline import run_build

    _, overrides = split_overrides(rest)
    cfg = _config(args, overrides)
    summary = run_build(args.clips, args.out, cfg, use_ray=not args.no_ray, progress=not args.quiet)
    console.summary(summary.line())
    return EXIT_OK if sum(summary.rows.values()) else EXIT_FAILED


def cmd_synth(args: argparse.Namespace, rest: list[str]) -> int:
    from a2bs.synth.corpus import main as synth_main

    if rest:
        raise ConfigError(f"synth takes no inputs or overrides (got {' '.join(rest)})")

    clips = ["--clips", str(args.clips)] if args.clips else []  # default: a2bs.synth.corpus's
    verify = ["--no-verify"] if args.no_verify else []
    return synth_main(["--out", args.out, *clips, "--voices", args.voices, "--seed", str(args.seed),
                       "--jobs", str(args.jobs), *verify])


def cmd_demo(args: argparse.Namespace, rest: list[str]) -> int:
    from a2bs.demo.job import demo_config, run_demo

    _, overrides = split_overrides(rest)
    cfg = load_config(args.config, overrides, base=demo_config())
    return run_demo(args.out, cfg, clips_per_speaker=args.clips_per_speaker, speakers=args.speakers)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of overrides (sections as in a2bs/config/sections.py)")
    p.add_argument("--quiet", action="store_true", help="show only the summary and errors")
    p.add_argument("--verbose", action="store_true",
                   help="also show what goes to the log file (Ray, MediaPipe, workers) as it comes")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    parser = argparse.ArgumentParser(prog="a2bs", description="Audio to ARKit blendshapes, at Ray scale.")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Callable] = {}

    p = sub.add_parser("extract", help="videos/audio -> per-clip features (Parquet, optional seed JSON)")
    p.add_argument("inputs", nargs="*", help="files, folders, globs or s3:// prefixes (and key=value overrides)")
    p.add_argument("--out", required=True, help="clip features folder (local or s3://)")
    p.add_argument("--json", action="store_true", help="also write the seed's face/audio JSON per clip")
    p.add_argument("--no-ray", action="store_true", help="run in this process without Ray (a few files)")
    _common(p)
    handlers["extract"] = cmd_extract

    p = sub.add_parser("build", help="clip features -> sequence shards with a train/val split")
    p.add_argument("clips", help="clip features folder written by `a2bs extract`")
    p.add_argument("--out", required=True, help="shards folder (local or s3://)")
    p.add_argument("--no-ray", action="store_true", help="run in this process without Ray")
    _common(p)
    handlers["build"] = cmd_build

    p = sub.add_parser("synth", help="generate the demo corpus (needs flite and festival)")
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=0, help="number of clips (default: 6 per voice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="clips rendered and verified at once")
    p.add_argument("--voices", default="demo",
                   help="voice set: demo (the corpus's 15 voices) or espeak (espeak-ng's variants, for benchmarks)")
    p.add_argument("--no-verify", action="store_true", help="skip the MediaPipe read-back check")
    _common(p)
    handlers["synth"] = cmd_synth

    p = sub.add_parser("demo", help="the main job on the bundled demo corpus (embedded local Ray)")
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--clips-per-speaker", type=int, default=0,
                   help="run on the first N clips of each demo speaker (a quick smoke run; default: all)")
    p.add_argument("--speakers", type=int, default=0,
                   help="run on N of the demo speakers, taken in turn from each face (a quick smoke run; default: all)")
    _common(p)
    handlers["demo"] = cmd_demo

    for module in STAGE_COMMAND_MODULES:
        importlib.import_module(module).register(sub, handlers, _common)
    return parser, handlers


# Modules that add their stage's subcommands: each has register(subparsers, handlers, add_common).
STAGE_COMMAND_MODULES: tuple[str, ...] = ("a2bs.submit", "a2bs.models.commands", "a2bs.train.commands",
                                          "a2bs.tune.commands", "a2bs.evaluate.commands", "a2bs.infer.commands")
# Commands whose --out is a folder: their process's other output goes to OUT/_logs/<command>-<time>.log.
LOGGED_COMMANDS = ("extract", "build", "train", "finetune", "tune", "evaluate", "infer", "demo")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `a2bs` console script."""
    # Third-party Python logging: into the run log (fd 2 during a command), never on the console.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["submit"] and not {"-h", "--help"} & set(argv[1:2]):
        from a2bs.submit import cmd_submit

        try:
            return cmd_submit(argv[1:])
        except ValueError as exc:
            print(f"a2bs submit: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    parser, handlers = build_parser()
    args, rest = parser.parse_known_args(argv)
    unknown = [r for r in rest if r.startswith("--")]
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)}")
    out_dir = args.out if args.command in LOGGED_COMMANDS else None
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)  # `jobs` has neither
    with console.session(args.command, out_dir, quiet=quiet, verbose=verbose, argv=argv) as session:
        try:
            return handlers[args.command](args, rest)
        except ConfigError as exc:
            session.refused(f"a2bs {args.command}: configuration error: {exc}")
            return EXIT_CONFIG
        except (InputError, ModelFileError, FileNotFoundError, ValueError) as exc:
            # Ours say it in one line; a multi-line one (pyarrow's ArrowInvalid is a ValueError) is unexpected.
            if session.log is None or len(str(exc).strip().splitlines()) <= 1:
                session.error(f"a2bs {args.command}: {exc}")
                return EXIT_FAILED
            return _unexpected(session, args.command, exc)
        except KeyboardInterrupt:
            session.error(f"a2bs {args.command}: interrupted")
            return EXIT_INTERRUPTED
        except Exception as exc:  # a crashed worker, a bug: one line here, the traceback in the log
            if session.log is None:
                raise
            return _unexpected(session, args.command, exc)


def _unexpected(session: console.Session, command: str, exc: BaseException) -> int:
    """One line on the console for an error a2bs did not foresee; its traceback goes to the run's log."""
    session.record(traceback.format_exc())
    session.error(f"a2bs {command}: {console.error_line(exc)} (details in {session.log.uri})")
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
