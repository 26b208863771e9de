"""The one core abstraction: an immutable, composable, serializable list of hook specs.

An :class:`Intervention` is a tuple of :class:`Hook` values, each ``(site, op, params)``. Hook functions are
built from the op registry on demand, so an intervention can be saved, loaded, chained and handed to
TransformerLens as a plain ``(name, fn)`` list.

>>> iv = ablate("blocks.3.mlp.hook_post", units=[5, 9]) + steer("blocks.6.hook_resid_post", v, scale=4.0)
>>> with iv.applied(model):
...     logits = model(tokens)
>>> model.run_with_hooks(tokens, fwd_hooks=iv.fwd_hooks())  # the same, through TL's own API
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor

from .._io import atomic_dir
from ..errors import FormatError, FuncnetError, NotSerializableError, SiteConflictError
from .registry import HookFn, get_op
from .sites import check_sites, require_hooked

SCHEMA_VERSION = 1
_FORMAT = "tl_funcnet.intervention"


@dataclass(frozen=True, eq=False)
class Hook:
    """One hook spec: TransformerLens hook name, registered op name, and the op's parameters.

    ``eq=False`` because params may hold tensors; compare interventions with :meth:`Intervention.allclose`.
    """

    site: str
    op: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.site, str) or not self.site:
            raise FuncnetError(f"a hook site should be a non-empty TransformerLens hook name, got {self.site!r}")
        get_op(self.op)  # unknown op names fail at construction, not at attach time
        object.__setattr__(self, "params", dict(self.params))

    @classmethod
    def custom(cls, site: str, fn: HookFn, *, direction: str = "fwd") -> "Hook":
        """Wrap an arbitrary hook function ``fn(activation, hook)``; it works but cannot be saved."""
        if not callable(fn):
            raise FuncnetError(f"Hook.custom needs a callable fn(activation, hook), got {type(fn).__name__}")
        return cls(site, "custom" if direction == "fwd" else "custom_bwd", {"fn": fn})

    @property
    def direction(self) -> str:
        return get_op(self.op).direction

    @property
    def writes(self) -> bool:
        return get_op(self.op).writes

    def build(self) -> HookFn:
        """The hook function for this spec, freshly built from the registry."""
        return get_op(self.op).factory(**self.params)

    def validate(self, model: Any) -> None:
        """Raise (naming site and op) if the params do not fit the model at this site."""
        spec = get_op(self.op)
        if spec.validate is None:
            return
        try:
            spec.validate(model, self.site, self.params)
        except FuncnetError as err:
            raise type(err)(f"{self.op}() at {self.site!r}: {err}") from None


class Intervention:
    """An immutable, ordered collection of :class:`Hook` specs.

    - ``a + b`` chains: on a shared site, ``a``'s hooks run first and ``b``'s see their output.
    - ``a | b`` is an order-free union; it refuses two interventions that touch the same site where
      either writes it (use ``+`` to choose an order).
    - ``Intervention()`` is the identity for both.
    """

    __slots__ = ("_hooks",)

    def __init__(self, hooks: tuple[Hook, ...] | list[Hook] = ()):
        hooks = tuple(hooks)
        for h in hooks:
            if not isinstance(h, Hook):
                raise FuncnetError(f"Intervention takes Hook values, got {type(h).__name__}")
        object.__setattr__(self, "_hooks", hooks)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Intervention is immutable; build a new one with + or |")

    @property
    def hooks(self) -> tuple[Hook, ...]:
        return self._hooks

    @property
    def sites(self) -> frozenset[str]:
        """Every site this intervention touches."""
        return frozenset(h.site for h in self._hooks)

    @property
    def written_sites(self) -> frozenset[str]:
        return frozenset(h.site for h in self._hooks if h.writes)

    def __len__(self) -> int:
        return len(self._hooks)

    def __iter__(self) -> Iterator[Hook]:
        return iter(self._hooks)

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def __repr__(self) -> str:
        inner = ", ".join(f"{h.op}@{h.site}" for h in self._hooks)
        return f"Intervention([{inner}])"

    # ----------------------------------------------------------------- algebra

    def __add__(self, other: "Intervention") -> "Intervention":
        if not isinstance(other, Intervention):
            return NotImplemented
        return Intervention(self._hooks + other._hooks)

    def __or__(self, other: "Intervention") -> "Intervention":
        if not isinstance(other, Intervention):
            return NotImplemented
        clash = (self.written_sites & other.sites) | (self.sites & other.written_sites)
        if clash:
            raise SiteConflictError(
                f"both interventions touch {sorted(clash)} and at least one writes there, so their order "
                f"matters; use `a + b` to chain them in a chosen order"
            )
        return Intervention(self._hooks + other._hooks)

    # ----------------------------------------------------------------- use with a model

    def validate(self, model: Any) -> None:
        """Check every site and every op's parameters against ``model``; raise on the first problem."""
        require_hooked(model)
        check_sites(model, [h.site for h in self._hooks])
        for h in self._hooks:
            h.validate(model)

    def fwd_hooks(self) -> list[tuple[str, HookFn]]:
        """Forward hooks as TransformerLens ``(name, fn)`` pairs, for ``model.run_with_hooks``."""
        return [(h.site, h.build()) for h in self._hooks if h.direction == "fwd"]

    def bwd_hooks(self) -> list[tuple[str, HookFn]]:
        """Backward hooks as ``(name, fn)`` pairs (pass ``reset_hooks_end=False`` to TL to keep them)."""
        return [(h.site, h.build()) for h in self._hooks if h.direction == "bwd"]

    @contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        """Attach to ``model`` for the block, after validating everything; remove exactly these hooks on exit.

        Removal is TransformerLens's own level-scoped ``model.hooks()``, so hooks the user added before,
        or in an enclosing ``applied`` block, stay in place, exceptions included.
        """
        self.validate(model)
        fwd, bwd = self.fwd_hooks(), self.bwd_hooks()
        with model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
            yield model

    # ----------------------------------------------------------------- serialization

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; tensors become ``{"__tensor__": key}`` references (see :meth:`tensors`)."""
        out = []
        for i, h in enumerate(self._hooks):
            spec = get_op(h.op)
            if not spec.serializable:
                raise NotSerializableError(
                    f"hook {i} ({h.op!r} at {h.site!r}) holds a Python object that cannot be saved; "
                    f"register the function as an op with @tl_funcnet.hooks.register_op(...) to save it"
                )
            out.append({"site": h.site, "op": h.op, "params": _encode(h.params, f"hooks.{i}")})
        return {"format": _FORMAT, "version": SCHEMA_VERSION, "hooks": out}

    def tensors(self) -> dict[str, Tensor]:
        """The tensors referenced by :meth:`to_dict`, keyed by reference."""
        found: dict[str, Tensor] = {}
        for i, h in enumerate(self._hooks):
            _collect(h.params, f"hooks.{i}", found)
        return found

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], tensors: Mapping[str, Tensor] | None = None) -> "Intervention":
        """Rebuild from :meth:`to_dict` output and the tensors it references."""
        if not isinstance(data, Mapping) or data.get("format", _FORMAT) != _FORMAT:
            raise FormatError(f"not a tl_funcnet intervention (format {data.get('format') if isinstance(data, Mapping) else data!r})")
        version = data.get("version")
        if version != SCHEMA_VERSION:
            raise FormatError(
                f"intervention schema version {version!r} is not supported; this tl_funcnet reads version "
                f"{SCHEMA_VERSION}. Re-save it with a matching tl_funcnet release"
            )
        tensors = dict(tensors or {})
        hooks = []
        for i, h in enumerate(data.get("hooks", [])):
            try:
                hooks.append(Hook(h["site"], h["op"], _decode(h.get("params", {}), tensors)))
            except KeyError as err:
                raise FormatError(f"hook {i} of the saved intervention lacks {err}") from None
        return cls(tuple(hooks))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``intervention.json`` and ``tensors.safetensors`` into directory ``path``, atomically."""
        from safetensors.torch import save_file

        data = self.to_dict()  # raises before anything is written
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.tensors().items()}
        target = Path(path)
        with atomic_dir(target) as tmp:
            (tmp / "intervention.json").write_text(json.dumps(data, indent=2) + "\n")
            save_file(tensors, str(tmp / "tensors.safetensors"))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Intervention":
        """Read an intervention saved by :meth:`save`."""
        from safetensors.torch import load_file

        root = Path(path)
        meta, blob = root / "intervention.json", root / "tensors.safetensors"
        for f in (meta, blob):
            if not f.is_file():
                raise FormatError(f"{f} is missing; expected a directory written by Intervention.save")
        try:
            data = json.loads(meta.read_text())
        except json.JSONDecodeError as err:
            raise FormatError(f"{meta} is not valid JSON ({err}); the file is corrupt") from None
        try:
            tensors = load_file(str(blob))
        except Exception as err:  # safetensors raises its own error types
            raise FormatError(f"{blob} could not be read ({err}); the file is corrupt") from None
        return cls.from_dict(data, tensors)

    def allclose(self, other: "Intervention", *, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
        """Same hooks in the same order with numerically close tensors."""
        if self.to_dict() != other.to_dict():
            return False
        a, b = self.tensors(), other.tensors()
        return a.keys() == b.keys() and all(
            a[k].shape == b[k].shape and torch.allclose(a[k].float(), b[k].float(), rtol=rtol, atol=atol)
            for k in a
        )


def _encode(value: Any, key: str) -> Any:
    if isinstance(value, Tensor):
        return {"__tensor__": key}
    if isinstance(value, Mapping):
        return {str(k): _encode(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{key}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise NotSerializableError(
        f"parameter {key!r} holds a {type(value).__name__}, which cannot be saved; use numbers, strings, "
        f"lists, dicts or tensors"
    )


def _collect(value: Any, key: str, found: dict[str, Tensor]) -> None:
    if isinstance(value, Tensor):
        found[key] = value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _collect(v, f"{key}.{k}", found)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _collect(v, f"{key}.{i}", found)


def _decode(value: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {"__tensor__"}:
            ref = value["__tensor__"]
            if ref not in tensors:
                raise FormatError(f"tensor {ref!r} is referenced but missing from the saved tensors")
            return tensors[ref]
        return {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


__all__ = ["Hook", "Intervention", "SCHEMA_VERSION"]
