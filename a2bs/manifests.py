"""Typed, versioned contracts at the stage boundaries: the clips and shards manifests and the model card.

Each stage records what it made and how, and later stages read that instead of re-deriving it::

    CLIPS/_manifest.json     ClipsManifest   a2bs extract: clip id -> source, speaker, duration, rates, frames
    SHARDS/_manifest.json    ShardsManifest  a2bs build: front end, windows, splits, channel statistics
    model.safetensors        ModelCard       a2bs train: in the file's metadata (a2bs.models.model_file);
                                             rebuilds the model and its audio front end alone

Each is a frozen dataclass with one writer and one reader. On disk it is JSON with a ``kind`` and a
``manifest_version``; a file of another kind or version, or one that does not match the schema, is
refused with a one-line :class:`~a2bs.errors.ManifestError` naming the file (never a KeyError later).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

from pydantic import ConfigDict, TypeAdapter, ValidationError

from a2bs.config import (
    AudioConfig,
    Config,
    ConfigError,
    InferConfig,
    ModelConfig,
    SequenceConfig,
    config_to_dict,
)
from a2bs.errors import ManifestError
from a2bs.runtime import storage
from a2bs.schema import MEL_DB_RANGE, SCHEMA_VERSION, TARGET_NAMES
from a2bs.version import VERSION

MANIFEST_NAME = "_manifest.json"
CLIPS_MANIFEST_VERSION = 2  # 2: segment parts (a2bs.extract.store)
SHARDS_MANIFEST_VERSION = 1
MODEL_CARD_VERSION = 1

# Unknown keys are a schema mismatch, not something to ignore (nested config sections included).
_STRICT = ConfigDict(extra="forbid")


@functools.lru_cache(maxsize=None)
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def _encode(obj: Any, kind: str, version: int) -> str:
    body = _adapter(type(obj)).dump_python(obj, mode="json")
    return json.dumps({"kind": kind, "manifest_version": version, **body}, indent=1)


def _decode(cls: type, text: str, where: str, kind: str, version: int, rerun: str) -> Any:
    """`text` (JSON) -> a `cls` instance, or ManifestError naming `where` and what to rerun."""
    label = kind.replace("_", " ")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{where}: {label} is not valid JSON ({exc.__class__.__name__}); {rerun}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: {label} is not a JSON object; {rerun}")
    if data.get("kind", kind) != kind:
        raise ManifestError(f"{where}: a {str(data['kind']).replace('_', ' ')}, not a {label}")
    got = data.get("manifest_version", 0)  # untyped manifests of a2bs < 0.2 had no version
    if got != version:
        fix = "written by a newer a2bs: upgrade a2bs" if isinstance(got, int) and got > version else rerun
        raise ManifestError(f"{where}: {label} version {got}, this a2bs reads {version} ({fix})")
    body = {k: v for k, v in data.items() if k not in ("kind", "manifest_version")}
    try:
        obj = _adapter(cls).validate_python(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "top level"
        raise ManifestError(f"{where}: {label} does not match its schema ({loc}: {err['msg']}); {rerun}") from None
    if getattr(obj, "schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise ManifestError(f"{where}: {label} of data schema {obj.schema_version}, this a2bs reads "
                            f"{SCHEMA_VERSION} ({rerun})")
    return obj


def _load(cls: type, folder: str | os.PathLike, kind: str, version: int, rerun: str) -> Any:
    uri = storage.join(str(folder), MANIFEST_NAME)
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        raise ManifestError(f"{uri}: no {kind} manifest ({rerun})") from None
    return _decode(cls, text, uri, f"{kind}_manifest", version, rerun)


# ---------------------------------------------------------------------------------------------
# Clips: a2bs extract -> a2bs build


@dataclass(frozen=True)
class ClipEntry:
    """One extracted clip (its segment parts: ``CLIPS/clips/<clip_id>/seg-NNNNN.parquet``)."""

    __pydantic_config__ = _STRICT

    source_uri: str  # the input file it was extracted from (in the run that last saw it)
    speaker_id: str
    duration_s: float  # audio duration
    video_fps: float  # the file's frame rate (0 for audio-only inputs)
    face_fps: float  # frame rate of the face track after the FPS limit (0 without video)
    mel_frame_rate: float  # audio feature frames per second
    frames: int  # face-track frames
    face_frames: int  # of which a face was found
    frame_interval: int  # every n-th video frame was tracked (a2bs.extract.video.frame_interval_for)
    segment_s: float  # the segment length the clip was cut with (0 = one segment)
    n_segments: int  # segments in the clip's plan (a2bs.extract.store.plan_segments)
    segments: tuple[int, ...]  # the segment parts present: all of them unless a region of the file failed


@dataclass(frozen=True)
class ClipsManifest:
    """Every clip of a clips folder and the audio front end their features were computed with."""

    __pydantic_config__ = _STRICT

    audio: AudioConfig
    clips: dict[str, ClipEntry]  # clip id -> entry
    schema_version: int = SCHEMA_VERSION  # of the targets in the segment parts (a2bs.schema.segment_schema)

    def write(self, clips_dir: str | os.PathLike) -> None:
        """Write ``CLIPS/_manifest.json`` atomically."""
        ordered = dataclasses.replace(self, clips=dict(sorted(self.clips.items())))
        storage.atomic_write_text(storage.join(str(clips_dir), MANIFEST_NAME),
                                  _encode(ordered, "clips_manifest", CLIPS_MANIFEST_VERSION))

    @classmethod
    def load(cls, clips_dir: str | os.PathLike) -> ClipsManifest:
        """Read ``CLIPS/_manifest.json``; ManifestError if missing, of another version or schema."""
        return _load(cls, clips_dir, "clips", CLIPS_MANIFEST_VERSION, "rerun a2bs extract")


# ---------------------------------------------------------------------------------------------
# Shards: a2bs build -> a2bs train / tune / evaluate


@dataclass(frozen=True)
class ChannelStats:
    """One target channel over the valid (face) frames of a split; values outside the range were clipped."""

    __pydantic_config__ = _STRICT

    mean: float
    std: float
    clipped: int


@dataclass(frozen=True)
class ShardFile:
    """One shard, relative to the shards folder (e.g. ``train/part-00000.parquet``)."""

    __pydantic_config__ = _STRICT

    name: str
    rows: int
    clips: int


@dataclass(frozen=True)
class SplitStats:
    """One split of a shards folder."""

    __pydantic_config__ = _STRICT

    speakers: tuple[str, ...]
    clips: tuple[str, ...]  # clip ids
    hours: float  # audio of its clips
    rows: int  # windows
    shards: tuple[ShardFile, ...]
    valid_frames: float  # window frames with a face: the weight of `channels`
    channels: dict[str, ChannelStats]  # per target channel, in a2bs.schema.TARGET_NAMES order
    mel_clipped: int  # mel values clipped to a2bs.schema.MEL_DB_RANGE
    # The faces of its clips (sequence.identity_from), sorted; () = none (and shards built before identities).
    identities: tuple[str, ...] = ()

    def channel_means(self) -> list[float]:
        """(59,) channel means in TARGET_NAMES order."""
        return [self.channels[name].mean for name in TARGET_NAMES]


@dataclass(frozen=True)
class MelNorm:
    """The causal per-clip log-mel mean normalisation the features went through (``mel_norm`` config
    section; a2bs.extract.audio.MelNormaliser)."""

    __pydantic_config__ = _STRICT

    prior_frames: float  # weight of prior_db in the running mean, in frames
    prior_db: tuple[float, ...]  # (n_mels,) the training split's mean log-mel (dB, clipped to MEL_DB_RANGE)
    # Frames whose mean log-mel is below this do not enter the running mean (nor prior_db). The default,
    # the bottom of MEL_DB_RANGE, counts every frame: a card or manifest written before the field.
    speech_floor_db: float = MEL_DB_RANGE[0]


@dataclass(frozen=True)
class FineTuning:
    """One `a2bs finetune` of a model (a2bs.train.finetune): the face it added and what it changed."""

    __pydantic_config__ = _STRICT

    identity: str  # the identity added
    train: str  # finetune.train: "identity" (only its rows learned), "head" or "all" (every face changed)
    epoch: int  # 1-based epoch kept
    epochs: int
    windows: int  # training windows of the new footage


@dataclass(frozen=True)
class ShardsManifest:
    """What a shards folder holds and how it was built (written last by ``a2bs build``)."""

    __pydantic_config__ = _STRICT

    fingerprint: str  # digest of the clip ids, the front end, the sequence settings and the schema
    frame_rate_hz: float  # audio frames per second (start_s * frame_rate_hz = first frame index)
    window_frames: int
    step_frames: int
    audio: AudioConfig  # the front end of the clips' features
    sequence: SequenceConfig
    # split name -> its statistics: train and val always, test and known when the build held them out
    # (a2bs.build.shards.SPLITS); a folder of an a2bs before test splits has train and val only.
    splits: dict[str, SplitStats]
    schema_version: int = SCHEMA_VERSION  # of the shard rows (a2bs.schema.sequence_schema)
    mel_norm: MelNorm | None = None  # the shards' audio is normalised so (None = raw log-mel)

    @property
    def n_mels(self) -> int:
        return self.audio.n_mels

    @property
    def overlap_frames(self) -> int:
        """Frames shared by consecutive windows of a clip."""
        return self.window_frames - self.step_frames

    @property
    def identities(self) -> tuple[str, ...]:
        """Every face of the folder's clips, sorted (() = built without identities)."""
        return tuple(sorted({name for split in self.splits.values() for name in split.identities}))

    @property
    def rows(self) -> dict[str, int]:
        return {name: split.rows for name, split in self.splits.items()}

    def files(self, shards_dir: str | os.PathLike, split: str) -> list[str]:
        """The non-empty shard files of `split` (none for a split it does not have)."""
        stats = self.splits.get(split)
        return [storage.join(str(shards_dir), s.name) for s in (stats.shards if stats else ()) if s.rows]

    def write(self, shards_dir: str | os.PathLike) -> None:
        """Write ``SHARDS/_manifest.json`` atomically."""
        storage.atomic_write_text(storage.join(str(shards_dir), MANIFEST_NAME),
                                  _encode(self, "shards_manifest", SHARDS_MANIFEST_VERSION))

    @classmethod
    def load(cls, shards_dir: str | os.PathLike) -> ShardsManifest:
        """Read ``SHARDS/_manifest.json``; ManifestError if missing, of another version or schema."""
        return _load(cls, shards_dir, "shards", SHARDS_MANIFEST_VERSION, "rerun a2bs build")


# ---------------------------------------------------------------------------------------------
# The model card: a2bs train -> every consumer of a model file


@dataclass(frozen=True)
class SplitSummary:
    """The training data of one split, as the model card records it."""

    __pydantic_config__ = _STRICT

    speakers: tuple[str, ...]
    clips: int
    hours: float
    rows: int


@dataclass(frozen=True)
class DataSummary:
    """The shards a model was trained on."""

    __pydantic_config__ = _STRICT

    fingerprint: str  # the shards manifest's corpus fingerprint
    frame_rate_hz: float
    window_frames: int
    step_frames: int
    splits: dict[str, SplitSummary]

    @classmethod
    def from_shards(cls, shards: ShardsManifest) -> DataSummary:
        return cls(shards.fingerprint, shards.frame_rate_hz, shards.window_frames, shards.step_frames,
                   {name: SplitSummary(s.speakers, len(s.clips), s.hours, s.rows) for name, s in shards.splits.items()})


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to use a model file without any other file or config.

    Attributes:
        model: the architecture (rebuilds the network).
        audio: the complete audio front end the training features were computed with.
        a2bs_version: the a2bs that wrote the card.
        schema_version / target_names: the output layout (59 channels in this order).
        mel_db_range: the range log-mel values were clipped to in training (dB).
        output_fps: the default output frame rate of the run's config (``infer.fps`` sets it at inference).
        epoch: the epoch of these weights (-1 = untrained).
        metrics: split -> metric -> value, for every split the weights were scored on.
        data: the training shards (None = untrained).
        training_config: the resolved config of the run ({} = untrained).
        identities: the faces the model is conditioned on, in index order (``model.identities``; () = none,
            and cards written before identities existed read as ()).
        finetuned: every `a2bs finetune` since training, oldest first (training_config is the
            training run's config, with the last fine-tuning's ``finetune`` section).
    """

    __pydantic_config__ = _STRICT

    model: ModelConfig
    audio: AudioConfig
    a2bs_version: str
    schema_version: int
    target_names: tuple[str, ...]
    mel_db_range: tuple[float, float]
    output_fps: float
    epoch: int
    metrics: dict[str, dict[str, float]]
    data: DataSummary | None
    training_config: dict[str, Any]
    identities: tuple[str, ...] = ()
    # The log-mel normalisation every front end applies before the model (None = none: cards before it).
    mel_norm: MelNorm | None = None
    finetuned: tuple[FineTuning, ...] = ()

    def __post_init__(self) -> None:
        if tuple(self.identities) != tuple(self.model.identities):
            raise ValueError(f"model card: identities {list(self.identities)} differ from the model's "
                             f"{list(self.model.identities)}")

    @classmethod
    def for_untrained(cls, model_cfg: ModelConfig, audio_cfg: AudioConfig | None = None,
                      output_fps: float | None = None) -> ModelCard:
        """The card of a model that was not trained by a2bs (tests, benchmarks, random weights)."""
        return cls(model_cfg, audio_cfg or AudioConfig(), VERSION, SCHEMA_VERSION, TARGET_NAMES, MEL_DB_RANGE,
                   InferConfig().fps if output_fps is None else output_fps, -1, {}, None, {}, model_cfg.identities)

    @classmethod
    def for_run(cls, cfg: Config, shards: ShardsManifest) -> ModelCard:
        """The card of a training run on `shards` before its first epoch (the loop fills in the rest)."""
        return cls(cfg.model, shards.audio, VERSION, SCHEMA_VERSION, TARGET_NAMES, MEL_DB_RANGE, cfg.infer.fps,
                   -1, {}, DataSummary.from_shards(shards), config_to_dict(cfg), cfg.model.identities,
                   shards.mel_norm)

    def to_dict(self) -> dict[str, Any]:
        """The card as plain JSON-able data (what :meth:`to_json` writes, without the envelope)."""
        return _adapter(ModelCard).dump_python(self, mode="json")

    def to_json(self) -> str:
        return _encode(self, "model_card", MODEL_CARD_VERSION)

    @classmethod
    def from_json(cls, text: str, where: str) -> ModelCard:
        """Parse :meth:`to_json` output; ManifestError naming `where` if it is not a card of this version."""
        return _decode(cls, text, where, "model_card", MODEL_CARD_VERSION, "retrain with this a2bs")


def resolve_front_end(recorded: AudioConfig, cfg: Config, overrides: Mapping[str, Any] | None = None,
                      source: str = "the model") -> AudioConfig:
    """The audio front end to use with data or a model that recorded one: always `recorded`.

    A user setting that contradicts it stops with a one-line ConfigError naming the key, e.g.
    ``audio.hop_length=320 contradicts the model (160)``; settings equal to it are fine. The keys the
    user set are the ``audio`` keys of `overrides` (a config file plus key=value items, see
    :func:`a2bs.config.user_overrides`) when given, else those where ``cfg.audio`` differs from a2bs's defaults.
    """
    if overrides is not None:
        keys = list(overrides.get("audio") or {})
    else:
        default = AudioConfig()
        keys = [f.name for f in fields(AudioConfig) if getattr(cfg.audio, f.name) != getattr(default, f.name)]
    for key in keys:
        mine, theirs = getattr(cfg.audio, key), getattr(recorded, key)
        if mine != theirs:
            raise ConfigError(f"audio.{key}={mine} contradicts {source} ({theirs})")
    return recorded


def front_end_differences(a: AudioConfig, b: AudioConfig) -> list[str]:
    """``key a vs b`` for every audio setting where `a` and `b` differ."""
    return [f"{f.name} {getattr(a, f.name)} vs {getattr(b, f.name)}" for f in fields(AudioConfig)
            if getattr(a, f.name) != getattr(b, f.name)]
