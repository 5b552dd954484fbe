"""Broken media, killed workers and drivers, atomic writes, path and config safety."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import media_factory as mf
import psutil
import pytest
from support import demo_clips, listing_manifest, read_split

from a2bs.build.pipeline import run_build
from a2bs.cli import EXIT_INTERRUPTED
from a2bs.config import ConfigError, load_config, save_config
from a2bs.errors import InputError
from a2bs.extract.pipeline import run_extract
from a2bs.runtime import faults, storage
from a2bs.runtime.inputs import list_inputs

MEDIA_CASES = [n for n, c in mf.CASES.items() if c.kind == "media" and n != "missing"]


@pytest.fixture(scope="module")
def broken_corpus(tmp_path_factory, demo_clip: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    return mf.build_corpus(root / "in" / "spk", demo_clip, MEDIA_CASES + ["missing"])


def _check_outcomes(built: dict[str, Path], out: Path, summary) -> None:
    rows = {r["source"]: r for r in json.loads((out / "_summary.json").read_text())["clips"]}
    failures = {f["source"]: f["reason"] for f in summary.failures}
    for name, path in built.items():
        case = mf.CASES[name]
        if case.expect == "error":
            assert str(path) in failures, f"{name} should fail"
            assert case.hint_matches(failures[str(path)]), f"{name}: {failures[str(path)]}"
            continue
        row = rows[str(path)]
        if row["status"] == "skipped":  # byte-identical to another case (e.g. the renamed copy)
            twin = [r for r in rows.values() if r["clip_id"] == row["clip_id"] and r["status"] == "ok"]
            assert len(twin) == 1, name
            row = twin[0]
        assert row["status"] == "ok", f"{name}: {row['reason']}"
        if case.expect == "ok_audio_only":
            assert row["frames"] == 0
        elif case.expect == "ok_no_face":
            assert row["frames"] > 0 and row["face_frames"] == 0
        else:
            assert row["face_frames"] >= 0.9 * row["frames"] > 0, name


@pytest.mark.parametrize("use_ray", [False, True], ids=["in-process", "ray"])
def test_broken_media_corpus(broken_corpus, tmp_path: Path, use_ray: bool, request) -> None:
    if use_ray:
        request.getfixturevalue("ray_cluster")
    out = tmp_path / "clips"
    inputs = [str(broken_corpus["missing"].parent), str(broken_corpus["missing"])]
    summary = run_extract(inputs, str(out), load_config(None, ["ray.extract_actors=2"]), use_ray=use_ray,
                          progress=False)
    _check_outcomes(broken_corpus, out, summary)
    build = run_build(str(out), str(tmp_path / "shards"), load_config(None, ["sequence.split_by=clip"]),
                      use_ray=use_ray)
    assert sum(build.rows.values()) > 0


def test_corrupt_shard_is_named_on_the_training_side(tmp_path: Path) -> None:
    bad = mf.CASES["corrupt_parquet"].build(tmp_path / "shards" / "train", None)
    bad.rename(tmp_path / "shards" / "train" / "part-00000.parquet")
    listing_manifest({}, {"train": ["train/part-00000.parquet"]}).write(tmp_path / "shards")
    with pytest.raises(InputError, match="part-00000.parquet: corrupt or truncated Parquet shard"):
        read_split(str(tmp_path / "shards"), "train")


def _copy_clips(tmp_path: Path, n: int) -> Path:
    """`n` demo clips under one speaker folder; returns the input root."""
    src = tmp_path / "in" / "spk"
    src.mkdir(parents=True)
    for c in demo_clips()[:n]:
        shutil.copy(c, src / f"{c.parent.name}_{c.name}")
    return src.parent


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by its parent
    except psutil.NoSuchProcess:
        return True


@pytest.mark.ray
def test_killed_extraction_worker_loses_nothing(tmp_path: Path, ray_cluster) -> None:
    """An actor is SIGKILLed with its second clip extracted but not yet written: Ray replaces the
    actor and retries the clip, which is then written exactly once."""
    src, n_clips = _copy_clips(tmp_path, 6), 6
    out = tmp_path / "clips"
    with faults.armed("extract.before_write", skip=1):
        summary = run_extract([str(src)], str(out), load_config(None, ["ray.extract_actors=2"]), progress=False)
    (crash,) = faults.fired()
    assert crash["pid"] != os.getpid() and _gone(crash["pid"])  # a Ray worker, killed
    assert (summary.ok, summary.failed) == (n_clips, 0)
    files = sorted(p.parent.name for p in (out / "clips").glob("*/seg-*.parquet"))  # one segment per clip
    assert len(files) == len(set(files)) == n_clips  # each clip exactly once
    assert crash["context"]["clip_id"] in files  # the clip lost with the worker was redone
    assert not [p for p in (out / "clips").rglob(".*")]  # no temp leftovers


def test_interrupted_driver_rerun_finishes_the_rest(tmp_path: Path) -> None:
    """Ctrl-C reaches `a2bs extract` while its third clip is extracted but not written: exactly two
    clips are on disk, and the rerun skips them and extracts the other three."""
    src, n_clips = _copy_clips(tmp_path, 5), 5
    out = tmp_path / "clips"
    cmd = [sys.executable, "-m", "a2bs.cli", "extract", str(src), "--out", str(out), "--no-ray", "--quiet"]
    with faults.armed("extract.before_write", signal_name="SIGINT", skip=2):
        # Default SIGINT in the child even when the suite runs as a background job (bash starts those with
        # SIGINT ignored, and Python then never installs its KeyboardInterrupt handler).
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        proc.wait(300)
    (interrupt,) = faults.fired()
    assert interrupt["pid"] == proc.pid and proc.returncode == EXIT_INTERRUPTED  # stopped by the Ctrl-C
    done = sorted(p.parent.name for p in (out / "clips").glob("*/seg-*.parquet"))
    assert len(done) == 2 and interrupt["context"]["clip_id"] not in done
    rerun = run_extract([str(src)], str(out), load_config(), use_ray=False, progress=False)
    assert (rerun.skipped, rerun.ok, rerun.failed) == (2, n_clips - 2, 0)
    assert len(list((out / "clips").glob("*/seg-*.parquet"))) == n_clips


def test_killed_writer_leaves_no_file_a_reader_takes_for_valid(tmp_path: Path) -> None:
    """A writer SIGKILLed after its temporary file is complete and before the rename leaves that hidden
    file only: the target never exists half-written and no listing returns the temp file."""
    target = tmp_path / "shards" / "train" / "part-00000.parquet"
    code = (
        "import numpy as np, pyarrow as pa, sys\n"
        "from a2bs.runtime.storage import write_parquet_atomic\n"
        "write_parquet_atomic(pa.table({'x': np.arange(100_000)}), sys.argv[1])\n"
    )
    with faults.armed("storage.before_replace", when={"path": str(target)}):
        proc = subprocess.Popen([sys.executable, "-c", code, str(target)])
        proc.wait(120)
    (crash,) = faults.fired()
    assert crash["pid"] == proc.pid and proc.returncode == -signal.SIGKILL
    assert not target.exists()
    (temp,) = target.parent.iterdir()
    assert temp.name.startswith(f".{target.name}.") and temp.name.endswith(".tmp")
    assert storage.list_files(str(tmp_path / "shards")) == []  # the hidden temp file is not a shard


def test_paths_cannot_escape_their_root_and_configs_stay_clean(tmp_path: Path) -> None:
    root = tmp_path / "footage"
    root.mkdir()
    outside = tmp_path / "secret.mp4"
    shutil.copy(demo_clips()[0], outside)
    (root / "link.mp4").symlink_to(outside)
    entries, failures = list_inputs([str(root)])
    assert entries == [] and "resolves outside the input folder" in failures[0]["reason"]

    evil = tmp_path / "evil.yaml"
    evil.write_text("audio: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)

    old = os.environ.get("AWS_SECRET_ACCESS_KEY")
    os.environ["AWS_SECRET_ACCESS_KEY"] = "s3cr3t-value-for-test"
    try:
        save_config(load_config(), tmp_path / "c.yaml")
        assert "s3cr3t" not in (tmp_path / "c.yaml").read_text()
    finally:
        if old is None:
            os.environ.pop("AWS_SECRET_ACCESS_KEY")
        else:
            os.environ["AWS_SECRET_ACCESS_KEY"] = old
