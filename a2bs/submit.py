"""`a2bs submit` and `a2bs jobs`: run stages on a Ray cluster through the Job Submission API.

The project folder is shipped as the job's ``working_dir`` (so the cluster runs exactly this code;
from an installed wheel, the package itself goes as a ``py_modules`` entry) and the stage runs as
``python -m a2bs.cli STAGE ...``. Cluster nodes are expected to have
a2bs's dependencies installed by ``cluster.yaml``'s setup commands; ``--pip`` adds the project's
requirements to the runtime environment instead, for clusters set up some other way.
Credentials never travel in the job: nodes use their own AWS environment or instance profile.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from a2bs.config import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO = PACKAGE_DIR.parent
STAGES = ("extract", "build", "train", "tune", "evaluate", "infer")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# A head that has just started answers the job API a few seconds before its node agent has
# registered; Ray then refuses submissions with this message, so they are retried for a while.
AGENT_NOT_READY = "No available agent"
AGENT_WAIT_S = 60.0
EXCLUDES = [".venv", ".git", "out", "runs", "**/__pycache__", "*.egg-info", "benchmarks"]


def _client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def runtime_env(with_pip: bool = False) -> dict[str, Any]:
    """working_dir = this project (minus venv, outputs, git), or the installed package as a py_module;
    optionally its pip requirements."""
    pyproject = REPO / "pyproject.toml"
    if pyproject.is_file():  # a source checkout
        env: dict[str, Any] = {"working_dir": str(REPO), "excludes": EXCLUDES}
    else:  # an installed wheel: ship the package, not the whole site-packages folder
        env = {"py_modules": [str(PACKAGE_DIR)], "excludes": EXCLUDES}
    if with_pip:
        if pyproject.is_file():
            env["pip"] = list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
        else:
            from importlib.metadata import requires

            env["pip"] = [r for r in requires("a2bs") or [] if "extra ==" not in r]
    return env


def submit(address: str, stage: str, stage_args: list[str], with_pip: bool = False, wait: bool = False) -> str:
    """Submit one stage as a Ray job; returns the job id (and waits for the end if asked)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    client = _client(address)
    entrypoint = " ".join(["python", "-m", "a2bs.cli", stage, *map(shlex.quote, stage_args)])
    job_id = _submit_when_ready(client, entrypoint, runtime_env(with_pip), address)
    if wait:
        wait_for(address, job_id)
    return job_id


def _submit_when_ready(client: Any, entrypoint: str, env: dict[str, Any], address: str) -> str:
    """Submit, retrying while a freshly started head has no job agent yet."""
    deadline = time.monotonic() + AGENT_WAIT_S
    warned = False
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=env)
        except RuntimeError as err:
            if AGENT_NOT_READY not in str(err) or time.monotonic() > deadline:
                raise
            if not warned:
                warned = True
                print(f"{address}: the cluster's job agent is not ready yet; retrying for up to "
                      f"{AGENT_WAIT_S:.0f} s", file=sys.stderr, flush=True)
            time.sleep(2.0)


def _status_name(status: Any) -> str:
    return str(getattr(status, "value", status))


def wait_for(address: str, job_id: str, timeout_s: float = 3600.0, poll_s: float = 1.0) -> str:
    """Poll until the job ends; returns its final status."""
    client = _client(address)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _status_name(client.get_job_status(job_id))
        if status in TERMINAL:
            return status
        time.sleep(poll_s)
    raise TimeoutError(f"job {job_id} still running after {timeout_s:.0f} s")


def split_submit_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Take ``--address URL``, ``--pip`` and ``--wait`` from anywhere after the stage; every other
    argument is the stage's own and keeps its order (argparse would reorder or swallow them)."""
    if not argv or argv[0] not in STAGES:
        raise ValueError(f"submit: first give a stage: {', '.join(STAGES)}")
    ns = argparse.Namespace(stage=argv[0], address="", pip=False, wait=False)
    stage_args: list[str] = []
    it = iter(argv[1:])
    for arg in it:
        if arg == "--address":
            ns.address = next(it, "")
        elif arg.startswith("--address="):
            ns.address = arg.split("=", 1)[1]
        elif arg in ("--pip", "--wait"):
            setattr(ns, arg[2:], True)
        else:
            stage_args.append(arg)
    if not ns.address:
        raise ValueError("submit: --address URL is required (the cluster's job server, e.g. http://HEAD:8265)")
    return ns, stage_args


def cmd_submit(argv: list[str]) -> int:
    """`a2bs submit STAGE [stage args] --address URL [--pip] [--wait]`."""
    args, stage_args = split_submit_args(argv)
    job_id = submit(args.address, args.stage, stage_args, args.pip, wait=False)
    print(f"submitted {args.stage} as job {job_id} to {args.address}")
    if args.wait:
        status = wait_for(args.address, job_id)
        print(f"job {job_id}: {status}")
        return 0 if status == "SUCCEEDED" else 1
    return 0


def cmd_jobs(args: argparse.Namespace, rest: list[str]) -> int:
    if rest:
        raise ConfigError(f"jobs {args.action} takes one job id (got also {' '.join(rest)})")
    client = _client(args.address)
    if args.action == "status":
        info = client.get_job_info(args.job_id)
        print(f"job {args.job_id}: {_status_name(info.status)}"
              + (f" ({info.message})" if info.message else ""))
    elif args.action == "logs":
        print(client.get_job_logs(args.job_id), end="")
    elif args.action == "stop":
        stopped = client.stop_job(args.job_id)
        print(f"job {args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def register(sub: Any, handlers: dict, add_common: Any) -> None:
    """Add `submit` and `jobs` to the a2bs command line."""
    # `submit` is parsed by split_submit_args (cli.main hands it the raw arguments); this entry
    # only documents it in `a2bs --help`.
    sub.add_parser("submit", help="run a stage on a Ray cluster: a2bs submit STAGE [args] --address URL [--pip] [--wait]",
                   add_help=False)

    p = sub.add_parser("jobs", help="status, logs or stop of a submitted job")
    p.add_argument("action", choices=("status", "logs", "stop"))
    p.add_argument("job_id")
    p.add_argument("--address", required=True)
    handlers["jobs"] = cmd_jobs
