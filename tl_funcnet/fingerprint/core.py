"""The :class:`Fingerprint` value object and its file format (one safetensors file with a JSON header).

File layout (``format`` ``tl_funcnet.fingerprint``, ``version`` 2), written atomically::

    tensors   series.{i}   float32 (n_tokens_i, n_networks)  network time courses of text i
              offsets.{i}  int64   (n_tokens_i, 2)           character span of each token in text i
              layer_energy float32 (n_networks, n_layers)    share of each network's mixing energy per layer
              units_per_layer int64 (n_networks, n_layers)   units with |z-scored mixing| > threshold per layer
    metadata  "tl_funcnet": JSON {"format", "version", "texts", "text_sha256", "params", "model",
                                  "tensors_sha256" (a checksum of every tensor: a flipped bit is reported)}

No weights are stored: an owner can publish a fingerprint without the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxtyping import Float, Int
from torch import Tensor

from .._io import Kind, atomic_file, tensor_digest
from ..errors import FormatError

FORMAT = "tl_funcnet.fingerprint"
VERSION = 2


def text_hash(text: str) -> str:
    """SHA-256 of the UTF-8 text: how two fingerprints recognise the same passage."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """Network time courses of one model on a few texts (no weights).

    Attributes:
        texts: the passages, in order.
        series: per text, ``Float[Tensor, "n_tokens n_networks"]``: ICA source time courses of the residual
            stream (all layers jointly), one row per real token; invariant to orthogonal changes of the
            residual basis and to unit permutations.
        offsets: per text, ``Int[Tensor, "n_tokens 2"]``: each token's character span ``[start, end)``.
        layer_energy: ``Float[Tensor, "n_networks n_layers"]``: where in depth each network lives (descriptive;
            rotation-invariant).
        units_per_layer: ``Int[Tensor, "n_networks n_layers"]``: the network's units (|z| > threshold of its
            mixing column, as in the paper) per layer; descriptive and basis-dependent, not used by compare.
        params: the settings used (n_networks, threshold, random_state, ...).
        model: a description of the model (class, n_layers, d_model, name); informational only.
    """

    texts: tuple[str, ...]
    series: tuple[Float[Tensor, "n_tokens n_networks"], ...]
    offsets: tuple[Int[Tensor, "n_tokens 2"], ...]
    layer_energy: Float[Tensor, "n_networks n_layers"]
    units_per_layer: Int[Tensor, "n_networks n_layers"]
    params: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def n_networks(self) -> int:
        return int(self.series[0].shape[1])

    @property
    def text_sha256(self) -> tuple[str, ...]:
        return tuple(text_hash(t) for t in self.texts)

    def __repr__(self) -> str:
        n_tok = sum(int(s.shape[0]) for s in self.series)
        return (f"Fingerprint({self.model.get('name', '?')}, {self.n_networks} networks, {len(self.texts)} texts, "
                f"{n_tok} tokens)")

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write one ``.safetensors`` file (atomically); a fingerprint file there is replaced only with
        ``overwrite=True``, any other file never."""
        from safetensors.torch import save_file

        tensors = {"layer_energy": self.layer_energy.float().contiguous(),
                   "units_per_layer": self.units_per_layer.long().contiguous()}
        for i, (s, o) in enumerate(zip(self.series, self.offsets)):
            tensors[f"series.{i}"] = s.float().contiguous()
            tensors[f"offsets.{i}"] = o.long().contiguous()
        header = {"format": FORMAT, "version": VERSION, "texts": list(self.texts),
                  "text_sha256": list(self.text_sha256), "params": self.params, "model": self.model,
                  "tensors_sha256": tensor_digest(tensors)}
        meta = json.dumps(header)  # fails before anything is written
        with atomic_file(path, KIND, overwrite=overwrite) as tmp:
            save_file(tensors, str(tmp), metadata={"tl_funcnet": meta})
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Fingerprint":
        """Read a file written by :meth:`save`; a file of another format or version raises FormatError."""
        from safetensors import safe_open

        file = Path(path)
        if not file.is_file():
            raise FormatError(f"{file} does not exist or is not a file; expected a fingerprint written by "
                              "Fingerprint.save / `tl-funcnet fingerprint --save`")
        try:
            with safe_open(str(file), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types on a corrupt file
            raise FormatError(f"{file} is not a readable safetensors file ({type(e).__name__}: {e}); "
                              "expected a fingerprint written by Fingerprint.save") from None
        try:
            header = json.loads(meta["tl_funcnet"])
        except (KeyError, ValueError):
            raise FormatError(f"{file} has no tl_funcnet header; it is not a fingerprint file") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            got = header.get("format") if isinstance(header, dict) else None
            raise FormatError(f"{file} has format {got!r}; expected {FORMAT!r}")
        if header.get("version") != VERSION:
            raise FormatError(f"{file} has fingerprint version {header.get('version')!r}; this tl_funcnet reads "
                              f"version {VERSION}; recompute the fingerprint with this version")
        texts = header.get("texts")
        if not isinstance(texts, list) or not texts:
            raise FormatError(f"{file}: header lacks the list of texts")
        missing = [k for i in range(len(texts)) for k in (f"series.{i}", f"offsets.{i}") if k not in tensors]
        missing += [k for k in ("layer_energy", "units_per_layer") if k not in tensors]
        if missing:
            raise FormatError(f"{file} is incomplete: missing tensors {missing[:4]}; the file is corrupt")
        series = tuple(tensors[f"series.{i}"] for i in range(len(texts)))
        offsets = tuple(tensors[f"offsets.{i}"] for i in range(len(texts)))
        widths = {int(s.shape[1]) for s in series}
        bad = [i for i, (s, o) in enumerate(zip(series, offsets))
               if s.ndim != 2 or o.shape != (s.shape[0], 2)]
        if len(widths) != 1 or bad:
            raise FormatError(f"{file}: series/offsets shapes are inconsistent (texts {bad}); the file is corrupt")
        if not all(isinstance(t, str) for t in texts):
            raise FormatError(f"{file}: the header's texts should be strings; the file was edited or is corrupt")
        if header.get("text_sha256") != [text_hash(t) for t in texts]:
            raise FormatError(f"{file}: texts do not match their stored hashes; the file was edited or is corrupt")
        if header.get("tensors_sha256") != tensor_digest(tensors):
            raise FormatError(f"{file}: the tensors do not match their checksum; the file is corrupt (a changed "
                              f"bit is not trusted): compute the fingerprint again")
        for key in ("params", "model"):
            if not isinstance(header.get(key, {}), dict):
                raise FormatError(f"{file}: the header's {key!r} should be an object")
        return cls(tuple(texts), series, offsets, tensors["layer_energy"],
                   tensors["units_per_layer"], dict(header.get("params") or {}),
                   dict(header.get("model") or {}))


def is_fingerprint_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file holding a fingerprint header (any version)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return "tl_funcnet" in (f.metadata() or {}) and FORMAT in f.metadata()["tl_funcnet"]
    except Exception:
        return False


KIND = Kind("fingerprint", recognize=lambda p: is_fingerprint_file(p))


__all__ = ["Fingerprint", "FORMAT", "VERSION", "KIND", "text_hash", "is_fingerprint_file"]
