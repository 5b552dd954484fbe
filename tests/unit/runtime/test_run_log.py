"""Run logs: the fd capture, a2bs's tagged lines, the follower, dropped start-up notices, alerts, S3."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import boto3

from a2bs.runtime import storage
from a2bs.runtime.logs import LOGS_DIR, OWN_PREFIX, LogFollower, RunLog, alert, without_lines

RAYLET_LINE = ("\x1b[33m(raylet)\x1b[0m A worker died or was killed while executing a task by an unexpected system "
               "error. To troubleshoot the problem, check the logs for the dead worker. Lease ID: 45 Worker ID: 39 "
               "Node ID: d6 Worker IP address: 192.0.2.2 Worker port: 41991 Worker PID: 24367 Worker exit type: "
               "SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection error code 2. End of "
               "file. Some common causes include: (1) the process was killed by the OOM killer")


def test_capture_takes_this_process_and_its_children(tmp_path: Path) -> None:
    log = RunLog(str(tmp_path / "out"), "extract")
    assert Path(log.path).parent == tmp_path / "out" / LOGS_DIR and re.fullmatch(r"extract-\d{8}-\d{6}\.log",
                                                                                   Path(log.path).name)
    log.write("extract: starting\nsecond line")
    log.capture()
    try:
        os.write(2, b"W0000 a C++ library writes to fd 2\n")
        os.write(1, b"and to fd 1\n")
        subprocess.run([sys.executable, "-c", "import sys; print('a child process', file=sys.stderr)"], check=True)
    finally:
        log.release()
    os.write(2, b"")  # fd 2 is usable again
    assert log.close() is None
    text = Path(log.path).read_text()
    assert "W0000 a C++ library writes to fd 2\nand to fd 1\na child process\n" in text
    own = [line for line in text.splitlines() if line.startswith(OWN_PREFIX)]
    assert [re.sub(r"^\[a2bs [\d:]+\] ", "", line) for line in own] == ["extract: starting", "second line"]


def test_a_second_log_in_the_same_second_gets_its_own_file(tmp_path: Path) -> None:
    first, second = RunLog(str(tmp_path), "build"), RunLog(str(tmp_path), "build")
    first.close(), second.close()
    if Path(first.path).name[:-4] == Path(second.path).name[:-6]:  # same second
        assert Path(second.path).name.endswith("-2.log")
    assert first.path != second.path and Path(first.path).exists() and Path(second.path).exists()


def test_log_on_s3_is_uploaded_at_the_end(s3_server: str) -> None:
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="a2bs-logs")
    log = RunLog("s3://a2bs-logs/run", "train")
    assert log.uri.startswith("s3://a2bs-logs/run/_logs/train-") and not log.path.startswith("s3://")
    log.capture()
    try:
        os.write(2, b"ray says something\n")
    finally:
        problem = log.close()
    assert problem is None and not Path(log.path).exists()
    assert storage.read_text(log.uri) == "ray says something\n"


def test_follower_hands_over_every_line_and_the_last_partial_one(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text("before the follower\n")
    seen: list[str] = []
    follower = LogFollower(str(path), seen.append)
    with open(path, "a") as f:
        f.write("one\r\ntwo\nthree, unterminated")
    follower.drain()
    assert seen == ["one", "two"]
    follower.stop()
    assert seen == ["one", "two", "three, unterminated"]


def test_without_lines_drops_only_the_notices(capfd) -> None:
    with without_lines([re.compile(rb"start-up notice")]):
        os.write(2, b"a start-up notice\nE0000 a real error\n")
        subprocess.run([sys.executable, "-c", "import os; os.write(2, b'a child start-up notice\\nits error\\n')"],
                       check=True)
    assert capfd.readouterr().err == "E0000 a real error\nits error\n"


def test_alert_names_a_dead_worker_and_why() -> None:
    assert alert(RAYLET_LINE) == ("a Ray worker died (pid 24367): Worker unexpectedly exits with a connection "
                                  "error code 2. End of file.")
    oom = ("(raylet) Task was killed due to the node running low on memory. Memory on the node was 7.5GB. "
           "Refer to the documentation on how to address the out of memory issue")
    assert alert(oom) == ("a Ray worker was killed: Task was killed due to the node running low on memory. "
                          "Memory on the node was 7.5GB.")
    assert alert("(MapWorker pid=1) W0000 00:00:1.2 123 face_landmarker_graph.cc:181] Sets ...") is None
    assert alert("[2026 E 1462 1462] core_worker.cc:2465: Actor with class name: 'MapWorker' ...") is None
