"""Ray as a ``concurrent.futures.Executor`` (Ray has none of its own; Dask's is ``client.get_executor()``).

>>> import ray; ray.init(address="auto")     # or ray.init(num_cpus=2) on a laptop
>>> with RayExecutor() as ex:
...     scores = exact_edge_scores(ModelRef("smollm2-135m"), graph, clean, corrupted, metric, executor=ex)

Each submitted call becomes a Ray task (``num_cpus`` per task); Ray reuses its worker processes, so a worker
loads a model once for all the chunks it runs. Ray is imported only when a RayExecutor is made.
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any, Callable

from ..errors import FuncnetError


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise FuncnetError("RayExecutor needs Ray: pip install 'tl_funcnet[ray]'") from None
    return ray


class RayExecutor(cf.Executor):
    """Submit calls as Ray tasks on the cluster ``ray.init`` connected to (``num_cpus`` each).

    Ray must be initialised first (``ray.init(...)``): where the cluster is and how many CPUs it has are the
    caller's choices, so this class never starts or stops Ray itself.
    """

    def __init__(self, *, num_cpus: float = 1, max_retries: int = 0):
        ray = _ray()
        if not ray.is_initialized():
            raise FuncnetError("Ray is not initialised: call ray.init() (a local cluster) or "
                               "ray.init(address='auto') (a running cluster) before RayExecutor()")
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or not num_cpus > 0:
            raise FuncnetError(f"num_cpus should be a positive number of CPUs per task, got {num_cpus!r}")
        self._options = {"num_cpus": num_cpus, "max_retries": int(max_retries)}
        self._remote: dict[Callable[..., Any], Any] = {}
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        ray = _ray()
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = ray.remote(**self._options)(fn)
        return remote.remote(*args, **kwargs).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True


__all__ = ["RayExecutor"]
