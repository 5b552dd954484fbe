"""The demo job's choice of a held-out clip to run inference on."""

from __future__ import annotations

import json

from support import demo_clips

from a2bs.build.shards import MANIFEST_NAME
from a2bs.demo.job import _held_out_clip
from a2bs.runtime.inputs import content_id


def test_held_out_clip_is_in_the_validation_split(tmp_path) -> None:
    clips = demo_clips()
    val = clips[len(clips) // 2]  # any clip, not the first: the fallback is the first clip
    manifest = {"clips": {"train": [content_id(str(c)) for c in clips if c != val], "val": [content_id(str(val))]}}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert _held_out_clip(str(tmp_path), clips) == val
