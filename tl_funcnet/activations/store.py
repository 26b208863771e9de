"""Collected activations: per-site token matrices with token ids and sequence boundaries."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .._io import Kind, atomic_dir, field, read_json
from ..errors import FormatError, FuncnetError

_FORMAT = "tl_funcnet.activations"
_VERSION = 1
KIND = Kind("activation store", "manifest.json", _FORMAT, ("manifest.json", "tokens.pt", "site_*.npy"))


class Activations:
    """Activations at several sites over a corpus: row ``t`` of every matrix is the same token.

    Attributes:
        sites: site names in collection order.
        token_ids: ``(n_samples,)`` token id of each row.
        offsets: ``(n_seq + 1,)`` row boundaries; sequence ``i`` is rows ``offsets[i]:offsets[i+1]``.
    """

    def __init__(self, data: Mapping[str, Tensor | np.ndarray], token_ids: Int[Tensor, "n_samples"],
                 offsets: Int[Tensor, "n_seq_plus_1"], sites: Sequence[str] | None = None,
                 path: Path | None = None):
        self._data = dict(data)
        self.sites = tuple(sites) if sites is not None else tuple(self._data)
        self.token_ids = token_ids
        self.offsets = offsets
        self.path = path

    def __repr__(self) -> str:
        where = f", on disk at {self.path}" if self.path else ""
        return f"Activations({self.n_samples} tokens x {self.n_units} units over {len(self.sites)} sites{where})"

    @property
    def n_samples(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_sequences(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_units(self) -> int:
        return sum(self.width(s) for s in self.sites)

    def width(self, site: str) -> int:
        return int(self._data[site].shape[1])

    def __getitem__(self, site: str) -> Float[Tensor, "n_samples n_units"]:
        if site not in self._data:
            raise FuncnetError(f"{site!r} was not collected; collected sites: {list(self.sites)}")
        x = self._data[site]
        return torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x

    def matrix(self, sites: Sequence[str] | None = None,
               dtype: torch.dtype | None = None) -> Float[Tensor, "n_samples n_units"]:
        """Sites concatenated along units (in the given order, default collection order)."""
        sites = self.sites if sites is None else tuple(sites)
        parts = [self[s] for s in sites]
        out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0].clone()
        return out if dtype is None else out.to(dtype)

    def unit_slices(self, sites: Sequence[str] | None = None) -> dict[str, slice]:
        """Column range of each site inside :meth:`matrix`."""
        sites = self.sites if sites is None else tuple(sites)
        out, start = {}, 0
        for s in sites:
            out[s] = slice(start, start + self.width(s))
            start += self.width(s)
        return out

    def sequence_rows(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write a folder (``.npy`` per site, tokens, manifest) atomically; a store saved there before is
        replaced only with ``overwrite=True``."""
        target = Path(path)
        with atomic_dir(target, KIND, overwrite=overwrite) as tmp:
            files = {}
            for i, s in enumerate(self.sites):
                files[s] = f"site_{i:03d}.npy"
                np.save(tmp / files[s], self[s].numpy())
            torch.save({"token_ids": self.token_ids, "offsets": self.offsets}, tmp / "tokens.pt")
            (tmp / "manifest.json").write_text(json.dumps({
                "format": _FORMAT, "version": _VERSION, "sites": list(self.sites), "files": files,
                "n_tokens": self.n_samples, "dtype": str(self[self.sites[0]].numpy().dtype),
            }, indent=2))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, mmap: bool = True) -> "Activations":
        """Open a store written by :meth:`save` or by a streaming collection (memory-mapped by default)."""
        root = Path(path)
        manifest = root / "manifest.json"
        if not manifest.is_file():
            partial = root.with_name(root.name + ".partial")
            hint = f"; an interrupted collection is at {partial}: rerun it to resume" if partial.exists() else ""
            raise FormatError(f"{manifest} is missing: {root} is not a finished activation store{hint}")
        meta = read_json(manifest, "the manifest of an activation store")
        if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise FormatError(f"{root} is not a version-{_VERSION} tl_funcnet activation store "
                              f"(format {meta.get('format')!r}, version {meta.get('version')!r})")
        where = str(manifest)
        sites, files = field(meta, "sites", list, where), field(meta, "files", dict, where)
        n_tokens = field(meta, "n_tokens", int, where)
        if not all(isinstance(s, str) for s in sites) or set(sites) != set(files) or not all(
                isinstance(f, str) and "/" not in f for f in files.values()):
            raise FormatError(f"{where}: 'sites' and 'files' do not describe the same sites; the file was edited")
        try:
            tok = torch.load(root / "tokens.pt", weights_only=True)
            token_ids, offsets = tok["token_ids"], tok["offsets"]
        except Exception as err:  # torch raises several types for a corrupt or missing file
            raise FormatError(f"{root / 'tokens.pt'} could not be read ({type(err).__name__}: {err})") from None
        if int(offsets[-1]) != n_tokens or token_ids.shape != (n_tokens,):
            raise FormatError(f"{root / 'tokens.pt'} describes {int(offsets[-1])} tokens, the manifest {n_tokens}")
        data = {}
        for s in sites:
            try:
                arr = np.load(root / files[s], mmap_mode="c" if mmap else None)
            except (OSError, ValueError) as err:
                raise FormatError(f"{root / files[s]} could not be read ({err})") from None
            if arr.ndim != 2 or arr.shape[0] != n_tokens:
                raise FormatError(f"{files[s]} has shape {arr.shape}, the manifest says {n_tokens} rows")
            data[s] = arr
        return cls(data, token_ids, offsets, sites, path=root)


class RowFile:
    """A ``.npy`` matrix on disk filled by positioned writes, row block by row block.

    Streaming uses this instead of a writable memory map: ``os.pwrite`` copies each block into the page cache
    in one system call, where a memory map takes a page fault per 4 KiB inside the forward pass.
    ``create=False`` reopens a file for resuming and checks its header.
    """

    def __init__(self, path: str | os.PathLike[str], n_rows: int, n_cols: int, dtype: np.dtype, *,
                 create: bool):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.shape = (n_rows, n_cols)
        self.row_bytes = n_cols * self.dtype.itemsize
        if create:
            with open(self.path, "wb") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                         "fortran_order": False, "shape": self.shape})
                self.data_offset = f.tell()
                f.truncate(self.data_offset + n_rows * self.row_bytes)
        else:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype_read = read(f)
                self.data_offset = f.tell()
            if tuple(shape) != self.shape or fortran or np.dtype(dtype_read) != self.dtype:
                raise FormatError(f"{self.path} holds a {dtype_read} {shape} matrix, expected {self.dtype} {self.shape}")
        self._fd = os.open(self.path, os.O_WRONLY)

    def write(self, start: int, rows: np.ndarray) -> None:
        """Write ``rows`` (``(n, n_cols)``, C-contiguous, this file's dtype) at row ``start``."""
        view = memoryview(np.ascontiguousarray(rows, dtype=self.dtype)).cast("B")
        pos = self.data_offset + start * self.row_bytes
        while view:
            n = os.pwrite(self._fd, view, pos)
            view, pos = view[n:], pos + n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


__all__ = ["Activations", "RowFile", "KIND"]
