"""The batch-over-inputs loop that ``a2bs extract`` and ``a2bs infer`` share.

Items (one dict per input) go to a worker class, either on a Ray Data actor pool (one worker per
actor, loaded once) or in this process. A worker's ``process(item)`` returns one status row and never
raises for a bad input; the rows come back sorted by ``source`` and the run's folder gets
``_failures.json`` and ``_summary.json``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from a2bs.config import RayConfig
from a2bs.runtime import storage
from a2bs.runtime.cluster import init_ray, rows_as_done
from a2bs.runtime.console import tracked

log = logging.getLogger(__name__)

CONFIG_NAME = "_config.yaml"
FAILURES_NAME = "_failures.json"
SUMMARY_NAME = "_summary.json"


class Worker(Protocol):
    """What the loop runs: built once per actor (or once locally), then called per item."""

    def process(self, item: dict[str, Any]) -> dict[str, Any]: ...


class _PoolActor:
    """Ray Data actor around a worker class; batches of one item -> columns of status rows."""

    def __init__(self, worker_cls: Callable[..., Worker], worker_kwargs: dict[str, Any]) -> None:
        self.worker = worker_cls(**worker_kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        n = len(next(iter(batch.values())))
        rows = [self.worker.process({k: _plain(v[i]) for k, v in batch.items()}) for i in range(n)]
        return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def map_items(items: list[dict[str, Any]], worker_cls: Callable[..., Worker], worker_kwargs: dict[str, Any], *,
              use_ray: bool, ray_cfg: RayConfig, n_actors: int = 0, cpus_per_actor: float = 1.0,
              progress: bool = True, label: str = "batch", unit: str = "files",
              describe: Callable[[list[dict[str, Any]], float], str] | None = None,
              local_worker: Worker | None = None) -> list[dict[str, Any]]:
    """Run ``worker.process`` over `items`; returns one status row per item, sorted by ``source``.

    Each failed row is logged (``failed: SOURCE: REASON``) as it comes back.

    Args:
        n_actors: actor-pool size (0 = one per ``cpus_per_actor`` CPUs of the cluster), capped by the item count.
        progress: show a progress display (``label``: ``done/total unit``) on the console.
        describe: (rows so far, elapsed seconds) -> the display's status text (default: failures so far).
        local_worker: a worker the caller already built, for the local loop (else one is built here).
    """
    if not items:
        return []
    rows = _rows(items, worker_cls, worker_kwargs, use_ray, ray_cfg, n_actors, cpus_per_actor, local_worker)
    done = tracked(_log_failures(rows), label, len(items), unit, describe or _failed_so_far, enabled=progress)
    return sorted(done, key=lambda r: r["source"])


def _log_failures(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for row in rows:  # the reason first, then the progress display that counts it
        if row["status"] == "failed":
            log.error(f"failed: {row['source']}: {row['reason']}")
        yield row


def _failed_so_far(rows: list[dict[str, Any]], elapsed_s: float) -> str:
    failed = sum(r["status"] == "failed" for r in rows)
    return f"{failed} failed" if failed else ""


def _rows(items: list[dict[str, Any]], worker_cls: Callable[..., Worker], worker_kwargs: dict[str, Any],
          use_ray: bool, ray_cfg: RayConfig, n_actors: int, cpus_per_actor: float,
          local_worker: Worker | None) -> Iterator[dict[str, Any]]:
    """Status rows as items finish (Ray Data streams them; not in input order)."""
    if use_ray:
        import ray

        init_ray(ray_cfg)
        if not n_actors:
            n_actors = max(1, int(float(ray.cluster_resources().get("CPU", 1)) // max(cpus_per_actor, 1e-3)))
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            # One task in flight per actor: items are seconds to minutes of work, so prefetching gains
            # nothing, and a second task queued behind a busy actor would wait while another actor idles
            # (items are handed out in order, so callers can put the longest first).
            _PoolActor, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(n_actors, len(items)), max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs={"worker_cls": worker_cls, "worker_kwargs": worker_kwargs},
            num_cpus=cpus_per_actor,
            # Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1: a killed
            # actor is replaced and its item retried (tests/integration/test_reliability.py).
        )
        yield from rows_as_done(ds)
        return
    worker = local_worker or worker_cls(**worker_kwargs)
    try:
        for item in items:
            yield worker.process(item)
    finally:
        getattr(worker, "close", lambda: None)()


def error_reason(exc: Exception) -> str:
    """One-line reason for an unexpected exception while processing one input."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def write_run_records(out_dir: str, failures: list[dict], summary: dict[str, Any]) -> None:
    """``_failures.json`` (source + reason per failed input) and ``_summary.json``, atomically."""
    storage.atomic_write_text(storage.join(out_dir, FAILURES_NAME), json.dumps(failures, indent=1))
    storage.atomic_write_text(storage.join(out_dir, SUMMARY_NAME), json.dumps(summary, indent=1, default=float))
