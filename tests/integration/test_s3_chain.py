"""The whole chain with every path on s3:// against a real S3 API (moto server on 127.0.0.1)."""

from __future__ import annotations

import json

import boto3
import pytest
from support import demo_clips

from a2bs import cli
from a2bs.manifests import ShardsManifest
from a2bs.models.model_file import read_model_card
from a2bs.runtime import storage

pytestmark = pytest.mark.ray


def test_extract_build_train_evaluate_on_s3(s3_server: str, ray_cluster, capsys) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="a2bs-chain")
    clips = [c for spk in ("astronaut_slt", "hopper_awb") for c in [x for x in demo_clips() if x.parent.name == spk][:2]]
    assert len({c.parent.name for c in clips}) == 2  # two speakers: one trains, one is held out
    for clip in clips:
        s3.upload_file(str(clip), "a2bs-chain", f"footage/{clip.parent.name}/{clip.name}")
    root = "s3://a2bs-chain"
    common = ["--quiet"]
    assert cli.main(["extract", f"{root}/footage", "--out", f"{root}/clips", "ray.extract_actors=2", *common]) == 0
    assert cli.main(["build", f"{root}/clips", "--out", f"{root}/shards", *common]) == 0
    assert cli.main(["train", f"{root}/shards", "--out", f"{root}/run", "train.epochs=1", "train.batch_size=32",
                     "model.channels=32", "train.num_workers=1", *common]) == 0
    assert cli.main(["evaluate", f"{root}/run/model.safetensors", f"{root}/shards", "--out", f"{root}/report",
                     *common]) == 0
    out = capsys.readouterr().out
    assert "extract: 4 ok" in out and "build:" in out and "train:" in out and "evaluate:" in out
    manifest = ShardsManifest.load(f"{root}/shards")
    assert manifest.splits["train"].speakers and manifest.splits["val"].speakers
    assert read_model_card(f"{root}/run/model.safetensors").data.fingerprint == manifest.fingerprint
    report = json.loads(storage.read_text(f"{root}/report/report.json"))
    assert report["metrics"]["n_frames"] > 0
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="a2bs-chain")["Contents"]}
    assert "run/model.safetensors" in keys and any(k.startswith("report/") and k.endswith(".png") for k in keys)
    assert any(k.startswith("run/") and "checkpoint" in k for k in keys)  # Ray Train storage on S3 too
