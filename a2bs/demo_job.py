"""The main job: the whole chain on the bundled demo corpus with an embedded local Ray.

extract -> build -> train -> evaluate -> infer, each stage writing under one output folder, so a
new user sees every artefact a2bs makes in one run. Reruns skip what is already done.
"""

from __future__ import annotations

import time
from pathlib import Path

from a2bs import io
from a2bs.config import Config, load_config

DEMO_CORPUS = Path(__file__).resolve().parent / "demo" / "corpus"
DEMO_PRESET = Path(__file__).resolve().parent.parent / "jobs" / "configs" / "demo.yaml"


def demo_config(cfg: Config | None = None) -> Config:
    """The demo preset (jobs/configs/demo.yaml) applied on top of `cfg`."""
    return load_config(DEMO_PRESET if DEMO_PRESET.is_file() else None, base=cfg)


def run_demo(out_dir: str, cfg: Config) -> int:
    """Run every stage on the demo corpus; print one line per stage and a closing summary."""
    from a2bs.data.pipeline import run_build, run_extract

    t0 = time.perf_counter()
    clips = sorted(DEMO_CORPUS.rglob("*.mp4"))
    if not clips:
        raise FileNotFoundError(f"demo corpus not found under {DEMO_CORPUS}")
    io.makedirs(out_dir)
    extract = run_extract([str(DEMO_CORPUS)], io.join(out_dir, "clips"), cfg, progress=True)
    print(extract.line(), flush=True)
    build = run_build(io.join(out_dir, "clips"), io.join(out_dir, "shards"), cfg)
    print(build.line(), flush=True)
    print(f"demo: done in {time.perf_counter() - t0:.0f} s; outputs in {out_dir}")
    return 0
