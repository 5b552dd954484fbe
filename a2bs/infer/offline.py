"""Offline inference: audio (or a video's audio track) -> 100 Hz predictions -> curves at any fps.

One file runs in this process; many files (a folder, a glob, an ``s3://`` prefix) run on Ray Data with
one model per actor. A bad input never stops a batch: it is listed with its reason in the output
folder's ``_failures.json`` and the rest goes on.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from a2bs.config import (
    AudioConfig,
    Config,
    ConfigError,
    ModelConfig,
    config_from_dict,
    config_to_dict,
    save_config,
)
from a2bs.errors import InputError, ModelFileError
from a2bs.extract.audio import MelNormaliser, features_from_samples, load_audio
from a2bs.infer.curves import FORMAT_SUFFIXES, Curves, output_format
from a2bs.infer.postprocess import postprocess_offline
from a2bs.manifests import ModelCard, resolve_front_end
from a2bs.runtime import storage
from a2bs.runtime.batch import CONFIG_NAME, error_reason, map_items, write_run_records


@dataclass
class LoadedModel:
    """A model file's network, its card, and the audio front end it expects (the card's)."""

    net: nn.Module
    model_cfg: ModelConfig
    card: ModelCard
    audio_cfg: AudioConfig
    path: str

    def identity_row(self, name: str | None) -> int | None:
        """The row of identity `name` (None = the learned average; None for a model without identities).

        Raises:
            ConfigError: an unknown name (listing the known ones), or a name for a model without identities.
        """
        from a2bs.models.identity import identity_index

        return identity_index(self.model_cfg.identities, name)


def resolve_model_path(model: str, cfg: Config) -> str:
    """``"default"`` (or empty) -> ``cfg.infer.model_path``; anything else as given."""
    return cfg.infer.model_path if model in ("", "default") else model


def load_model(model: str, cfg: Config, overrides: Mapping[str, Any] | None = None) -> LoadedModel:
    """Load a self-contained model file (local or ``s3://``); ``"default"`` = ``cfg.infer.model_path``.

    The audio front end is the model card's; an ``audio.*`` setting of the user's that contradicts it
    is a ConfigError naming the key (see :func:`a2bs.manifests.resolve_front_end` for `overrides`).
    """
    from a2bs.models.model_file import load_model_file

    path = resolve_model_path(model, cfg)
    try:
        net, card = load_model_file(path)
    except ModelFileError as exc:
        if model in ("", "default") and not storage.exists(path):
            raise ModelFileError(f"{exc}; the default model (infer.model_path) is written by `a2bs demo`, "
                                 "or give a model file") from None
        raise
    audio_cfg = resolve_front_end(card.audio, cfg, overrides)
    if card.model.n_mels != audio_cfg.n_mels:
        raise ModelFileError(f"{path}: model card says {card.model.n_mels} mel bands for the model but "
                             f"{audio_cfg.n_mels} for its front end")
    return LoadedModel(net.eval(), card.model, card, audio_cfg, str(path))


def to_mono_rate(samples: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Mono float32 at `target_rate` from (n,) or (n, channels) samples at `sample_rate`."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if sample_rate != target_rate:
        import librosa

        x = librosa.resample(x, orig_sr=sample_rate, target_sr=target_rate)
    return np.ascontiguousarray(x, dtype=np.float32)


@torch.no_grad()
def forward_long(net: nn.Module, mel: torch.Tensor, chunk_frames: int, identity: int | None = None) -> torch.Tensor:
    """``net(mel)`` for (1, T, n_mels) in pieces of `chunk_frames`, with the same result as one pass.

    Causal models carry their streaming state from piece to piece; convolution-only models read each
    piece with a margin of their receptive field on both sides; anything else runs whole. `identity`:
    the identity row for a model with identities (None = the average).
    """
    from a2bs.infer.streaming import StreamingModel, supports_streaming

    ident = None if identity is None else torch.full((mel.shape[0],), identity, dtype=torch.long)

    def run(x: torch.Tensor) -> torch.Tensor:
        return net(x) if ident is None else net(x, ident)

    n = mel.shape[1]
    if chunk_frames <= 0 or n <= chunk_frames:
        return run(mel)
    if supports_streaming(net):
        stream = StreamingModel(net, batch_size=mel.shape[0], identity=identity)
        return torch.cat([stream.step(mel[:, i : i + chunk_frames]) for i in range(0, n, chunk_frames)], dim=1)
    if hasattr(net, "receptive_field") and not hasattr(net, "layers"):  # convolutions only (no attention)
        past, future = net.receptive_field()
        outs = []
        for a in range(0, n, chunk_frames):
            b = min(n, a + chunk_frames)
            lo, hi = max(0, a - past), min(n, b + future)
            outs.append(run(mel[:, lo:hi])[:, a - lo : b - lo])  # (1, b - a, 59)
        return torch.cat(outs, dim=1)
    return run(mel)


@torch.no_grad()
def predict_100hz(model: LoadedModel, samples: np.ndarray, cfg: Config,
                  rest: np.ndarray | None = None, identity: str | None = None) -> Curves:
    """Post-processed predictions at the model's frame rate (100 Hz) for mono samples at 16 kHz, driving
    the face of `identity` (None = the learned average of a model with identities)."""
    row = model.identity_row(identity)
    feats = features_from_samples(samples, model.audio_cfg)
    norm = MelNormaliser.of(model.card.mel_norm)  # the card's normalisation, from the clip's first frame
    mel = torch.from_numpy(feats.mel_db if norm is None else norm(feats.mel_db))[None]  # (1, T, n_mels)
    raw = forward_long(model.net, mel, cfg.infer.max_chunk_frames, row)[0].cpu().numpy()  # (T, 59)
    values = postprocess_offline(raw, feats.vad, cfg.infer, feats.frame_rate_hz, rest=rest)
    return Curves(values, feats.frame_rate_hz, duration_s=feats.duration_s)


def predict_samples(model: LoadedModel, samples: np.ndarray, cfg: Config, fps: float | None = None,
                    sample_rate: int | None = None, rest: np.ndarray | None = None,
                    identity: str | None = None) -> Curves:
    """Curves at `fps` (default ``cfg.infer.fps``) for audio samples (mono or (n, channels)), driving the
    face of `identity` (None = the average)."""
    rate = sample_rate or model.audio_cfg.sample_rate
    mono = to_mono_rate(samples, rate, model.audio_cfg.sample_rate)
    if mono.size == 0:
        raise ValueError("no audio samples")
    return predict_100hz(model, mono, cfg, rest, identity).resample(cfg.infer.fps if fps is None else fps)


def predict_file(model: LoadedModel, path: str | os.PathLike, cfg: Config, fps: float | None = None,
                 identity: str | None = None) -> Curves:
    """Curves for an audio file or a video file's audio track (local path), face `identity` (None = average).

    Raises:
        InputError: the file is missing, empty, not media, or has no audio track.
    """
    from a2bs.extract.media import probe

    info = probe(path)
    if not info.has_audio:
        raise InputError(path, "no audio track")
    curves = predict_samples(model, load_audio(path, model.audio_cfg.sample_rate), cfg, fps, identity=identity)
    curves.meta["source"] = str(path)
    return curves


def output_name(uri: str, root: str, fmt: str) -> str:
    """Output file name (relative to the output folder) for input `uri` found under `root`."""
    rel = uri[len(root):].lstrip("/\\") if uri.startswith(root.rstrip("/\\")) and uri != root else ""
    rel = rel or PurePosixPath(uri.replace("\\", "/")).name
    stem = str(PurePosixPath(rel.replace("\\", "/")).with_suffix(""))
    return stem + FORMAT_SUFFIXES[fmt]


def infer_one(model: LoadedModel, uri: str, out_uri: str, cfg: Config, fmt: str, fps: float,
              identity: str | None = None) -> dict[str, Any]:
    """Infer one input and write its output; never raises for a bad input (status row instead)."""
    row: dict[str, Any] = {"source": uri, "output": out_uri, "status": "failed", "reason": "",
                           "duration_s": 0.0, "frames": 0, "infer_s": 0.0}
    t0 = time.perf_counter()
    try:
        if not storage.is_remote(uri):
            from a2bs.extract.media import check_readable

            check_readable(uri)
        with tempfile.TemporaryDirectory(prefix="a2bs-infer-") as tmp:
            curves = predict_file(model, storage.local_copy(uri, tmp), cfg, fps, identity)
        stem = PurePosixPath(out_uri).stem
        curves.save(out_uri, fmt, eye_range_rad=eye_range(cfg), session_id=f"session_{stem}_infer")
        row.update(status="ok", duration_s=float(curves.duration_s), frames=len(curves))
    except InputError as exc:
        row["reason"] = exc.reason
    except Exception as exc:  # an unexpected decoder failure must not stop the batch
        row["reason"] = error_reason(exc)
    row["infer_s"] = time.perf_counter() - t0
    return row


def eye_range(cfg: Config) -> float:
    """Eye-angle range for Live Link output (0 = eye angles off)."""
    return cfg.infer.eye_look_range_rad if cfg.infer.eye_angles_from_blendshapes else 0.0


class InferWorker:
    """Loads the model once and infers every input it is given (one per actor on Ray Data)."""

    def __init__(self, model_path: str, cfg_dict: dict, fmt: str, fps: float, identity: str | None = None,
                 loaded: LoadedModel | None = None) -> None:
        self.cfg = config_from_dict(cfg_dict)
        if loaded is None:  # on an actor: one actor per CPU, so intra-op threads would oversubscribe
            torch.set_num_threads(1)
        self.model = loaded or load_model(model_path, self.cfg)
        self.fmt, self.fps, self.identity = fmt, fps, identity

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        return infer_one(self.model, str(item["uri"]), str(item["out"]), self.cfg, self.fmt, self.fps, self.identity)


@dataclass
class InferSummary:
    """What an infer run did."""

    ok: int = 0
    failed: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    outputs: list[str] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)

    def line(self) -> str:
        rtf = self.wall_s / self.audio_s if self.audio_s else 0.0
        return (f"infer: {self.ok} ok, {self.failed} failed; {self.audio_s:.1f} s of audio in {self.wall_s:.1f} s "
                f"(real-time factor {rtf:.3f})")


def _single_local_file(inputs: list[str]) -> bool:
    return len(inputs) == 1 and not storage.is_remote(inputs[0]) and not os.path.isdir(inputs[0]) \
        and not any(ch in inputs[0] for ch in "*?[")


def run_infer(model: str, inputs: list[str], out_dir: str, cfg: Config, fmt: str | None = None,
              fps: float | None = None, use_ray: bool | None = None, progress: bool = True,
              overrides: Mapping[str, Any] | None = None, identity: str | None = None) -> InferSummary:
    """Infer every input into `out_dir` (one output per input); failures go to ``_failures.json``.

    Args:
        model: model file path/URI or ``"default"``.
        inputs: files, folders, globs or ``s3://`` prefixes.
        out_dir: output folder (local or ``s3://``).
        cfg: resolved config.
        fmt: ``livelink-csv``, ``json``, ``npz`` (an .npz archive; ``npy`` is an alias) or ``parquet``
            (default ``cfg.infer.format``).
        fps: output frame rate (default ``cfg.infer.fps``).
        use_ray: None = Ray Data unless the input is one local file.
        progress: show the files done on the console (:mod:`a2bs.runtime.console`).
        overrides: what the user set explicitly (checked against the model card, see :func:`load_model`).
        identity: the face to drive, one of the card's identities (None = their learned average).
    """
    from a2bs.runtime.inputs import list_inputs

    t0 = time.perf_counter()
    try:
        fmt = output_format(fmt or cfg.infer.format)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    fps = float(cfg.infer.fps if fps is None else fps)
    if fps <= 0:
        raise ConfigError(f"fps must be positive, got {fps}")
    loaded = load_model(model, cfg, overrides)  # a bad model file or setting: say so before any work
    loaded.identity_row(identity)  # an unknown identity too
    cfg = replace(cfg, audio=loaded.audio_cfg)  # the saved config and the workers use the card's front end
    model_path = loaded.path
    entries, failures = list_inputs(inputs)
    storage.makedirs(out_dir)
    save_config(cfg, storage.join(out_dir, CONFIG_NAME))
    items = [{"uri": e.uri, "out": storage.join(out_dir, output_name(e.uri, e.root, fmt))} for e in entries]
    if use_ray is None:
        use_ray = not _single_local_file(inputs)
    worker_kwargs = {"model_path": model_path, "cfg_dict": config_to_dict(cfg), "fmt": fmt, "fps": fps,
                     "identity": identity}
    rows = map_items(items, InferWorker, worker_kwargs, use_ray=use_ray, ray_cfg=cfg.ray, n_actors=cfg.infer.actors,
                     progress=progress, label="infer", unit="files",
                     local_worker=InferWorker(**worker_kwargs, loaded=loaded))
    summary = InferSummary(failures=list(failures), failed=len(failures))
    for r in rows:
        if r["status"] == "ok":
            summary.ok += 1
            summary.audio_s += r["duration_s"]
            summary.outputs.append(r["output"])
        else:
            summary.failed += 1
            summary.failures.append({"source": r["source"], "reason": r["reason"]})
    summary.wall_s = time.perf_counter() - t0
    write_run_records(out_dir, summary.failures, {**asdict(summary), "model": model_path, "format": fmt, "fps": fps,
                                                  "identity": identity, "files": rows})
    return summary
