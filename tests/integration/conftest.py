"""Session-scoped demo-corpus extraction on the real local Ray, shared by pipeline/training tests."""

from __future__ import annotations

import pytest
from support import fixture_clips

from a2bs.build.pipeline import run_build
from a2bs.config import Config, load_config
from a2bs.extract.pipeline import run_extract


@pytest.fixture(scope="session")
def demo_config() -> Config:
    return load_config(None, ["ray.extract_actors=2"])


@pytest.fixture(scope="session")
def demo_features(tmp_path_factory, ray_cluster, demo_config):
    """The fixture's share of the demo corpus (support.fixture_clips) extracted once through the Ray Data actor pool."""
    clips = fixture_clips()
    assert clips, "demo corpus missing"
    out = tmp_path_factory.mktemp("demo") / "clips"
    summary = run_extract([str(c) for c in clips], str(out), demo_config, use_ray=True, progress=False)
    return out, summary


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory, demo_features, demo_config):
    clips_dir, _ = demo_features
    out = tmp_path_factory.mktemp("demo") / "shards"
    summary = run_build(str(clips_dir), str(out), demo_config, use_ray=True)
    return out, summary
