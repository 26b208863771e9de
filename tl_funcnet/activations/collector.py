"""Collect activations at any set of hook sites over a corpus, in memory or streamed to disk.

Results are token matrices: one row per real (non-pad) token, in corpus order, one column per unit. Per-head
sites (``attn.hook_z``) are flattened to ``n_heads * d_head`` columns.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
import weakref
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .._io import write_json_atomic
from ..errors import FuncnetError
from ..hooks import Intervention, custom
from ..hooks.sites import check_sites, site_layer
from .store import Activations, RowFile
from .tokens import batches, forward_kwargs, pad_id, tokenize

_STORE_VERSION = 1


class ActivationCollector:
    """Record activations at ``sites`` while the model reads a corpus.

    Args:
        model: a TransformerLens hooked model.
        sites: hook names, e.g. ``[f"blocks.{l}.mlp.hook_post" for l in range(n_layers)]``.
        batch_size: sequences per forward pass.
        max_tokens_per_seq: cap on tokens per text (``None``: up to ``n_ctx``).
        max_tokens: stop after this many tokens in total (texts are taken in order).
        memory_budget_mb: above this size the result streams to ``store_dir`` (a temporary folder if unset):
            rows go to ``.npy`` files by positioned writes, checkpointed per batch, finalized atomically, and
            opened memory-mapped.
        store_dir: where to stream; an interrupted run with the same settings resumes there. Without it the
            store is temporary and deleted once the result is garbage collected.
        dtype: storage dtype (float32 or float16).
        stop_at_layer: ``"auto"`` stops the forward after the last block any site needs.
        intervention: an optional Intervention active while collecting.
    """

    def __init__(self, model: Any, sites: Sequence[str] | str, *, batch_size: int = 8,
                 max_tokens_per_seq: int | None = 128, max_tokens: int | None = None,
                 memory_budget_mb: float = 2048, store_dir: str | os.PathLike[str] | None = None,
                 dtype: torch.dtype = torch.float32, prepend_bos: bool | None = None,
                 stop_at_layer: int | str | None = "auto", intervention: Intervention | None = None,
                 progress: bool = True):
        self.model = model
        self.sites = (sites,) if isinstance(sites, str) else tuple(sites)
        self.batch_size = batch_size
        self.max_tokens_per_seq = max_tokens_per_seq
        self.max_tokens = max_tokens
        self.memory_budget_mb = memory_budget_mb
        self.store_dir = store_dir
        self.dtype = dtype
        self.prepend_bos = prepend_bos
        self.stop_at_layer = stop_at_layer
        self.intervention = intervention or Intervention()
        self.progress = progress

    # ------------------------------------------------------------------ checks

    def _validate(self) -> None:
        if not self.sites:
            raise FuncnetError("no sites given; pass hook names such as 'blocks.0.hook_resid_post'")
        if len(set(self.sites)) != len(self.sites):
            raise FuncnetError(f"sites contain duplicates: {list(self.sites)}")
        check_sites(self.model, self.sites)
        self.intervention.validate(self.model)
        if self.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise FuncnetError(f"dtype should be a floating torch dtype, got {self.dtype}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise FuncnetError(f"max_tokens should be >= 1 or None, got {self.max_tokens}")

    def _stop_layer(self) -> int | None:
        if self.stop_at_layer != "auto":
            return self.stop_at_layer  # type: ignore[return-value]
        if getattr(getattr(self.model, "cfg", None), "attention_dir", "causal") == "bidirectional":
            return None
        layers = [site_layer(s) for s in self.sites]
        if any(l is None for l in layers):
            return None
        top = max(layers) + 1  # type: ignore[type-var]
        return None if top >= self.model.cfg.n_layers else top

    def _unit_counts(self, seqs: list[Tensor]) -> dict[str, int]:
        """Columns per site, from one short forward pass (exact for every site and model class)."""
        shapes: dict[str, int] = {}

        def probe(act: Tensor, hook: Any) -> None:
            shapes[hook.name] = int(np.prod(act.shape[2:]))

        iv = self.intervention
        for s in self.sites:
            iv = iv + custom(s, probe)
        with torch.no_grad(), iv.applied(self.model):
            self._forward(seqs[0][:2].unsqueeze(0), None)
        missing = [s for s in self.sites if s not in shapes]
        if missing:
            raise FuncnetError(f"sites {missing} did not fire during a forward pass of {type(self.model).__name__}"
                               f" (some hooks need cfg flags such as use_attn_result=True)")
        return shapes

    def _forward(self, tokens: Tensor, batch: Any) -> None:
        kwargs = forward_kwargs(self.model, batch) if batch is not None else {}
        stop = self._stop_layer()
        if stop is not None:
            kwargs["stop_at_layer"] = stop
        elif getattr(getattr(self.model, "cfg", None), "attention_dir", "causal") != "bidirectional":
            kwargs["return_type"] = None
        device = next(self.model.parameters()).device
        self.model(tokens.to(device), **kwargs)

    # ------------------------------------------------------------------ main

    def collect(self, texts: Any) -> Activations:
        """Run the model over ``texts`` (split name, path, list of strings or token ids) and return the matrix."""
        self._validate()
        seqs = tokenize(self.model, texts, max_tokens_per_seq=self.max_tokens_per_seq, prepend_bos=self.prepend_bos)
        if self.max_tokens is not None:
            seqs = _cap_total(seqs, self.max_tokens)
        lengths = torch.tensor([len(s) for s in seqs])
        offsets = torch.zeros(len(seqs) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths, 0)
        n_tokens = int(offsets[-1])
        units = self._unit_counts(seqs)
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        n_bytes = n_tokens * sum(units.values()) * itemsize
        token_ids = torch.cat(seqs)

        stream = n_bytes > self.memory_budget_mb * 2**20 or self.store_dir is not None
        if stream:
            return self._collect_to_disk(seqs, offsets, token_ids, units)
        # empty, not zeros: every row is written once, and the writer thread takes the page faults of fresh
        # memory (seconds for gigabytes on a VM) while the forward passes go on
        buffers = {s: torch.empty((n_tokens, units[s]), dtype=self.dtype) for s in self.sites}

        def to_memory(site: str, start: int, rows: Tensor) -> None:
            target = buffers[site][start:start + len(rows)]
            if self.dtype == torch.bfloat16:
                target.copy_(rows)
            else:
                # numpy copies on this thread alone; a torch copy here would start a second OpenMP team
                # that competes with the forward pass for the cores
                np.copyto(target.numpy(), rows.numpy())

        sink = self._sink(to_memory, seqs, units)
        try:
            self._run(seqs, offsets, sink, done=set())
        finally:
            sink.close()
        return Activations(buffers, token_ids, offsets, self.sites)

    def _sink(self, write: Any, seqs: list[Tensor], units: dict[str, int],
              checkpoint: Any = None) -> "_BackgroundSink":
        """A writer thread whose staging slabs fit any site's chunk of the largest batch."""
        slab_numel = self.batch_size * max(len(s) for s in seqs) * max(units.values())
        in_flight = int(min(self.memory_budget_mb, _MAX_IN_FLIGHT_MB) * 2**20)
        return _BackgroundSink(write, self.dtype, slab_numel, in_flight, checkpoint=checkpoint)

    def _run(self, seqs: list[Tensor], offsets: Tensor, sink: "_BackgroundSink", done: set[int]) -> None:
        from tqdm.auto import tqdm

        todo = [i for i in range(len(seqs)) if i not in done]
        current: dict[str, Any] = {}

        def recorder(site: str):
            def hook_fn(act: Tensor, hook: Any) -> None:
                sink.put(site, act.detach(), current["spans"])
            return hook_fn

        iv = self.intervention
        for s in self.sites:
            iv = iv + custom(s, recorder(s))
        sub = [seqs[i] for i in todo]
        bar = tqdm(total=int(sum(len(s) for s in sub)), unit="tok", desc="collect",
                   disable=not self.progress, leave=False)
        with torch.no_grad(), iv.applied(self.model):
            for batch in batches(sub, self.batch_size, pad_id=pad_id(self.model)):
                batch.index = [todo[j] for j in batch.index]
                current["spans"] = [(row, int(offsets[i]), len(seqs[i])) for row, i in enumerate(batch.index)]
                self._forward(batch.tokens, batch)
                bar.update(batch.n_real)
                sink.batch_done(batch.index)
        bar.close()

    def _collect_to_disk(self, seqs: list[Tensor], offsets: Tensor, token_ids: Tensor,
                         units: dict[str, int]) -> Activations:
        import tempfile

        if self.dtype == torch.bfloat16:
            raise FuncnetError("bfloat16 cannot be memory-mapped; use float32 or float16 to stream to disk")
        if self.store_dir is not None:
            return self._stream(Path(self.store_dir), seqs, offsets, token_ids, units)
        # nobody asked to keep the store: it lives in a scratch folder that goes with the result (arrays still
        # in use stay readable, their mappings outlive the files), or at once if the collection fails
        scratch = Path(tempfile.mkdtemp(prefix="tlfn_acts_"))
        try:
            acts = self._stream(scratch / "store", seqs, offsets, token_ids, units)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        weakref.finalize(acts, shutil.rmtree, scratch, ignore_errors=True)
        return acts

    def _stream(self, final: Path, seqs: list[Tensor], offsets: Tensor, token_ids: Tensor,
                units: dict[str, int]) -> Activations:
        if final.exists() and (final / "manifest.json").exists():
            raise FuncnetError(f"{final} already holds a finished activation store; load it with "
                               f"Activations.load({str(final)!r}) or choose another store_dir")
        partial = final.with_name(final.name + ".partial")
        key = _fingerprint(self.sites, token_ids, offsets, units, self.dtype)
        progress_file = partial / "progress.json"
        done: set[int] = set()
        np_dtype = np.dtype(str(self.dtype).replace("torch.", ""))
        resume = partial.exists() and progress_file.exists()
        if resume:
            prog = json.loads(progress_file.read_text())
            if prog.get("key") != key:
                raise FuncnetError(f"{partial} holds an interrupted collection with other settings or texts; "
                                   f"delete it or choose another store_dir")
            if prog.get("boot_id") != _boot_id():
                # rows are written to the page cache without fsync: a killed process keeps them, a machine
                # restart may not, so a checkpoint from before a restart is not trusted
                warnings.warn(f"{partial} was interrupted before a machine restart; its rows may not have reached "
                              f"the disk, so the collection starts over", stacklevel=3)
                resume = False
            else:
                done = set(prog["done"])
        if not resume:
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True)
        n_tokens = int(offsets[-1])
        files: dict[str, RowFile] = {}
        try:
            for i, s in enumerate(self.sites):
                files[s] = RowFile(partial / f"site_{i:03d}.npy", n_tokens, units[s], np_dtype, create=not resume)
            state = {"key": key, "boot_id": _boot_id()}
            if not resume:
                write_json_atomic(progress_file, {**state, "done": []})

            def checkpoint(index: list[int]) -> None:
                done.update(index)
                write_json_atomic(progress_file, {**state, "done": sorted(done)})

            def to_disk(site: str, start: int, rows: Tensor) -> None:
                files[site].write(start, rows.numpy())

            sink = self._sink(to_disk, seqs, units, checkpoint=checkpoint)
            try:
                self._run(seqs, offsets, sink, done=set(done))
            finally:
                sink.close()
        finally:
            for f in files.values():
                f.close()
        torch.save({"token_ids": token_ids, "offsets": offsets}, partial / "tokens.pt")
        write_json_atomic(partial / "manifest.json", {
            "format": "tl_funcnet.activations", "version": _STORE_VERSION, "sites": list(self.sites),
            "files": {s: f"site_{i:03d}.npy" for i, s in enumerate(self.sites)}, "n_tokens": n_tokens,
            "dtype": str(np_dtype),
        })
        progress_file.unlink()
        os.replace(partial, final)
        return Activations.load(final)


_MAX_IN_FLIGHT_MB = 256  # queued rows waiting for the writer thread, at most (and at most the budget)
Spans = list[tuple[int, int, int]]  # (row in the padded batch, first row in the result, number of real tokens)


class _BackgroundSink:
    """Hands each batch's rows to a writer thread, so the forward passes never wait on disk or fresh memory.

    The hook packs a batch's real tokens into one chunk per site (a copy: later hooks may edit the activation
    in place) and queues it; the writer thread calls ``write(site, first_row, rows)`` for each sequence and,
    once all of a batch's chunks are written, ``checkpoint(batch_index)``. Chunks live in staging slabs of
    ``slab_numel`` elements that are reused (fresh memory costs a page fault per 4 KiB, seconds per gigabyte
    on a VM); the slabs hold at most ``in_flight_bytes`` together (at least one slab): beyond it the forward
    waits, which bounds memory when the writer is slower than the model (the kernel throttles writers once
    dirty pages pile up; on the 2-core machine buffered writes fell from 1.3 GB/s to 0.4 GB/s after 1.5 GB).
    """

    def __init__(self, write: Any, dtype: torch.dtype, slab_numel: int, in_flight_bytes: int,
                 checkpoint: Any = None):
        import queue
        import threading

        self.write, self.dtype, self.checkpoint = write, dtype, checkpoint
        self.slab_numel = slab_numel
        slab_bytes = slab_numel * torch.empty((), dtype=dtype).element_size()
        self.max_slabs = max(1, in_flight_bytes // slab_bytes)
        self.n_slabs = 0
        self.free: list[Tensor] = []  # staging slabs the writer has finished with
        self.error: BaseException | None = None
        self.space = threading.Condition()
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._write_loop, name="tl_funcnet-collect-writer", daemon=True)
        self.thread.start()

    def put(self, site: str, act: Tensor, spans: Spans) -> None:
        n_real = sum(length for _, _, length in spans)
        width = int(np.prod(act.shape[2:]))
        slab = self._take_slab()
        chunk = slab[:n_real * width].view(n_real, width)
        placed, r = [], 0
        for row, start, length in spans:
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
                    self.checkpoint(payload)
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


def _cap_total(seqs: list[Tensor], max_tokens: int) -> list[Tensor]:
    out, total = [], 0
    for s in seqs:
        if total >= max_tokens:
            break
        take = s[: max_tokens - total]
        out.append(take)
        total += len(take)
    return out


def _boot_id() -> str | None:
    """This boot's identifier (Linux), so a checkpoint can tell whether the machine restarted since."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _fingerprint(sites: Sequence[str], token_ids: Tensor, offsets: Tensor, units: dict[str, int],
                 dtype: torch.dtype) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([list(sites), units, str(dtype)]).encode())
    h.update(token_ids.numpy().tobytes())
    h.update(offsets.numpy().tobytes())
    return h.hexdigest()


def layer_sites(model: Any, pattern: str, layers: Sequence[int] | None = None) -> list[str]:
    """Expand a site pattern over layers: ``layer_sites(model, "mlp.hook_post")`` gives every block's site.

    ``pattern`` may be a suffix (``"hook_mlp_out"``) or contain ``{layer}``.
    """
    n = model.cfg.n_layers
    layers = range(n) if layers is None else layers
    if "{layer}" in pattern:
        return [pattern.format(layer=l) for l in layers]
    pattern = re.sub(r"^blocks\.\d+\.", "", pattern)
    return [f"blocks.{l}.{pattern}" for l in layers]


def collect(model: Any, texts: Any, sites: Sequence[str] | str, **kwargs: Any) -> Activations:
    """One-call form of :class:`ActivationCollector`."""
    return ActivationCollector(model, sites, **kwargs).collect(texts)


__all__ = ["ActivationCollector", "collect", "layer_sites"]
