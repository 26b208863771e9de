"""Functional networks on disk: ``networks.json`` (settings, sites, widths, blocks, a checksum) and
``networks.safetensors`` (maps, sources, unit means and spreads), written atomically and verified on load.

This module reads and writes the two files as plain data; :class:`~tl_funcnet.funcnet.FunctionalNetworks`
builds itself from what :func:`read_networks` returns.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from .._io import Kind, atomic_dir, field, read_json, tensor_digest
from ..errors import FormatError

FORMAT, VERSION = "tl_funcnet.functional_networks", 2
#: what a saved networks folder holds (``tl-funcnet extract`` adds its plots)
KIND = Kind("functional networks", "networks.json", FORMAT, ("networks.json", "networks.safetensors", "*.png"))
TENSORS = ("maps", "sources", "unit_mean", "unit_std")


@dataclass(frozen=True)
class SavedNetworks:
    """The checked content of a saved networks folder."""

    params: dict[str, Any]
    sites: tuple[str, ...]
    widths: tuple[int, ...]
    converged: bool
    blocks: tuple[tuple[tuple[str, ...], tuple[int, int]], ...]  # (sites, (first, stop) network rows)
    tensors: dict[str, Tensor]
    where: str


def write_networks(path: str | os.PathLike[str], meta: dict[str, Any], tensors: dict[str, Tensor], *,
                   overwrite: bool = False) -> Path:
    """Write ``meta`` (plus format, version and checksum) and ``tensors`` into the folder ``path`` atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    text = json.dumps({"format": FORMAT, "version": VERSION, **meta, "tensors_sha256": tensor_digest(tensors)},
                      indent=2)
    with atomic_dir(path, KIND, overwrite=overwrite) as tmp:
        (tmp / "networks.json").write_text(text)
        save_file(tensors, str(tmp / "networks.safetensors"))
    return Path(path)


def read_networks(path: str | os.PathLike[str]) -> SavedNetworks:
    """Read and check a folder written by :func:`write_networks`: every field's type and the checksum."""
    from safetensors.torch import load_file

    root = Path(path)
    meta_f, blob = root / "networks.json", root / "networks.safetensors"
    what = "a folder written by FunctionalNetworks.save"
    if not root.is_dir():
        raise FormatError(f"{root} is {'missing' if not root.exists() else 'not a folder'}; expected {what}")
    meta = read_json(meta_f, what)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise FormatError(f"{meta_f} holds format {meta.get('format')!r} version {meta.get('version')!r}; "
                          f"expected {FORMAT!r} version {VERSION} (save the networks again with this version)")
    where = str(meta_f)
    params, sites = dict(field(meta, "params", dict, where)), field(meta, "sites", list, where)
    widths, blocks = field(meta, "widths", list, where), field(meta, "blocks", list, where)
    converged = field(meta, "converged", bool, where)
    if not all(isinstance(s, str) for s in sites) or len(widths) != len(sites) or not all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise FormatError(f"{where}: 'sites' and 'widths' should be equally long lists of names and positive ints")
    try:
        parsed_blocks = tuple((tuple(str(s) for s in b["sites"]), (int(b["networks"][0]), int(b["networks"][1])))
                              for b in blocks)
    except (KeyError, TypeError, ValueError, IndexError):
        raise FormatError(f"{where}: 'blocks' should be a list of {{'sites': [...], 'networks': [start, stop]}}") \
            from None
    try:
        tensors = load_file(str(blob))
    except Exception as err:  # safetensors raises its own error types; a missing file is OSError
        raise FormatError(f"{blob} could not be read ({err}); the file is corrupt or missing") from None
    if meta.get("tensors_sha256") != tensor_digest(tensors):
        raise FormatError(f"{blob} does not match the checksum in {meta_f}: the file was changed or is corrupt; "
                          f"fit and save the networks again")
    missing = sorted(set(TENSORS) - set(tensors))
    if missing:
        raise FormatError(f"{blob} lacks the tensors {missing}; the file is corrupt")
    maps = tensors["maps"]
    if maps.ndim != 2 or maps.shape[1] != sum(widths):
        raise FormatError(f"{blob}: maps have shape {tuple(maps.shape)}, the sites add up to {sum(widths)} units")
    return SavedNetworks(params, tuple(sites), tuple(widths), converged, parsed_blocks, tensors, where)


__all__ = ["FORMAT", "VERSION", "KIND", "TENSORS", "SavedNetworks", "write_networks", "read_networks"]
