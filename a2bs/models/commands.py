"""`a2bs info MODEL`: print a model file's card (human-readable, or ``--json``)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Callable

from a2bs.config import ConfigError
from a2bs.manifests import ModelCard
from a2bs.schema import MEL_DB_RANGE

SHOWN_SPEAKERS = 8  # per split; --json lists them all


def _numbers(values: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in values.items())


def format_card(card: ModelCard, path: str, parameters: int) -> str:
    """The card as a few lines of text (everything but the training config, which ``--json`` shows)."""
    m, a = card.model, card.audio
    trained = f"epoch {card.epoch}" if card.epoch >= 0 else "untrained"
    norm = ""
    if card.mel_norm:
        n = card.mel_norm
        counted = f", frames from {n.speech_floor_db:g} dB" if n.speech_floor_db > MEL_DB_RANGE[0] else ""
        norm = f"; running-mean normalised per clip (prior {n.prior_frames:g} frames{counted})"
    lines = [
        f"{path}: a2bs model ({trained}), written by a2bs {card.a2bs_version}",
        f"  model: {m.name}, {parameters:,} parameters; channels {m.channels}, kernel {m.kernel_size}, "
        f"dilations {list(m.dilations)}, {'causal' if m.causal else 'non-causal'}"
        + (", separable" if m.separable else "") + f", dropout {m.dropout:g}",
        f"  audio front end: {a.sample_rate} Hz, n_fft {a.n_fft}, window {a.win_length}, hop {a.hop_length} "
        f"({a.sample_rate / a.hop_length:g} frames/s), {a.n_mels} mel bands {a.fmin_hz:g}-{a.fmax_hz:g} Hz, "
        f"dB ref {a.db_ref:g} floor {a.db_amin:g}, mel clipped to [{card.mel_db_range[0]:g}, "
        f"{card.mel_db_range[1]:g}] dB in training{norm}",
        f"  outputs: {len(card.target_names)} channels (schema {card.schema_version}: {card.target_names[0]} .. "
        f"{card.target_names[-1]}), {card.output_fps:g} fps by default",
    ]
    if card.identities:
        lines.append(f"  identities: {len(card.identities)} ({', '.join(card.identities)}; --identity NAME picks one, "
                     "none = their learned average)")
    if card.data is not None:
        d = card.data
        lines.append(f"  training data: corpus {d.fingerprint[:16]}, windows of {d.window_frames} frames, "
                     f"step {d.step_frames}")
        for name, s in d.splits.items():
            names = ", ".join(s.speakers[:SHOWN_SPEAKERS]) + (", ..." if len(s.speakers) > SHOWN_SPEAKERS else "")
            lines.append(f"    {name}: {len(s.speakers)} speakers, {s.clips} clips, {s.hours * 60:.1f} min, "
                         f"{s.rows} windows ({names})")
    for ft in card.finetuned:
        changed = ("its rows only: the other faces' outputs are the base's" if ft.train == "identity"
                   else "every face's outputs changed")
        lines.append(f"  fine-tuned: identity {ft.identity!r} added (finetune.train={ft.train}: {changed}), "
                     f"{ft.windows} windows, epoch {ft.epoch} of {ft.epochs} kept")
    for split, values in card.metrics.items():
        shown = {k: v for k, v in values.items() if not math.isnan(v)}
        lines.append(f"  {split} metrics: {_numbers(shown)}")
    if card.training_config:
        lines.append(f"  training config: sections {', '.join(card.training_config)} (--json shows them)")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace, rest: list[str]) -> int:
    """``a2bs info MODEL [--json]``."""
    from a2bs.models.model_file import read_header, read_model_card

    if rest:
        raise ConfigError(f"info: unexpected arguments {' '.join(rest)}")
    card = read_model_card(args.model)
    if args.json:
        print(json.dumps(card.to_dict(), indent=1))
        return 0
    tensors = [v for k, v in read_header(args.model).items() if k != "__metadata__"]
    print(format_card(card, args.model, sum(math.prod(t["shape"]) for t in tensors)))
    return 0


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable], add_common: Callable) -> None:
    """Add ``info`` to the `a2bs` parser."""
    p = sub.add_parser("info", help="print a model file's card: front end, training data, metrics, config")
    p.add_argument("model", help="model file (.safetensors, local or s3://)")
    p.add_argument("--json", action="store_true", help="print the whole card as JSON")
    add_common(p)
    handlers["info"] = cmd_info
