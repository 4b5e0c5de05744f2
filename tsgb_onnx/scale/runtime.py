"""Ray for tsgb: import it, connect (a local Ray, or an existing cluster), size the actor
pool, and what the workers report about themselves."""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from tsgb_onnx.errors import InputError, RuntimeUnavailableError

INSTALL = "pip install 'tsgb-onnx[ray]'"


def ray_module():
    """`ray` with Ray Data, or one clear error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RuntimeUnavailableError(
            f"--engine ray needs Ray Data, which is not installed: {INSTALL}"
        ) from None
    return ray


@dataclass
class Cluster:
    """Where a run executes: how many workers (actors), CPUs and threads each."""

    workers: int
    cpus_per_worker: float
    threads: int
    started: bool  # this process started a local Ray (and shuts it down at the end)
    address: str  # "local" or the cluster's address

    def describe(self) -> str:
        where = "a local Ray" if self.address == "local" else f"the Ray cluster at {self.address}"
        return (
            f"{self.workers} worker(s) on {where}, {self.cpus_per_worker:g} CPU and "
            f"{self.threads} thread(s) each"
        )


@contextlib.contextmanager
def connect(address: str | None, workers: int | None, progress: bool = True) -> Iterator[Cluster]:
    """Ray for the duration of a run.

    Without `address` (and without `RAY_ADDRESS` in the environment) a local Ray starts on
    this machine with its CPUs and stops at the end; with one, the run joins that cluster
    (`ray.init(address=...)`; "auto" finds a cluster started on this machine) and ships
    this package to its workers (`runtime_env` `py_modules`; the dependencies must be
    installed there). A Ray already initialised in this process (a notebook, the tests) is
    used as it is. `workers`: actors in the pool (default: one per CPU of the cluster)."""
    ray = ray_module()
    started = False
    if ray.is_initialized():
        where = "local"
    else:
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict = {"include_dashboard": False, "logging_level": "WARNING"}
        if address:
            import tsgb_onnx

            kwargs["runtime_env"] = {"py_modules": [os.path.dirname(tsgb_onnx.__file__)]}
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise InputError(f"cannot join the Ray cluster at '{address}': {first}") from None
            where = address
        else:
            ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
            where = "local"
        started = True
    try:
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        count = workers or max(1, int(cpus))
        if count > max(1, int(cpus)):
            raise InputError(
                f"--workers {count} is more than the {cpus:g} CPUs of the Ray cluster: each "
                "worker needs at least one"
            )
        per_worker = max(1.0, float(int(cpus) // count))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        context.enable_operator_progress_bars = progress
        context.enable_auto_log_stats = False
        context.print_on_execution_start = False
        yield Cluster(count, per_worker, int(per_worker), started, where)
    finally:
        if started:
            with contextlib.suppress(Exception):
                ray.shutdown()


def actor_pool(ray, workers: int):
    """Ray Data's compute strategy for a fixed pool of `workers` actors."""
    return ray.data.ActorPoolStrategy(size=workers)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / 2**20
