"""Quality on the demo corpus: `a2bs train` (tcn_poc, 1 Ray Train worker, jobs/configs/demo.yaml) on
the training clips, `a2bs evaluate` on the held-out clips, compared with the seed's targets.

Measured (2026-11-24, 2 shared cores, 12 epochs, ~2 min): MAE 0.056, mouth MAE 0.084, jaw r 0.82,
lip r 0.55: the jaw target is met; MAE, mouth MAE and lip r are not, and on this corpus cannot be for an
audio-only model. The demo's two face photos have very different rest shapes (mouthSmile 0.85 vs
0.2, mouthUpperUp 0.65 apart) and every voice speaks with both faces, so nothing in the audio says
which face's rest shape to predict: half the difference of the two faces' medians is a floor of
about 0.045 (MAE) and 0.067 (mouth MAE) that no audio-only model can go below; the test computes it
from the data and checks both that it excludes the seed's mouth target and that the model gets near it.
Lip correlation averages 13 channels, several of which MediaPipe barely reads on these faces
(mouthFunnel, mouthClose: see a2bs/demo/corpus/README.md); it reaches ~0.55.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from a2bs.cli import main
from a2bs.config import load_config
from a2bs.data.pipeline import run_build
from a2bs.schema import TARGET_INDEX
from a2bs.train.data import arrow_to_arrays, shard_info
from a2bs.train.metrics import MOUTH_INDICES, OBSERVED_BLENDSHAPES

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DEMO_YAML = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "demo.yaml"


def val_table(shards: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in shard_info(shards).val_files])


def face_offset_floor(shards: str) -> dict[str, float]:
    """Half the gap between the two faces' median targets on the validation split, averaged over the
    MAE channels and the mouth channels: what an audio-only model must lose to not knowing the face."""
    table = val_table(shards)
    a = arrow_to_arrays(table, 80)
    faces = np.array([s.split("_")[0] for s in table.column("speaker_id").to_pylist()])
    valid = a["mask"] > 0.5
    medians = [np.median(a["targets"][(faces == f)[:, None] & valid], axis=0) for f in sorted(set(faces))]
    assert len(medians) == 2, "the demo corpus has two faces"
    half_gap = np.abs(medians[0] - medians[1]) / 2
    return {"mae": float(half_gap[list(OBSERVED_BLENDSHAPES)].mean()),
            "mouth_mae": float(half_gap[list(MOUTH_INDICES)].mean())}


def test_demo_quality_against_the_seed_targets(demo_features, ray_cluster, tmp_path):
    clips_dir, _ = demo_features
    cfg = load_config(DEMO_YAML)
    assert cfg.sequence.split_by == "clip" and cfg.model.name == "tcn_poc"
    shards, run, report_dir = tmp_path / "shards", tmp_path / "run", tmp_path / "report"
    run_build(str(clips_dir), str(shards), cfg, use_ray=False)
    assert main(["train", str(shards), "--out", str(run), "--config", str(DEMO_YAML), "train.num_workers=1"]) == 0
    assert main(["evaluate", str(run / "model.safetensors"), str(shards), "--out", str(report_dir)]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    m = report["metrics"]
    floor = face_offset_floor(str(shards))
    targets = {r["metric"]: r["passed"] for r in report["targets"]}
    numbers = {k: round(m[k], 4) for k in ("mae", "mouth_mae", "jaw_corr", "lip_corr", "smile_corr", "pose_mae")}
    print(f"\ndemo quality (held-out clips): {numbers}; seed targets met: {targets}; "
          f"audio-only floor: {floor}; jawOpen MAE {report['per_channel_mae']['jawOpen']:.4f}")
    (tmp_path / "quality.json").write_text(json.dumps({"metrics": numbers, "targets": targets, "floor": floor}))

    # Met: the jaw follows the speech.
    assert targets["jaw_corr"] and m["jaw_corr"] > 0.7
    # Not met by design of the corpus: the floor alone exceeds the seed's mouth target ...
    assert floor["mouth_mae"] > 0.04
    # ... and the model gets within a few hundredths of that floor.
    assert m["mae"] < floor["mae"] + 0.02
    assert m["mouth_mae"] < floor["mouth_mae"] + 0.03
    # Lip channels correlate clearly, below the seed's 0.6 (weakly measured channels, see module doc).
    assert m["lip_corr"] > 0.45
    # Dynamics, not just rest shapes: jawOpen is predicted far better than by its median.
    valid = arrow_to_arrays(val_table(str(shards)), 80)
    jaw = valid["targets"][..., TARGET_INDEX["jawOpen"]][valid["mask"] > 0.5]
    assert report["per_channel_mae"]["jawOpen"] < 0.7 * float(np.abs(jaw - np.median(jaw)).mean())
