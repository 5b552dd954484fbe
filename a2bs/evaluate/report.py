"""`a2bs evaluate`: a model file on a shards folder -> metrics vs the seed's targets, per speaker, plots.

Every held-out split of the folder is scored (val, test, known: :data:`a2bs.build.shards.SPLITS`), each
overall and per speaker; the headline split (``--split``, by default test when the folder has one,
else val) also gets the per-channel MAE, the plots and the top-level keys of report.json. Only val
ever chose anything in training (the epoch); test and known are numbers no choice has seen.

A model with identities (faces, ``model.identities``) is scored as a caller who does not say whose
face it is would use it, with the average identity (the headline numbers); when the shards know each
clip's face (``sequence.identity_from``) and the model knows that face, the split is also scored with
it: ``"with_identity"`` of each split in report.json, over the clips of faces the model knows.

Frames are scored exactly as in training validation (whole clips, each frame once from the window
where it sits most central, see :func:`a2bs.train.data.scored_mask`), so the numbers of
``a2bs evaluate RUN_DIR/model.safetensors`` match the run's best validation epoch.

Outputs in REPORT_DIR (local or s3://)::

    report.json           headline split: metrics, seed-target table, per-channel MAE; "splits": every
                          scored split's metrics, targets and per-speaker metrics; model card, plot names
    targets.md            the pass/fail table of every scored split, the headline first
    curves.png            predicted vs true jawOpen, mouthClose, mouthFunnel, mouthSmileLeft, eyeBlinkLeft
                          and head pose over one clip of the headline split, stitched from its windows in time order
    per_channel_mae.png   MAE of every observed blendshape and pose value
"""

from __future__ import annotations

import io as _pyio
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from a2bs.build.shards import REPORTED_SPLITS, SELECTION_SPLIT, SPLITS
from a2bs.config import Config, ConfigError, TrainConfig
from a2bs.manifests import ShardsManifest, SplitSummary, front_end_differences, resolve_front_end
from a2bs.models.model_file import load_model_file
from a2bs.runtime import storage
from a2bs.schema import MOUTH_CHANNELS, N_BLENDSHAPES, TARGET_INDEX, TARGET_NAMES
from a2bs.train.data import (
    IDENTITY_COLUMN,
    VAL_COLUMNS,
    LocalBatches,
    arrow_to_arrays,
    scored_mask,
)
from a2bs.train.metrics import (
    JAW_CORR,
    LIP_CORR,
    MAE,
    MOUTH_MAE,
    POSE_MAE,
    SMILE_CORR,
    format_metrics,
    format_target_table,
    target_table,
)
from a2bs.train.validation import ScoredPass, score_batches

PLOT_CHANNELS: tuple[str, ...] = ("jawOpen", "mouthClose", "mouthFunnel", "mouthSmileLeft", "eyeBlinkLeft")
POSE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("head translation (m)", ("headX", "headY", "headZ")),
    ("head rotation (quaternion xyz)", ("headQx", "headQy", "headQz")),
)
REPORT_NAME = "report.json"

log = logging.getLogger("a2bs.evaluate")


HELD_OUT_SPLITS: tuple[str, ...] = (SELECTION_SPLIT, *REPORTED_SPLITS)
LINE_METRICS = (MAE, MOUTH_MAE, JAW_CORR, LIP_CORR, SMILE_CORR, POSE_MAE)


def split_label(split: str, split_by: str) -> str:
    """What a split's numbers stand for, e.g. ``unseen voices`` for the test split of a by-speaker build."""
    unseen = "unseen voices" if split_by == "speaker" else "unseen clips"
    return {"train": "training clips", "val": f"{unseen}, chose the epoch", "test": f"{unseen}, never chosen on",
            "known": "known voices, unseen clips, never chosen on"}.get(split, split)


@dataclass
class EvalReport:
    """What an evaluation produced: the headline `split` in full, and every scored split in `splits`."""

    report_dir: str
    metrics: dict[str, Any]
    targets: list[dict[str, Any]]
    per_channel_mae: dict[str, float]
    plots: list[str] = field(default_factory=list)
    plot_clip: str = ""
    wall_s: float = 0.0
    split: str = "test"
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)

    def line(self) -> str:
        """One-line summary: the headline split, then the other scored splits."""
        parts = []
        for name in [self.split, *(s for s in self.splits if s != self.split)]:
            entry = self.splits[name]
            m, passed = entry["metrics"], sum(r["passed"] for r in entry["targets"])
            shown = format_metrics(m, LINE_METRICS if name == self.split else (JAW_CORR, LIP_CORR, MOUTH_MAE))
            parts.append(f"{name} ({entry['label']}) {len(entry['speakers'])} speaker(s), {m['n_clips']} clips, "
                         f"{m['n_frames']} frames: {shown} ({passed}/{len(entry['targets'])} seed targets)")
            if "with_identity" in entry:
                known = entry["with_identity"]
                parts[-1] += (f", with their face ({', '.join(known['identities'])}): "
                              f"{format_metrics(known['metrics'], (JAW_CORR, LIP_CORR, MOUTH_MAE))}")
        return f"evaluate: {'; '.join(parts)} -> {self.report_dir} in {self.wall_s:.1f} s"


def _read(uri: str, clip_id: str | None = None) -> Any:
    fs, path = storage.filesystem(uri)
    filters = [("clip_id", "=", clip_id)] if clip_id is not None else None
    return pq.read_table(path, filesystem=fs, columns=list(VAL_COLUMNS), filters=filters)


def _predict(model: nn.Module, audio: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(audio), batch_size):
            x = torch.from_numpy(np.require(audio[i : i + batch_size], requirements=["C", "W"])).to(device)
            out.append(model(x).float().cpu().numpy())  # (b, T, 59)
    return np.concatenate(out) if out else np.zeros((0, audio.shape[1], len(TARGET_NAMES)), np.float32)


def split_files(shards_dir: str, split: str, manifest: ShardsManifest | None = None) -> list[str]:
    """The shard files of `split`; ValueError naming the folder and its splits if it has none."""
    manifest = manifest or ShardsManifest.load(shards_dir)
    files = manifest.files(shards_dir, split)
    if not files:
        have = ", ".join(s for s in SPLITS if manifest.files(shards_dir, s)) or "none"
        why = (" (built with sequence.test_fraction=0, too few speakers, or by an a2bs before test splits: "
               "rerun `a2bs build`)" if split == "test" else "")
        raise ValueError(f"{shards_dir}: no {split!r} split (it has: {have}){why}")
    return files


def clip_speakers(files: list[str]) -> dict[str, str]:
    """Clip id -> speaker id of every row of `files` (two small columns read)."""
    out: dict[str, str] = {}
    for uri in files:
        fs, path = storage.filesystem(uri)
        t = pq.read_table(path, filesystem=fs, columns=["clip_id", "speaker_id"])
        out.update(zip(t.column("clip_id").to_pylist(), t.column("speaker_id").to_pylist()))
    return out


def clip_identities(files: list[str]) -> dict[str, str]:
    """Clip id -> face (identity) of every row of `files` ("" = none; shards without the column: {})."""
    out: dict[str, str] = {}
    for uri in files:
        fs, path = storage.filesystem(uri)
        if IDENTITY_COLUMN not in pq.read_schema(path, filesystem=fs).names:
            continue
        t = pq.read_table(path, filesystem=fs, columns=["clip_id", IDENTITY_COLUMN])
        out.update(zip(t.column("clip_id").to_pylist(), t.column(IDENTITY_COLUMN).to_pylist()))
    return out


def score_split(model: nn.Module, shards_dir: str, split: str, batch_size: int = TrainConfig.val_batch_size,
                device: str | torch.device = "cpu", identities: tuple[str, ...] = (),
                exclude: Collection[str] = ()) -> ScoredPass:
    """Whole-clip metrics of `model` on a split, overall and per speaker (``groups``).

    With `identities` (the model's) each clip is scored with its face, and only the clips of faces
    in `identities`; without, every clip with the average identity (or none). Clips in `exclude`
    are left out (e.g. those another model trained on).
    """
    manifest = ShardsManifest.load(shards_dir)  # any split will do: a folder of test clips alone is fine
    files = split_files(shards_dir, split, manifest)
    device = torch.device(device)
    batches = LocalBatches(files, manifest.n_mels, batch_size, columns=VAL_COLUMNS, identities=identities).arrays()
    keep: Any = None
    if identities or exclude:
        faces = clip_identities(files) if identities else {}

        def keep(clip_id: str) -> bool:
            return clip_id not in exclude and (not identities or faces.get(clip_id, "") in identities)
    return score_batches(model.to(device), batches, manifest.frame_rate_hz, manifest.overlap_frames, device,
                         keep_clip=keep, group_of=clip_speakers(files))


def stitch_clip(model: nn.Module, shards_dir: str, clip_id: str, split: str = "val",
                batch_size: int = TrainConfig.val_batch_size,
                device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """One clip's predictions and targets in time order: ``time_s`` (F,), ``pred``/``target`` (F, 59),
    NaN where no window scores the frame."""
    manifest = ShardsManifest.load(shards_dir)  # any split will do: a folder of test clips alone is fine
    files = split_files(shards_dir, split, manifest)
    device = torch.device(device)
    model = model.to(device).eval()
    parts = [arrow_to_arrays(t, manifest.n_mels) for t in (_read(u, clip_id) for u in files) if t.num_rows]
    if not parts:
        raise ValueError(f"clip {clip_id!r} is not in the {split} split of {shards_dir}")
    a = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(a["start_s"], kind="stable")
    a = {k: v[order] for k, v in a.items()}
    pred = _predict(model, a["audio"], batch_size, device)
    scored = scored_mask(a["mask"], manifest.overlap_frames) > 0.5
    starts = np.rint(a["start_s"] * manifest.frame_rate_hz).astype(np.int64)
    first = int(starts.min())
    n = int(starts.max()) - first + a["audio"].shape[1]
    out_p = np.full((n, len(TARGET_NAMES)), np.nan)
    out_t = np.full((n, len(TARGET_NAMES)), np.nan)
    for i, s in enumerate(starts - first):
        idx = s + np.flatnonzero(scored[i])
        fresh = idx[np.isnan(out_p[idx, 0])]  # keep the first window that scores a frame
        sel = fresh - s
        out_p[fresh], out_t[fresh] = pred[i, sel], a["targets"][i, sel]
    time_s = (first + np.arange(n)) / manifest.frame_rate_hz
    return {"time_s": time_s, "pred": out_p, "target": out_t}


def _savefig(fig: Any, uri: str) -> None:
    buf = _pyio.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    storage.atomic_write_bytes(uri, buf.getvalue())


def plot_curves(curves: dict[str, np.ndarray], clip_id: str, uri: str, split: str = "test") -> None:
    """Predicted vs true curves of the plot channels and head pose over one clip -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(PLOT_CHANNELS) + len(POSE_GROUPS)
    fig, axes = plt.subplots(rows, 1, figsize=(11, 1.7 * rows), sharex=True)
    t = curves["time_s"]
    for ax, name in zip(axes, PLOT_CHANNELS):
        i = TARGET_INDEX[name]
        ax.plot(t, curves["target"][:, i], color="black", lw=1.2, label="true")
        ax.plot(t, curves["pred"][:, i], color="tab:red", lw=1.0, ls="--", label="predicted")
        ax.set_ylabel(name, fontsize=8)
        ax.set_ylim(-0.02, max(0.1, float(np.nanmax(np.r_[curves["target"][:, i], curves["pred"][:, i], 0.1]))) * 1.1)
    for ax, (title, names) in zip(axes[len(PLOT_CHANNELS):], POSE_GROUPS):
        for name, color in zip(names, ("tab:blue", "tab:green", "tab:orange")):
            i = TARGET_INDEX[name]
            ax.plot(t, curves["target"][:, i], color=color, lw=1.2, label=f"{name} true")
            ax.plot(t, curves["pred"][:, i], color=color, lw=1.0, ls="--", label=f"{name} predicted")
        ax.set_ylabel(title, fontsize=8)
        ax.legend(fontsize=6, ncol=3, loc="upper right")
    axes[0].legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(f"{split} clip {clip_id}: predicted (dashed) vs true")
    fig.tight_layout()
    _savefig(fig, uri)
    plt.close(fig)


def plot_per_channel(per_channel_mae: dict[str, float], uri: str) -> None:
    """Bar chart of per-channel MAE (blendshapes and pose) -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_channel_mae)
    values = [per_channel_mae[n] for n in names]
    colors = ["tab:red" if n in MOUTH_CHANNELS else "tab:gray" if TARGET_INDEX[n] < N_BLENDSHAPES
              else "tab:blue" for n in names]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    ax.bar(range(len(names)), values, color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("MAE")
    ax.set_title("per-channel MAE (red: jaw/mouth, gray: other blendshapes, blue: head pose)")
    fig.tight_layout()
    _savefig(fig, uri)
    plt.close(fig)


_NO_SPLIT = SplitSummary((), 0, 0.0, 0)


def _split_entry(scored: ScoredPass, label: str) -> dict[str, Any]:
    """One split of report.json: metrics, seed targets, per-channel MAE, per-speaker metrics."""
    metrics = dict(scored.metrics)
    per_channel = metrics.pop("per_channel_mae")
    per_speaker = {spk: {k: v for k, v in m.items() if k != "per_channel_mae"} for spk, m in scored.groups.items()}
    targets = target_table(metrics)
    return {"label": label, "metrics": metrics, "targets": targets, "all_targets_met": all(r["passed"] for r in targets),
            "per_channel_mae": per_channel, "speakers": sorted(per_speaker), "per_speaker": per_speaker}


def evaluate(model_path: str, shards_dir: str, report_dir: str, split: str | None = None, clip_id: str | None = None,
             batch_size: int = TrainConfig.val_batch_size, device: str = "cpu", cfg: Config | None = None,
             overrides: Mapping[str, Any] | None = None) -> EvalReport:
    """Evaluate a model file on every held-out split of a shards folder and write REPORT_DIR.

    Writes report.json, targets.md and the PNGs. The shards must have the model card's audio front
    end, and so must the user's ``audio.*`` settings (`cfg` and `overrides`, see
    :func:`a2bs.manifests.resolve_front_end`), else ConfigError before any work.

    Args:
        model_path: a2bs model file (e.g. RUN_DIR/model.safetensors), local or s3://.
        shards_dir: shards folder (``a2bs build`` output).
        report_dir: output folder, local or s3://.
        split: the headline split ("test", "val", "known" or "train"); None = test when the folder
            has one, else val. Every held-out split present (val, test, known) is scored as well.
        clip_id: clip for the curve plot (default: the headline split's clip with the most scored frames).
        batch_size: windows per forward pass (``train.val_batch_size``).
        device: torch device for inference.

    Raises:
        ValueError: an unknown split, or one the folder does not have.
    """
    t0 = time.perf_counter()
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    model, card = load_model_file(model_path)
    if cfg is not None:
        resolve_front_end(card.audio, cfg, overrides)
    manifest = ShardsManifest.load(shards_dir)
    differ = front_end_differences(card.audio, manifest.audio)
    if differ:
        raise ConfigError(f"{shards_dir}: built with another audio front end than the model {model_path} "
                          f"(model vs shards: audio.{'; audio.'.join(differ)})")
    present = [s for s in HELD_OUT_SPLITS if manifest.files(shards_dir, s)]
    if split is None:
        split = "test" if "test" in present else SELECTION_SPLIT
    split_files(shards_dir, split, manifest)  # a clear error before any scoring
    splits: dict[str, dict[str, Any]] = {}
    frames: dict[str, int] = {}
    for name in [split, *(s for s in present if s != split)]:
        scored = score_split(model, shards_dir, name, batch_size, device)
        if name == split:
            if not scored.clip_frames or not scored.metrics["n_frames"]:
                raise ValueError(f"{shards_dir}: no scored frames in the {split} split")
            frames = scored.clip_frames
        splits[name] = _split_entry(scored, split_label(name, manifest.sequence.split_by))
        faces = sorted(set(manifest.splits[name].identities) & set(card.identities))
        if faces:  # the same clips' known faces given: how much knowing the rig helps
            with_face = _split_entry(score_split(model, shards_dir, name, batch_size, device, card.identities), "")
            splits[name]["with_identity"] = {"identities": faces, **{k: with_face[k] for k in (
                "metrics", "targets", "all_targets_met", "per_speaker")}}
        if name in ("val", "test") and card.data is not None:
            # Shards split otherwise than the model's: an "unseen" voice it was trained on is no such thing.
            # Its own shards (same fingerprint) hold no such voice, even split by clip (voices in every split).
            own = card.data.fingerprint == manifest.fingerprint
            seen = [] if own else sorted(set(splits[name]["speakers"])
                                         & set(card.data.splits.get("train", _NO_SPLIT).speakers))
            splits[name]["trained_on"] = seen
            if seen:
                log.warning(f"evaluate: the model was trained on {name} speaker(s) {', '.join(seen)} of {shards_dir}: "
                            "these shards are not split as its training shards were")
    head = splits[split]
    plot_clip = clip_id or max(sorted(frames), key=lambda c: frames[c])
    storage.makedirs(report_dir)
    curves_uri, bars_uri = storage.join(report_dir, "curves.png"), storage.join(report_dir, "per_channel_mae.png")
    plot_curves(stitch_clip(model, shards_dir, plot_clip, split, batch_size, device), plot_clip, curves_uri, split)
    plot_per_channel(head["per_channel_mae"], bars_uri)
    storage.atomic_write_text(storage.join(report_dir, "targets.md"), _targets_md(splits, split))
    report = EvalReport(report_dir, head["metrics"], head["targets"], head["per_channel_mae"],
                        ["curves.png", "per_channel_mae.png"], plot_clip, split=split, splits=splits)
    report.wall_s = time.perf_counter() - t0
    payload = {
        "model_path": str(model_path), "shards_dir": str(shards_dir), "split": split,
        "chosen_on": SELECTION_SPLIT, "split_by": manifest.sequence.split_by,
        "metrics": head["metrics"], "targets": head["targets"], "all_targets_met": head["all_targets_met"],
        "per_channel_mae": head["per_channel_mae"], "splits": splits, "plots": report.plots, "plot_clip": plot_clip,
        "model_card": card.to_dict(), "wall_s": report.wall_s,
    }
    storage.atomic_write_text(storage.join(report_dir, REPORT_NAME), json.dumps(payload, indent=1, default=_json_default))
    return report


def _targets_md(splits: dict[str, dict[str, Any]], headline: str) -> str:
    """targets.md: the pass/fail table of every scored split, the headline first."""
    out = []
    for name in [headline, *(s for s in splits if s != headline)]:
        entry = splits[name]
        out.append(f"## {name}: {entry['label']} ({', '.join(entry['speakers'])})\n\n"
                   f"{format_target_table(entry['metrics'])}\n")
    return "\n".join(out)


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return float(x) if isinstance(x, float) and math.isnan(x) else str(x)
