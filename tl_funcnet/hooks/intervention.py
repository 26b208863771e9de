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

import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping

import numpy as np
from torch import Tensor

from ..errors import FormatError, FuncnetError, SiteConflictError
from . import serialize
from .registry import HookFn, OpSpec, get_op
from .names import hook_points, is_bridge, site_keys, site_on
from .sites import check_sites, require_hooked, site_flags


@contextmanager
def flags_on(model: Any, flags: set[str]) -> Iterator[None]:
    """Set the TransformerLens config ``flags`` to True for the block and restore their values after."""
    cfg = getattr(model, "cfg", None)
    old = {f: getattr(cfg, f, False) for f in sorted(flags)}
    try:
        for f in old:
            setattr(cfg, f, True)
        yield
    finally:
        for f, value in old.items():
            setattr(cfg, f, value)


@contextmanager
def attached(model: Any, fwd: list[tuple[str, HookFn]], bwd: list[tuple[str, HookFn]]) -> Iterator[None]:
    """``model.hooks(fwd_hooks=fwd, bwd_hooks=bwd)``: these hooks for the block, removed on exit.

    On a TransformerBridge the same thing is done point by point (TransformerLens's ``HookPoint.add_hook`` /
    ``remove_hooks`` at a context level of its own), because the bridge's ``hooks()`` rebuilds its alias table
    for every hook it adds (about 10 ms each on SmolLM2).
    """
    if not is_bridge(model) or not hasattr(model, "context_level"):
        with model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
            yield
        return
    points = hook_points(model)
    gated = getattr(model, "_gated_hook_reason", None)  # why a config flag switches a hook point off, if it does
    level = int(model.context_level) + 1
    added: list[tuple[Any, str]] = []
    try:
        model.context_level = level
        for direction, pairs in (("fwd", fwd), ("bwd", bwd)):
            for name, fn in pairs:
                point = points[name]
                reason = gated(point.name or name) if callable(gated) else None
                if reason is not None:
                    raise FuncnetError(f"{name!r} does not fire while {reason} is False; turn it on with the "
                                       f"bridge's set_{reason}(True)")
                point.add_hook(fn, dir=direction, level=level)
                added.append((point, direction))
        yield
    finally:
        for point, direction in added:
            point.remove_hooks(dir=direction, level=level)
        model.context_level = level - 1


def _freeze(value: Any) -> Any:
    """A read-only deep copy: tensors cloned (detached), mappings behind a proxy, sequences as tuples."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        import torch

        return torch.from_numpy(np.array(value))
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """Plain dicts and lists again (for pickling and for rebuilding a Hook)."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _check_params(spec: OpSpec, site: str, params: Any) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        raise FuncnetError(f"{spec.name}() at {site!r}: params should be a mapping, got {type(params).__name__}")
    sig = inspect.signature(spec.factory).parameters
    accepted = spec.parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise FuncnetError(f"{spec.name}() at {site!r} got unknown parameter(s) {unknown}; it takes {list(accepted)}")
    missing = [n for n in accepted if n not in params and sig[n].default is inspect.Parameter.empty]
    if missing:
        raise FuncnetError(f"{spec.name}() at {site!r} needs the parameter(s) {missing}")
    p = dict(params)
    if spec.prepare is not None:
        try:
            p = spec.prepare(p)
        except FuncnetError as err:
            raise type(err)(f"{spec.name}() at {site!r}: {err}") from None
    return p


@dataclass(frozen=True, eq=False)
class Hook:
    """One hook spec: TransformerLens hook name, registered op name, and the op's parameters.

    Parameters are checked when the Hook is made and kept read-only: tensors are private copies, mappings
    read-only, lists tuples (a caller's dict or callback named in the op's ``refs`` is kept by reference).
    ``eq=False`` because params hold tensors: compare interventions with :meth:`Intervention.allclose`.
    """

    site: str
    op: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.site, str) or not self.site:
            raise FuncnetError(f"a hook site should be a non-empty TransformerLens hook name, got {self.site!r}")
        spec = get_op(self.op)  # unknown op names fail here, not at attach time
        p = _check_params(spec, self.site, self.params)
        frozen = {k: (v if k in spec.refs else _freeze(v)) for k, v in p.items()}
        object.__setattr__(self, "params", MappingProxyType(frozen))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Hook, (self.site, self.op, {k: _thaw(v) for k, v in self.params.items()}))

    @classmethod
    def custom(cls, site: str, fn: HookFn, *, direction: str = "fwd") -> "Hook":
        """Wrap an arbitrary hook function ``fn(activation, hook)``; it works but cannot be saved."""
        return cls(site, "custom" if direction == "fwd" else "custom_bwd", {"fn": fn})

    @property
    def spec(self) -> OpSpec:
        return get_op(self.op)

    @property
    def direction(self) -> str:
        return self.spec.direction

    @property
    def writes(self) -> bool:
        return self.spec.writes

    def build(self, scratch: dict[str, Any] | None = None) -> HookFn:
        """The hook function for this spec, freshly built from the registry."""
        spec = self.spec
        if spec.uses_scratch:
            return spec.factory(**self.params, scratch={} if scratch is None else scratch)
        return spec.factory(**self.params)

    def validate(self, model: Any) -> None:
        """Raise (naming site and op) if the params do not fit the model at this site."""
        spec = self.spec
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
        if not isinstance(hooks, (tuple, list)):
            raise FuncnetError(f"Intervention takes a list of Hook values, got {type(hooks).__name__}")
        for h in hooks:
            if not isinstance(h, Hook):
                raise FuncnetError(f"Intervention takes Hook values, got {type(h).__name__}")
        object.__setattr__(self, "_hooks", tuple(hooks))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Intervention is immutable; build a new one with + or |")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Intervention is immutable; build a new one with + or |")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Intervention, (self._hooks,))

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

    @property
    def serializable(self) -> bool:
        """Whether :meth:`save` can store it (no hook holds a Python object)."""
        return all(h.spec.serializable for h in self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def __iter__(self) -> Iterator[Hook]:
        return iter(self._hooks)

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def __repr__(self) -> str:
        inner = ", ".join(f"{h.op}@{h.site}" for h in self._hooks)
        return f"Intervention([{inner}])"

    def describe(self) -> str:
        """One line per hook, in the order they run: site, op and a short form of each parameter
        (tensors by shape and norm, index lists by length), e.g. for a report or a log."""
        if not self._hooks:
            return "(no hooks: the model runs unchanged)"
        return "\n".join(f"{i}. {h.site}: {h.op}(" + ", ".join(f"{k}={_brief(v)}" for k, v in h.params.items()) + ")"
                         for i, h in enumerate(self._hooks, 1))

    # ----------------------------------------------------------------- algebra

    def __add__(self, other: "Intervention") -> "Intervention":
        if not isinstance(other, Intervention):
            return NotImplemented
        return Intervention(self._hooks + other._hooks)

    def __or__(self, other: "Intervention") -> "Intervention":
        if not isinstance(other, Intervention):
            return NotImplemented
        def keyed(sites: frozenset[str]) -> dict[str, str]:  # every spelling of a site -> the site as written
            return {key: s for s in sites for key in site_keys(s)}

        mine, theirs = keyed(self.sites), keyed(other.sites)
        mine_w, theirs_w = keyed(self.written_sites), keyed(other.written_sites)
        clash = {mine_w[k] for k in mine_w.keys() & theirs.keys()} | {mine[k] for k in mine.keys() & theirs_w.keys()}
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

    def _build(self, direction: str, model: Any = None, scratch: dict[str, Any] | None = None
               ) -> list[tuple[str, HookFn]]:
        scratch = {} if scratch is None else scratch  # shared by the hook functions of one application
        return [(h.site if model is None else site_on(model, h.site), h.build(scratch))
                for h in self._hooks if h.direction == direction]

    def fwd_hooks(self, model: Any = None) -> list[tuple[str, HookFn]]:
        """Forward hooks as TransformerLens ``(name, fn)`` pairs, for ``model.run_with_hooks``.

        With ``model``, each name is the form that model registers (legacy on a HookedTransformer, either on
        a TransformerBridge), so an intervention written with canonical names runs on both classes.
        """
        return self._build("fwd", model)

    def bwd_hooks(self, model: Any = None) -> list[tuple[str, HookFn]]:
        """Backward hooks as ``(name, fn)`` pairs (pass ``reset_hooks_end=False`` to TL to keep them)."""
        return self._build("bwd", model)

    def model_flags(self) -> set[str]:
        """TransformerLens config flags this intervention needs on: hook points that fire only with a flag
        (``hook_q_input``, ``attn.hook_result``, ``hook_mlp_in``, ...) and flags its ops ask for."""
        flags: set[str] = set()
        for h in self._hooks:
            flags |= site_flags(h.site) | set(h.spec.flags)
        return flags

    @contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        """Attach to ``model`` for the block, after validating everything; remove exactly these hooks on exit.

        Config flags the sites need (see :meth:`model_flags`) are on for the block and restored after.
        Removal is TransformerLens's own level-scoped ``model.hooks()``, so hooks the user added before,
        or in an enclosing ``applied`` block, stay in place, exceptions included. (With ``run_with_hooks``
        and :meth:`fwd_hooks`, turn such flags on yourself.)
        """
        require_hooked(model)
        with flags_on(model, self.model_flags()):
            self.validate(model)
            scratch: dict[str, Any] = {}
            with attached(model, self._build("fwd", model, scratch), self._build("bwd", model, scratch)):
                yield model

    # ----------------------------------------------------------------- serialization (format in .serialize)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; tensors become ``{"__tensor__": key}`` references (see :meth:`tensors`)."""
        return serialize.to_dict(self._hooks)

    def tensors(self) -> dict[str, Tensor]:
        """The tensors referenced by :meth:`to_dict`, keyed by reference."""
        return serialize.tensors(self._hooks)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], tensors: Mapping[str, Tensor] | None = None, *,
                  where: str = "intervention") -> "Intervention":
        """Rebuild from :meth:`to_dict` output and the tensors it references (``where`` names the source in
        errors)."""
        hooks = []
        for site, op, params, at in serialize.decode(data, tensors or {}, where):
            try:
                hooks.append(Hook(site, op, params))
            except FormatError:
                raise
            except FuncnetError as err:
                raise FormatError(f"{at}: {err}") from None
        return cls(tuple(hooks))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``intervention.json`` and ``tensors.safetensors`` into the folder ``path``, atomically.

        An existing saved intervention there is replaced only with ``overwrite=True``; anything else there
        is never touched (an :class:`~tl_funcnet.errors.OverwriteError` says so).
        """
        return serialize.write(path, self._hooks, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Intervention":
        """Read an intervention saved by :meth:`save` (its checksum is verified)."""
        data, saved, where = serialize.read(path)
        return cls.from_dict(data, saved, where=where)

    def allclose(self, other: "Intervention", *, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
        """Same hooks in the same order with numerically close tensors."""
        import torch

        if self.to_dict() != other.to_dict():
            return False
        a, b = self.tensors(), other.tensors()
        return a.keys() == b.keys() and all(
            a[k].shape == b[k].shape and a[k].dtype == b[k].dtype
            and torch.allclose(a[k].double(), b[k].double(), rtol=rtol, atol=atol) for k in a
        )


def _brief(v: Any) -> str:
    """A parameter in a few characters (see :meth:`Intervention.describe`)."""
    if isinstance(v, Tensor):
        if v.numel() == 1:
            return f"{float(v):.4g}"
        return f"tensor{tuple(v.shape)} |{float(v.float().norm()):.3g}|"
    if isinstance(v, (list, tuple)):
        return f"[{len(v)} items]" if len(v) > 6 else repr(list(v))
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}: {_brief(x)}" for k, x in list(v.items())[:4]) + (", ..." if len(v) > 4 else "") + "}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return repr(v) if not callable(v) else getattr(v, "__name__", type(v).__name__)


__all__ = ["Hook", "Intervention", "flags_on", "attached"]
