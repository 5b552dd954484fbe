"""The batch-over-inputs loop that ``a2bs extract`` and ``a2bs infer`` share.

Items (one dict per input) go to a worker class, either on a Ray Data actor pool (one worker per
actor, loaded once) or in this process. A worker's ``process(item)`` returns one status row and never
raises for a bad input; the rows come back sorted by ``source`` and the run's folder gets
``_failures.json`` and ``_summary.json``.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Protocol

import numpy as np

from a2bs.config import RayConfig
from a2bs.runtime import storage
from a2bs.runtime.cluster import init_ray

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
              progress: bool = True, local_worker: Worker | None = None) -> list[dict[str, Any]]:
    """Run ``worker.process`` over `items`; returns one status row per item, sorted by ``source``.

    Args:
        n_actors: actor-pool size (0 = one per ``cpus_per_actor`` CPUs of the cluster), capped by the item count.
        progress: Ray Data's progress bars, or one line per item in the local loop.
        local_worker: a worker the caller already built, for the local loop (else one is built here).
    """
    if not items:
        return []
    if use_ray:
        import ray

        init_ray(ray_cfg)
        ray.data.DataContext.get_current().enable_progress_bars = progress
        if not n_actors:
            n_actors = max(1, int(float(ray.cluster_resources().get("CPU", 1)) // max(cpus_per_actor, 1e-3)))
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            _PoolActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(n_actors, len(items))),
            fn_constructor_kwargs={"worker_cls": worker_cls, "worker_kwargs": worker_kwargs},
            num_cpus=cpus_per_actor,
            # Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1: a killed
            # actor is replaced and its item retried (tests/integration/test_reliability.py).
        )
        rows = ds.take_all()
    else:
        worker = local_worker or worker_cls(**worker_kwargs)
        rows = []
        try:
            for i, item in enumerate(items, 1):
                rows.append(worker.process(item))
                if progress:
                    r = rows[-1]
                    print(f"[{i}/{len(items)}] {r['status']:7s} {r['source']}"
                          + (f": {r['reason']}" if r.get("reason") else ""), flush=True)
        finally:
            getattr(worker, "close", lambda: None)()
    return sorted(rows, key=lambda r: r["source"])


def error_reason(exc: Exception) -> str:
    """One-line reason for an unexpected exception while processing one input."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def write_run_records(out_dir: str, failures: list[dict], summary: dict[str, Any]) -> None:
    """``_failures.json`` (source + reason per failed input) and ``_summary.json``, atomically."""
    storage.atomic_write_text(storage.join(out_dir, FAILURES_NAME), json.dumps(failures, indent=1))
    storage.atomic_write_text(storage.join(out_dir, SUMMARY_NAME), json.dumps(summary, indent=1, default=float))
