"""Functional networks on disk: ``networks.json`` (settings, sites, widths, blocks, a checksum) and
``networks.safetensors`` (maps, sources, unit means and spreads), written atomically and verified on load."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .._io import Kind, atomic_dir, field, read_json, tensor_digest
from ..errors import FormatError, FuncnetError

if TYPE_CHECKING:  # pragma: no cover
    from .networks import FunctionalNetworks

FORMAT, VERSION = "tl_funcnet.functional_networks", 2
#: what a saved networks folder holds (``tl-funcnet extract`` adds its plots)
KIND = Kind("functional networks", "networks.json", FORMAT, ("networks.json", "networks.safetensors", "*.png"))


def save_networks(fn: "FunctionalNetworks", path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """See :meth:`FunctionalNetworks.save`."""
    from safetensors.torch import save_file

    fn._check()
    tensors = {"maps": fn.maps_.contiguous(), "sources": fn.sources_.contiguous(),
               "unit_mean": fn.unit_mean_.float().contiguous(), "unit_std": fn.unit_std_.float().contiguous()}
    meta = {"format": FORMAT, "version": VERSION, "params": fn._params(), "sites": list(fn.sites_),
            "widths": list(fn.widths_), "converged": fn.converged_,
            "blocks": [{"sites": list(b.sites), "networks": list(b.networks)} for b in fn.blocks_],
            "tensors_sha256": tensor_digest(tensors)}
    text = json.dumps(meta, indent=2)
    with atomic_dir(path, KIND, overwrite=overwrite) as tmp:
        (tmp / "networks.json").write_text(text)
        save_file(tensors, str(tmp / "networks.safetensors"))
    return Path(path)


def load_networks(path: str | os.PathLike[str]) -> "FunctionalNetworks":
    """See :meth:`FunctionalNetworks.load`."""
    from .networks import Block, FunctionalNetworks
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
        tensors = load_file(str(blob))
    except Exception as err:  # safetensors raises its own error types; a missing file is OSError
        raise FormatError(f"{blob} could not be read ({err}); the file is corrupt or missing") from None
    if meta.get("tensors_sha256") != tensor_digest(tensors):
        raise FormatError(f"{blob} does not match the checksum in {meta_f}: the file was changed or is corrupt; "
                          f"fit and save the networks again")
    try:
        fn = FunctionalNetworks(**params)
        fn._check_params(len(sites))
    except (TypeError, FuncnetError) as err:
        raise FormatError(f"{where}: 'params' are invalid ({err})") from None
    fn.sites_, fn.widths_, fn.converged_ = tuple(sites), tuple(widths), converged
    try:
        fn.blocks_ = tuple(Block(tuple(b["sites"]), (int(b["networks"][0]), int(b["networks"][1])))
                           for b in blocks)
    except (KeyError, TypeError, ValueError, IndexError):
        raise FormatError(f"{where}: 'blocks' should be a list of {{'sites': [...], 'networks': [start, stop]}}") \
            from None
    missing = sorted({"maps", "sources", "unit_mean", "unit_std"} - set(tensors))
    if missing:
        raise FormatError(f"{blob} lacks the tensors {missing}; the file is corrupt")
    fn.maps_, fn.sources_ = tensors["maps"], tensors["sources"]
    fn.unit_mean_, fn.unit_std_ = tensors["unit_mean"], tensors["unit_std"]
    if fn.maps_.ndim != 2 or fn.maps_.shape[1] != sum(fn.widths_):
        raise FormatError(f"{blob}: maps have shape {tuple(fn.maps_.shape)}, the sites add up to {sum(fn.widths_)} units")
    fn.masks_ = fn._threshold(fn.maps_)
    return fn


__all__ = ["FORMAT", "VERSION", "KIND", "save_networks", "load_networks"]
