"""One entry point over tasks, node kinds and methods."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any, Iterable

from ..errors import FuncnetError
from ..models.ref import as_model
from .attribution import attribution_patch
from .exact import exact_patch
from .metrics import Metric
from .nodes import NodeSet, node_grid
from .result import PatchResult
from .tasks import Task

METHODS = ("exact", "atp", "relp")


def run_patching(model: Any, task: Task, *, method: str = "exact", nodes: str | NodeSet = "mlp",
                 metric: Metric | None = None, direction: str = "denoise", max_rows: int = 256,
                 rules: Iterable[str] | str | None = None, executor: Executor | None = None) -> PatchResult:
    """Patch ``task`` on ``model`` with ``method`` over ``nodes`` (a node kind such as ``"mlp"`` or a NodeSet).

    The default metric is the task's logit difference. ``max_rows`` caps the rows of one exact forward;
    ``rules`` chooses RelP's LRP rules (``method="relp"`` only); ``executor`` fans exact patching out (see
    :func:`exact_patch`; the gradient methods are one backward pass and run in process).
    """
    if method not in METHODS:
        raise FuncnetError(f"method should be one of {list(METHODS)}, got {method!r}")
    if rules is not None and method != "relp":
        raise FuncnetError(f"rules= applies to method='relp' only, not {method!r}")
    if executor is not None and method != "exact":
        raise FuncnetError(f"executor= applies to method='exact' only (attribution methods are one backward pass), "
                           f"not {method!r}")
    if not isinstance(task, Task):
        raise FuncnetError(f"task should be a Task from load_task(...), got {type(task).__name__}")
    ns = node_grid(as_model(model), nodes, task.n_pos) if isinstance(nodes, str) else nodes
    m = metric if metric is not None else task.metric()
    if method == "exact":
        return exact_patch(model, task.clean, task.corrupted, ns, m, direction=direction, max_rows=max_rows,
                           executor=executor)
    return attribution_patch(as_model(model), task.clean, task.corrupted, ns, m, direction=direction, method=method,
                             rules=rules)


__all__ = ["run_patching", "METHODS"]
