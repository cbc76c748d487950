"""Where a batch runs: a ``LocalCluster`` sized from the cores and the board's memory budget,
or an existing Dask cluster by address; the edge-infer version every worker must have; the
worker plugin that loads the model once per worker process. Imports Dask: import this module
after :func:`edge_infer.batch.require_dask`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import dask
import distributed
from distributed.diagnostics.plugin import WorkerPlugin

from .. import __version__
from ..errors import InputError
from .adapter import RunOptions, load

PLUGIN_NAME = "edge-infer-model"
#: resident memory a local worker needs when no board says otherwise (the small 2D models)
DEFAULT_WORKER_MB = 1024.0
CONNECT_TIMEOUT_S = 3
#: Dask settings of a local cluster: no statistical profiler in the workers (a thread that
#: wakes every 10 ms and takes the GIL to sample the running case's stack) and a 500 ms
#: event-loop tick instead of 20 ms in every process. With 2 workers, idle, the scheduler,
#: nannies and workers used 12-14 % of a core with Dask's defaults and about 4 % with these
#: (measured): cycles taken from the cases when the workers fill the cores. Of the memory
#: limit only the restart at 95 % is kept: a worker holds no Dask data to spill, and one
#: paused at 80 % whose RSS never falls back would take no case again.
LOCAL_DASK_CONFIG = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "500ms",
                     "distributed.worker.memory.target": False, "distributed.worker.memory.spill": False,
                     "distributed.worker.memory.pause": False}


def dask_environment(config: dict[str, object] = LOCAL_DASK_CONFIG) -> dict[str, str]:
    """``config`` as the environment variables that give it to ``dask scheduler`` and ``dask
    worker`` processes (``distributed.a.b`` -> ``DASK_DISTRIBUTED__A__B``)."""
    return {"DASK_" + "__".join(k.upper().replace("-", "_").split(".")): str(v) for k, v in config.items()}


@dataclass(frozen=True)
class Sizing:
    """A local cluster: ``workers`` processes, one case at a time each, ``threads`` backend
    threads per worker (``workers * threads`` never above the cores), and each worker's Dask
    ``memory_limit`` in MB: the board's memory budget, the one ``run --board`` plans to (None
    without a board: Dask's default, the machine's memory shared out)."""

    workers: int
    threads: int
    memory_mb: float | None = None


def local_sizing(cores: int, memory_mb: float, budget_mb: float | None = None, workers: int | None = None,
                 threads: int = 0) -> Sizing:
    """Size a local cluster: as many workers as cores and memory allow (each needing the board's
    budget, else :data:`DEFAULT_WORKER_MB`), the cores shared out among them, and the board's
    budget as each worker's memory limit.

    Raises
    ------
    InputError
        more workers asked for than there are cores.
    """
    cores = max(int(cores), 1)
    if workers is not None and workers > cores:
        raise InputError(f"--workers {workers} is more than the {cores} cores here; give at most {cores}")
    per_worker = budget_mb or DEFAULT_WORKER_MB
    fits = max(int(memory_mb // per_worker), 1)
    n = workers or max(1, min(cores, fits))
    return Sizing(n, threads or max(1, cores // n), budget_mb)


def available_memory_mb() -> float:
    from ..scan import available_memory_bytes

    return available_memory_bytes() / 2 ** 20


def start_local(sizing: Sizing):
    """A ``Client`` on a new ``LocalCluster`` of ``sizing.workers`` single-task processes, each
    limited to ``sizing.memory_mb`` (its nanny restarts a worker past 95 % of it; the case is
    retried elsewhere), with :data:`LOCAL_DASK_CONFIG`, the dashboard on a free port when bokeh
    is installed."""
    import importlib.util

    dashboard = ":0" if importlib.util.find_spec("bokeh") is not None else None
    limit = "auto" if sizing.memory_mb is None else int(sizing.memory_mb * 2 ** 20)
    with dask.config.set(LOCAL_DASK_CONFIG):  # the nannies hand it to the worker processes
        cluster = distributed.LocalCluster(n_workers=sizing.workers, threads_per_worker=1, processes=True,
                                           memory_limit=limit, dashboard_address=dashboard, host="127.0.0.1")
    return distributed.Client(cluster)


def connect(address: str, timeout: int = CONNECT_TIMEOUT_S):
    """A ``Client`` on the scheduler at ``address`` with at least one worker, or one line.

    Raises
    ------
    InputError
        the scheduler cannot be reached, or has no worker, within ``timeout`` seconds.
    """
    try:
        client = distributed.Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot reach the Dask scheduler at {address} ({reason[:120]}); "
                         "start one with `dask scheduler` or check --scheduler") from None
    try:
        client.wait_for_workers(1, timeout=timeout * 2)
    except (TimeoutError, OSError):
        client.close()
        raise InputError(f"the Dask scheduler at {address} has no worker; start some with "
                         f"`dask worker {address} --nthreads 1`") from None
    return client


def worker_version() -> str:
    """The edge-infer version installed where this runs (a worker)."""
    from importlib.metadata import version

    return version("edge-infer")


def check_versions(client) -> dict[str, str]:
    """Refuse a cluster whose workers lack edge-infer or run another version than this one.

    Runs the standard library's ``importlib.metadata.version`` on each worker (shipped by
    reference to the standard library, so a worker without edge-infer still answers).
    """
    from importlib.metadata import version

    seen = client.run(version, "edge-infer", on_error="return")
    found = {w: (v if isinstance(v, str) else "not installed") for w, v in seen.items()}
    wrong = sorted({v for v in found.values() if v != __version__})
    if wrong:
        raise InputError(f"the cluster's workers have edge-infer {', '.join(wrong)}, this client {__version__}; "
                         f"install edge-infer {__version__} with its batch extra on every worker")
    return found


class ModelPlugin(WorkerPlugin):
    """Loads the model once when a worker starts; :func:`loaded_model` hands it to each case."""

    name = PLUGIN_NAME  # registering again (other options) replaces it: teardown, then setup

    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts

    def setup(self, worker=None) -> None:
        _load_here(self.opts, worker)

    def teardown(self, worker=None) -> None:
        global _LOADED
        _LOADED = None


_LOADED: tuple | None = None


def _load_here(opts: RunOptions, worker=None) -> tuple:
    """Load the model of ``opts`` in this process: ``(options key, *what adapter.load returns)``."""
    global _LOADED
    threads = opts.threads or max(1, (os.cpu_count() or 1) // max(getattr(getattr(worker, "state", None),
                                                                           "nthreads", 1), 1))
    _LOADED = (opts.key(), *load(opts, threads))
    return _LOADED


def loaded_model(opts: RunOptions):
    """The model this worker loaded for ``opts`` (loaded now if the plugin has not run here)."""
    loaded = _LOADED
    if loaded is None or loaded[0] != opts.key():
        loaded = _load_here(opts)
    return loaded[1]


def model_identity() -> dict:
    """Name, version and sha256 of the model loaded in this worker."""
    if _LOADED is None:
        return {}
    lm = _LOADED[1]
    return {"model": lm.manifest.name, "model_version": lm.manifest.version, "model_sha256": lm.artifact.sha256}


def install_model(client, opts: RunOptions) -> dict:
    """Register :class:`ModelPlugin` on every worker (present and future) and return the model
    identity they loaded; refuse workers that loaded different artifacts.

    Raises
    ------
    InputError
        the model did not load on a worker (its one-line error), or workers disagree.
    """
    try:
        client.register_plugin(ModelPlugin(opts), name=PLUGIN_NAME)
    except Exception as exc:  # noqa: BLE001 - a worker's failure comes back as whatever it raised
        raise InputError(f"the model did not load on a worker: {' '.join(str(exc).split())}") from None
    ids = client.run(model_identity)
    distinct = {tuple(sorted(v.items())) for v in ids.values()}
    if len(distinct) != 1:
        raise InputError("the workers loaded different model artifacts; install the same model on every worker")
    return dict(next(iter(distinct)))
