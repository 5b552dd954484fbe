"""Shared fixtures: the demo corpus, the fault-point folder, one session-scoped local Ray cluster, a moto
S3 server."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # support, media_factory
os.environ.setdefault("GLOG_minloglevel", "2")

from support import DEMO_CORPUS, demo_clips  # noqa: E402

from a2bs.runtime import faults  # noqa: E402


@pytest.fixture(scope="session")
def demo_clip() -> Path:
    clips = demo_clips()
    assert clips, f"the demo corpus is missing under {DEMO_CORPUS}"
    return clips[0]


@pytest.fixture(scope="session", autouse=True)
def fault_folder(tmp_path_factory) -> Path:
    """``A2BS_FAULTS`` for the whole session (tests arm points with ``a2bs.runtime.faults.armed``).

    Set before anything starts Ray, so that every Ray worker and subprocess inherits it.
    """
    folder = tmp_path_factory.mktemp("faults")
    os.environ[faults.ENV_VAR] = str(folder)
    yield folder
    os.environ.pop(faults.ENV_VAR, None)


@pytest.fixture(scope="session")
def ray_cluster(s3_server, fault_folder):
    """One local Ray for the whole session, CPUs pinned (Ray's testing guide).

    It depends on the S3 server and the fault folder so that the workers inherit the AWS environment
    pointing at it and ``A2BS_FAULTS``.
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
    """A real S3 API: moto's server on 127.0.0.1, with the AWS environment pointed at it.

    The server picks a free port itself and prints its address once it listens: the fixture waits for
    that line (no port guessed in advance, no connection polling).
    """
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", "0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    listening: queue.Queue[str | None] = queue.Queue()

    def watch() -> None:  # also keeps draining the request log, so the server never blocks on the pipe
        for line in proc.stderr:
            found = re.search(r"Running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                listening.put(found.group(1))
        listening.put(None)  # the server exited

    threading.Thread(target=watch, daemon=True).start()
    try:
        endpoint = listening.get(timeout=60)
    except queue.Empty:
        endpoint = None
    if endpoint is None:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    proc.terminate()
    proc.wait(10)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
