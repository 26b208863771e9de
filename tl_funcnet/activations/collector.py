"""Collect activations at any set of hook sites over a corpus, in memory or streamed to disk.

Results are token matrices: one row per real (non-pad) token, in corpus order, one column per unit. Per-head
sites (``attn.hook_z``) are flattened to ``n_heads * d_head`` columns. Rows travel from a ``record`` hook to a
writer thread (:mod:`.sink`); a streamed collection is checkpointed and resumable (:mod:`.resume`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .._io import check_target, write_json_atomic
from ..errors import CheckpointError, FuncnetError
from ..hooks import Intervention, record
from ..hooks.sites import resolve_sites, site_layer
from ..hooks.values import positive_int
from . import resume
from .forward import forward, is_encoder
from .sink import BackgroundSink
from .store import KIND, Activations, RowFile
from .tokens import batches, pad_id, tokenize

_MAX_IN_FLIGHT_MB = 256  # queued rows waiting for the writer thread, at most (and at most the budget)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class ActivationCollector:
    """Record activations at ``sites`` while the model reads a corpus.

    Args:
        model: a TransformerLens hooked model.
        sites: hook names, or a per-layer suffix such as ``"mlp.hook_post"`` (every layer, or ``layers``).
        layers: the layers a per-layer suffix expands to (default all).
        batch_size: sequences per forward pass.
        max_tokens_per_seq: cap on tokens per text (``None``: up to ``n_ctx``).
        max_tokens: stop after this many tokens in total (texts are taken in order).
        memory_budget_mb: above this size the result streams to ``store_dir`` (a temporary folder if unset):
            rows go to ``.npy`` files by positioned writes, checkpointed per batch, finalized atomically, and
            opened memory-mapped.
        store_dir: where to stream; an interrupted run with the same model, sites, texts, intervention and
            dtype resumes there (anything else is refused unless ``restart=True``). Without it the store is
            temporary and deleted once the result is garbage collected.
        restart: discard an interrupted collection in ``store_dir`` and start over.
        dtype: storage dtype (float32, float16, bfloat16 in memory only, or float64).
        stop_at_layer: ``"auto"`` stops the forward after the last block any site needs.
        intervention: an optional Intervention active while collecting.
    """

    def __init__(self, model: Any, sites: Sequence[str] | str, *, layers: Sequence[int] | None = None,
                 batch_size: int = 8, max_tokens_per_seq: int | None = 128, max_tokens: int | None = None,
                 memory_budget_mb: float = 2048, store_dir: str | os.PathLike[str] | None = None,
                 restart: bool = False, dtype: torch.dtype = torch.float32, prepend_bos: bool | None = None,
                 stop_at_layer: int | str | None = "auto", intervention: Intervention | None = None,
                 progress: bool = True):
        self.model = model
        self.sites = tuple(resolve_sites(model, sites, layers))
        self.batch_size = positive_int(batch_size, "batch_size")
        self.max_tokens_per_seq = max_tokens_per_seq
        self.max_tokens = None if max_tokens is None else positive_int(max_tokens, "max_tokens")
        if isinstance(memory_budget_mb, bool) or not isinstance(memory_budget_mb, (int, float)) \
                or not memory_budget_mb > 0:
            raise FuncnetError(f"memory_budget_mb should be a positive number, got {memory_budget_mb!r}")
        self.memory_budget_mb = float(memory_budget_mb)
        self.store_dir = None if store_dir is None else Path(store_dir)
        if not isinstance(restart, bool):
            raise FuncnetError(f"restart should be True or False, got {restart!r}")
        self.restart = restart
        if dtype not in _DTYPES:
            raise FuncnetError(f"dtype should be one of {[str(d) for d in _DTYPES]}, got {dtype!r}")
        self.dtype = dtype
        self.prepend_bos = prepend_bos
        if not (stop_at_layer in ("auto", None) or (isinstance(stop_at_layer, int) and not isinstance(stop_at_layer, bool))):
            raise FuncnetError(f"stop_at_layer should be 'auto', None or a layer index, got {stop_at_layer!r}")
        self.stop_at_layer = stop_at_layer
        self.intervention = intervention or Intervention()
        if not isinstance(self.intervention, Intervention):
            raise FuncnetError(f"intervention should be an Intervention, got {type(intervention).__name__}")
        self.intervention.validate(model)
        self.progress = progress
        if self.store_dir is not None:
            if (self.store_dir / "manifest.json").exists() and KIND.holds(self.store_dir):
                raise FuncnetError(f"{self.store_dir} already holds a finished activation store; load it with "
                                   f"Activations.load({str(self.store_dir)!r}) or choose another store_dir")
            check_target(self.store_dir, KIND)

    # ------------------------------------------------------------------ forward passes

    def _forward_kwargs(self) -> dict[str, Any]:
        if is_encoder(self.model):
            return {}
        stop = self.stop_at_layer
        if stop == "auto":
            layers = [site_layer(s) for s in self.sites]
            top = None if any(l is None for l in layers) else max(layers) + 1  # type: ignore[type-var]
            stop = None if top is None or top >= self.model.cfg.n_layers else top
        return {"stop_at_layer": stop} if stop is not None else {"return_type": None}

    def _unit_counts(self, seqs: list[Tensor]) -> dict[str, int]:
        """Columns per site, from one short forward pass (exact for every site and model class)."""
        shapes: dict[str, int] = {}
        probe = record(list(self.sites), lambda site, act: shapes.__setitem__(site, int(np.prod(act.shape[2:]))))
        first = next(batches([seqs[0][:2]], 1, pad_id=pad_id(self.model)))
        with torch.no_grad(), (self.intervention + probe).applied(self.model):
            forward(self.model, first, **self._forward_kwargs())
        missing = [s for s in self.sites if s not in shapes]
        if missing:
            raise FuncnetError(f"sites {missing} did not fire during a forward pass of {type(self.model).__name__}"
                               f" (some hooks need cfg flags such as use_attn_result=True)")
        return shapes

    def _run(self, seqs: list[Tensor], offsets: Tensor, sink: BackgroundSink, done: set[int]) -> None:
        from tqdm.auto import tqdm

        todo = [i for i in range(len(seqs)) if i not in done]
        sub = [seqs[i] for i in todo]
        bar = tqdm(total=int(sum(len(s) for s in sub)), unit="tok", desc="collect", disable=not self.progress,
                   leave=False)
        iv = self.intervention + record(list(self.sites), sink)
        kwargs = self._forward_kwargs()
        with torch.no_grad(), iv.applied(self.model):
            for batch in batches(sub, self.batch_size, pad_id=pad_id(self.model)):
                batch.index = [todo[j] for j in batch.index]
                sink.spans = [(row, int(offsets[i]), len(seqs[i])) for row, i in enumerate(batch.index)]
                forward(self.model, batch, **kwargs)
                bar.update(batch.n_real)
                sink.batch_done(batch.index)
        bar.close()

    def _sink(self, write: Any, seqs: list[Tensor], units: dict[str, int], checkpoint: Any = None) -> BackgroundSink:
        """A writer thread whose staging slabs fit any site's chunk of the largest batch."""
        slab_numel = self.batch_size * max(len(s) for s in seqs) * max(units.values())
        in_flight = int(min(self.memory_budget_mb, _MAX_IN_FLIGHT_MB) * 2**20)
        return BackgroundSink(write, self.dtype, slab_numel, in_flight, checkpoint=checkpoint)

    # ------------------------------------------------------------------ main

    def collect(self, texts: Any) -> Activations:
        """Run the model over ``texts`` (split name, path, list of strings or token ids) and return the matrix."""
        seqs = tokenize(self.model, texts, max_tokens_per_seq=self.max_tokens_per_seq, prepend_bos=self.prepend_bos)
        if self.max_tokens is not None:
            seqs = _cap_total(seqs, self.max_tokens)
        offsets = torch.zeros(len(seqs) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(torch.tensor([len(s) for s in seqs]), 0)
        n_tokens = int(offsets[-1])
        units = self._unit_counts(seqs)
        n_bytes = n_tokens * sum(units.values()) * torch.empty((), dtype=self.dtype).element_size()
        token_ids = torch.cat(seqs)
        if n_bytes > self.memory_budget_mb * 2**20 or self.store_dir is not None:
            return self._collect_to_disk(seqs, offsets, token_ids, units)
        # empty, not zeros: every row is written once, and the writer thread takes the page faults of fresh
        # memory (seconds for gigabytes on a VM) while the forward passes go on
        buffers = {s: torch.empty((n_tokens, units[s]), dtype=self.dtype) for s in self.sites}

        def to_memory(site: str, start: int, rows: Tensor) -> None:
            target = buffers[site][start:start + len(rows)]
            if self.dtype == torch.bfloat16:
                target.copy_(rows)
            else:  # numpy copies on this thread alone; a torch copy would start a second OpenMP team
                np.copyto(target.numpy(), rows.numpy())

        sink = self._sink(to_memory, seqs, units)
        try:
            self._run(seqs, offsets, sink, done=set())
        finally:
            sink.close()
        return Activations(buffers, token_ids, offsets, self.sites)

    def _collect_to_disk(self, seqs: list[Tensor], offsets: Tensor, token_ids: Tensor,
                         units: dict[str, int]) -> Activations:
        if self.dtype == torch.bfloat16:
            raise FuncnetError("bfloat16 cannot be stored as .npy; use float32 or float16 to stream to disk")
        if self.store_dir is not None:
            return self._stream(self.store_dir, seqs, offsets, token_ids, units)
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
        partial = final.with_name(final.name + ".partial")
        key = resume.resume_key(self.model, self.sites, units, token_ids, offsets, self.dtype, self.intervention)
        done = resume.start(partial, key, restart=self.restart)
        np_dtype = np.dtype(str(self.dtype).replace("torch.", ""))
        n_tokens = int(offsets[-1])
        files: dict[str, RowFile] = {}
        try:
            for i, s in enumerate(self.sites):
                path = partial / f"site_{i:03d}.npy"
                fresh = not done or not path.exists()
                if fresh and done:
                    raise CheckpointError(f"{path} is missing from an interrupted collection; pass restart=True")
                files[s] = RowFile(path, n_tokens, units[s], np_dtype, create=fresh)

            def checkpoint(index: list[int]) -> None:
                done.update(index)
                resume.save_progress(partial, key, done)

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
            "format": KIND.format, "version": 1, "sites": list(self.sites),
            "files": {s: f"site_{i:03d}.npy" for i, s in enumerate(self.sites)}, "n_tokens": n_tokens,
            "dtype": str(np_dtype)})
        (partial / resume.PROGRESS).unlink()
        check_target(final, KIND)
        if final.exists():
            final.rmdir()  # check_target allows only an empty folder here
        os.replace(partial, final)
        return Activations.load(final)


def _cap_total(seqs: list[Tensor], max_tokens: int) -> list[Tensor]:
    out, total = [], 0
    for s in seqs:
        if total >= max_tokens:
            break
        take = s[: max_tokens - total]
        out.append(take)
        total += len(take)
    return out


def collect(model: Any, texts: Any, sites: Sequence[str] | str, **options: Any) -> Activations:
    """One-call form of :class:`ActivationCollector`: ``collect(model, "calibration", "mlp.hook_post")``."""
    return ActivationCollector(model, sites, **options).collect(texts)


__all__ = ["ActivationCollector", "collect"]
