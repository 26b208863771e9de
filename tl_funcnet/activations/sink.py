"""A writer thread between the forward passes and where collected rows go (memory or disk).

The record hook packs a batch's real tokens into one chunk per site (a copy: later hooks may edit the
activation in place) and queues it; the writer thread calls ``write(site, first_row, rows)`` for each
sequence and, once a batch's chunks are written, ``checkpoint(batch_index)``. Chunks live in staging slabs
that are reused (fresh memory costs a page fault per 4 KiB, seconds per gigabyte on a VM); the slabs in
flight hold at most ``in_flight_bytes`` together (at least one slab): beyond it the forward waits, which
bounds memory when the writer is slower than the model.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import FuncnetError

Spans = list[tuple[int, int, int]]  # (row in the padded batch, first row in the result, number of real tokens)
Write = Callable[[str, int, Tensor], None]


class BackgroundSink:
    """Hands each batch's rows to a writer thread, so the forward passes never wait on disk or fresh memory."""

    def __init__(self, write: Write, dtype: torch.dtype, slab_numel: int, in_flight_bytes: int,
                 checkpoint: Callable[[list[int]], None] | None = None):
        self.write, self.dtype, self.checkpoint = write, dtype, checkpoint
        self.slab_numel = slab_numel
        slab_bytes = slab_numel * torch.empty((), dtype=dtype).element_size()
        self.max_slabs = max(1, in_flight_bytes // slab_bytes)
        self.n_slabs = 0
        self.free: list[Tensor] = []  # staging slabs the writer has finished with
        self.error: BaseException | None = None
        self.spans: Spans = []  # the current batch's spans, set by the collector before each forward
        self.space = threading.Condition()
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._write_loop, name="tl_funcnet-collect-writer", daemon=True)
        self.thread.start()

    def __call__(self, site: str, act: Tensor) -> None:
        """The record hook's sink: queue the current batch's real rows of ``act`` for ``site``."""
        act = act.detach()
        n_real = sum(length for _, _, length in self.spans)
        width = int(np.prod(act.shape[2:]))
        slab = self._take_slab()
        chunk = slab[:n_real * width].view(n_real, width)
        placed, r = [], 0
        for row, start, length in self.spans:
            chunk[r:r + length].copy_(act[row, :length].reshape(length, -1))
            placed.append((r, start, length))
            r += length
        self.queue.put(("rows", (site, chunk, placed, slab)))

    def _take_slab(self) -> Tensor:
        """A free staging slab, a new one while under the limit, or else the next one the writer frees."""
        with self.space:
            self.space.wait_for(lambda: self.error is not None or self.free or self.n_slabs < self.max_slabs)
            self._raise_if_failed()
            if self.free:
                return self.free.pop()
            self.n_slabs += 1
            return torch.empty(self.slab_numel, dtype=self.dtype)

    def batch_done(self, index: list[int]) -> None:
        self._raise_if_failed()
        if self.checkpoint is not None:
            self.queue.put(("checkpoint", index))  # after the batch's rows: the queue is first in, first out

    def close(self) -> None:
        """Wait for every queued write; re-raise a failure of the writer thread."""
        self.queue.put(None)
        self.thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise FuncnetError(f"storing activations failed: {self.error}") from self.error

    def _write_loop(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain without writing; close() reports the first failure
            try:
                kind, payload = item
                if kind == "checkpoint":
                    self.checkpoint(payload)  # type: ignore[misc]
                    continue
                site, chunk, placed, slab = payload
                for r, start, length in placed:
                    self.write(site, start, chunk[r:r + length])
                with self.space:
                    self.free.append(slab)
                    self.space.notify_all()
            except BaseException as err:  # noqa: BLE001 - handed to the collecting thread
                with self.space:
                    self.error = err
                    self.space.notify_all()


__all__ = ["BackgroundSink", "Spans"]
