"""Ray start-up: connect to the configured cluster or start an embedded local Ray."""

from __future__ import annotations

from a2bs.config import RayConfig


def init_ray(cfg: RayConfig) -> None:
    """Connect to the configured cluster, or start an embedded local Ray (once per process)."""
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=True)
    else:
        # The dashboard serves Ray's State API, which Ray Train's placement-group cleaner polls every
        # second: without it each poll logged a warning (~200 lines in a demo run) and a crashed
        # controller's resources would never be released. It also gives a UI on 127.0.0.1:8265.
        ray.init(num_cpus=cfg.num_cpus or None, include_dashboard=True, log_to_driver=True)

