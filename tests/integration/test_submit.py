"""Job submission to a real local Ray head (its own job server), cluster.yaml against Ray's schema."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from support import REPO, demo_clips, free_port

from a2bs import cli

pytestmark = pytest.mark.ray


@pytest.fixture
def ray_head(ray_cluster):
    """`ray start --head` on 127.0.0.1 with the job server on a free port, next to the session's
    cluster as in a full test run; stopped at the end.

    `ray stop` would also stop the tests' own session cluster, so the head's processes are found by
    their unique temp dir instead.
    """
    temp_dir = tempfile.mkdtemp(prefix="/tmp/a2bs-head-")  # short: Ray's socket paths have a length limit
    port, dash = free_port(), free_port()
    # The session cluster (ray_cluster) already holds Ray's fixed default agent ports (e.g. 52365):
    # a second node on them starts without a job agent and refuses every submission.
    agent_ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "ray-client-server-port")]
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}"}  # jobs run the head's `python`
    proc = subprocess.Popen(
        [f"{venv_bin}/ray", "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", *agent_ports, "--num-cpus=2", "--block", f"--temp-dir={temp_dir}",
         "--include-dashboard=true"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dash}"
    os.environ["RAY_AUTH_MODE"] = "token"  # Ray 2.60 heads require the token from ~/.ray/auth_token
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + 90
    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                raise
            time.sleep(1)
    yield address
    proc.terminate()
    for p in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in (p.info["cmdline"] or [])):
            p.kill()
    os.environ.pop("RAY_AUTH_MODE", None)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_extract_job_succeeds(ray_head: str, tmp_path: Path, capsys) -> None:
    src = tmp_path / "in" / "spk"
    src.mkdir(parents=True)
    for clip in demo_clips()[:2]:
        shutil.copy(clip, src / clip.name)
    out = tmp_path / "clips"
    assert cli.main(["submit", "extract", str(tmp_path / "in"), "--out", str(out), "ray.extract_actors=1",
                     "--address", ray_head, "--wait"]) == 0
    printed = capsys.readouterr().out
    job_id = printed.split(" as job ")[1].split()[0]
    assert f"job {job_id}: SUCCEEDED" in printed
    assert len(list((out / "clips").glob("*/seg-*.parquet"))) == 2  # one segment part per clip
    assert cli.main(["jobs", "logs", job_id, "--address", ray_head]) == 0
    assert "extract: 2 ok, 0 failed" in capsys.readouterr().out
    assert cli.main(["jobs", "status", job_id, "--address", ray_head]) == 0
    assert "SUCCEEDED" in capsys.readouterr().out


def _validate(config: dict) -> None:
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    validate_config(fillout_defaults(copy.deepcopy(config)))


def test_cluster_yaml_validates_against_rays_schema() -> None:
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    _validate(config)
    types = config["available_node_types"]
    assert types["cpu_worker"]["resources"].get("extract") and types["gpu_worker"]["resources"].get("train")
    assert all("AccessKey" not in str(t) for t in types.values())  # S3 through the instance profile
    assert "dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    broken = copy.deepcopy(config)
    del broken["available_node_types"]["gpu_worker"]["node_config"]
    with pytest.raises(Exception, match="node_config"):
        _validate(broken)
    missing = copy.deepcopy(config)
    missing["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        _validate(missing)


def test_submit_needs_an_address(capsys) -> None:
    assert cli.main(["submit", "extract", "x", "--out", "y"]) == 2
    assert "--address URL is required" in capsys.readouterr().err
