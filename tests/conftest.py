"""Shared fixtures: the demo corpus, one session-scoped local Ray cluster, a moto S3 server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # support, media_factory
os.environ.setdefault("GLOG_minloglevel", "2")

from support import DEMO_CORPUS, demo_clips, free_port  # noqa: E402


@pytest.fixture(scope="session")
def demo_clip() -> Path:
    clips = demo_clips()
    assert clips, f"the demo corpus is missing under {DEMO_CORPUS}"
    return clips[0]


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray for the whole session, CPUs pinned (Ray's testing guide).

    It depends on the S3 server so that the workers inherit the AWS environment pointing at it.
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API: moto's server on 127.0.0.1, with the AWS environment pointed at it."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    yield endpoint
    proc.terminate()
    proc.wait(10)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
