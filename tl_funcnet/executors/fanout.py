"""Run a sweep's chunks on any ``concurrent.futures.Executor`` (threads, processes, Dask, Ray).

A chunk is a module-level task function, the model's :class:`~tl_funcnet.models.ref.ModelRef` and plain
parameters; each worker loads the model once (:func:`tl_funcnet.models.ref.using`). The chunks of a sweep are
fixed by the sweep alone (never by the number of workers) and results come back in chunk order, so a sweep
gives the same numbers on any executor. A chunk that raises, or whose worker dies, runs once more; if it fails
again the whole sweep raises :class:`~tl_funcnet.errors.ChunkError` naming the chunk and its parameters.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import ChunkError, FuncnetError
from ..models.ref import ModelRef, using


@dataclass(frozen=True)
class Chunk:
    """One independent piece of a sweep: ``task(model, **params)``; ``label`` names it in reports."""

    label: str
    params: dict[str, Any] = field(default_factory=dict)


def check_executor(executor: Any) -> None:
    """Refuse anything that is not a ``concurrent.futures.Executor`` (Dask: ``client.get_executor()``)."""
    if not isinstance(executor, cf.Executor):
        hint = (" For Dask pass client.get_executor(); for Ray, tl_funcnet.executors.RayExecutor()."
                if type(executor).__module__.split(".")[0] in ("distributed", "dask", "ray") else "")
        raise FuncnetError(f"executor should be a concurrent.futures.Executor (ThreadPoolExecutor, "
                           f"ProcessPoolExecutor, Dask's client.get_executor(), RayExecutor), got "
                           f"{type(executor).__name__}.{hint}")


def model_ref(model: Any) -> ModelRef:
    """What a fanned-out sweep sends instead of its model: a :class:`ModelRef` as it is, or the reference of a
    model loaded by :func:`tl_funcnet.models.load` (pinned to its digest); anything else is refused."""
    return ModelRef.of(model).check()


def run_chunk(task: Callable[..., Any], ref: ModelRef | None, params: dict[str, Any], attempt: int) -> Any:
    """What a worker runs: the task on this process's cached model (``attempt`` makes a retry a new task)."""
    if ref is None:
        return task(None, **params)
    with using(ref) as model:
        return task(model, **params)


_reused: dict[Any, Any] = {}
_reused_lock = threading.Lock()


def reuse(key: Any, make: Callable[[], Any]) -> Any:
    """This process's value for ``key``, made once: the set-up a sweep's chunks share on one worker (a target
    run, a calibration). Only the latest key is kept, so a worker holds one sweep's set-up at a time."""
    with _reused_lock:
        if key in _reused:
            return _reused[key]
    value = make()
    with _reused_lock:
        _reused.clear()
        _reused[key] = value
    return value


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"<{type(value).__name__} {tuple(shape)}>"
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return f"[{', '.join(map(repr, value[:3]))}, ... {len(value)} items]"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _failure(what: str, chunk: Chunk, index: int, n: int, ref: ModelRef | None, error: BaseException) -> ChunkError:
    cause = getattr(error, "cause", None)  # Ray wraps the task's exception in a RayTaskError
    error = cause if isinstance(cause, BaseException) else error
    params = ", ".join(f"{k}={_describe(v)}" for k, v in chunk.params.items())
    model = f" on {ref!r}" if ref is not None else ""
    return ChunkError(f"{what}: chunk {index + 1} of {n} ({chunk.label}){model} failed twice: "
                      f"{type(error).__name__}: {error}. Its parameters: {params or 'none'}. No partial results "
                      f"were returned; fix the cause (or run without an executor to debug it in process)")


def _submit(executor: cf.Executor, task: Callable[..., Any], ref: ModelRef | None, chunk: Chunk,
            attempt: int) -> cf.Future:
    try:
        return executor.submit(run_chunk, task, ref, chunk.params, attempt)
    except Exception as e:  # a broken or shut-down pool refuses new work
        failed: cf.Future = cf.Future()
        failed.set_exception(e)
        return failed


def fan_out(executor: cf.Executor, task: Callable[..., Any], chunks: Sequence[Chunk], *, ref: ModelRef | None = None,
            what: str = "sweep") -> list[Any]:
    """Every chunk's result, in chunk order; retries a failed chunk once, then raises :class:`ChunkError`."""
    check_executor(executor)
    futures = [_submit(executor, task, ref, c, 0) for c in chunks]
    cf.wait(futures)
    failed = [i for i, f in enumerate(futures) if f.exception() is not None]
    for i in failed:
        futures[i] = _submit(executor, task, ref, chunks[i], 1)
    cf.wait([futures[i] for i in failed])
    for i in failed:
        error = futures[i].exception()
        if error is not None:
            raise _failure(what, chunks[i], i, len(chunks), ref, error) from error
    return [f.result() for f in futures]


def spans(n: int, size: int) -> list[range]:
    """``range(n)`` cut into consecutive spans of ``size`` (the last may be shorter)."""
    return [range(s, min(n, s + size)) for s in range(0, n, size)]


FORWARDS_PER_CHUNK = 8  # the default chunk of a patching sweep: enough forwards to amortise a worker's set-up


def forward_spans(n: int, per_forward: int, chunk_size: int | None) -> list[range]:
    """``range(n)`` cut into chunks of whole forwards (``per_forward`` items each): ``chunk_size`` items rounded
    up to whole forwards, or :data:`FORWARDS_PER_CHUNK` forwards. Cut this way, every forward of a fanned-out
    sweep holds the items it holds in process."""
    from ..hooks.values import positive_int

    forwards = FORWARDS_PER_CHUNK if chunk_size is None else -(-positive_int(chunk_size, "chunk_size") // per_forward)
    return spans(n, per_forward * forwards)


__all__ = ["Chunk", "check_executor", "model_ref", "run_chunk", "fan_out", "spans", "forward_spans", "reuse"]
