"""Sweeps beyond one process: chunks with a model reference, on any ``concurrent.futures.Executor``.

>>> from dask.distributed import Client, LocalCluster
>>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))
>>> result = exact_patch(ModelRef("smollm2-135m"), clean, corrupted, nodes, metric, executor=client.get_executor())

Dask and Ray are optional (``pip install 'tl_funcnet[dask]'`` / ``'tl_funcnet[ray]'``) and imported only when
used; without an executor every sweep runs in process as before.
"""

from ..models.ref import ModelRef as ModelRef
from .fanout import Chunk as Chunk
from .fanout import check_executor as check_executor
from .fanout import fan_out as fan_out
from .ray import RayExecutor as RayExecutor

__all__ = ["ModelRef", "Chunk", "check_executor", "fan_out", "RayExecutor"]
