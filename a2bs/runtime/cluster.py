"""Ray start-up: connect to the configured cluster or start an embedded local Ray."""

from __future__ import annotations

from typing import Any, Iterator

from a2bs.config import RayConfig


def init_ray(cfg: RayConfig) -> None:
    """Connect to the configured cluster, or start an embedded local Ray (once per process)."""
    import ray
    import ray.data

    # a2bs draws its own progress (a2bs.runtime.console); Ray Data's bars would only garble the logs.
    ray.data.DataContext.get_current().enable_progress_bars = False
    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=True)
    else:
        # The dashboard serves Ray's State API, which Ray Train's placement-group cleaner polls every
        # second: without it each poll logged a warning (~200 lines in a demo run) and a crashed
        # controller's resources would never be released. It also gives a UI on 127.0.0.1:8265.
        ray.init(num_cpus=cfg.num_cpus or None, include_dashboard=True, log_to_driver=True)



def rows_as_done(ds: Any) -> Iterator[dict[str, Any]]:
    """The rows of a Ray Dataset as each block is done, as plain Python values.

    ``iter_rows()`` prefetches a block: a row only came out once the next one was done too, so a
    progress display lagged a whole item behind (seen: a clip that failed in a second was counted
    after the two 25 s clips beside it).
    """
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        yield from table.to_pylist()
