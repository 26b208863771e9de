"""Hook-function factories for the built-in ops.

Conventions shared by every op:

- activations are ``(batch, pos, *trailing)``; ``units`` index the last dim of 3-D activations
  (``d_model``/``d_mlp``) and the head dim of 4-D per-head activations (``attn.hook_z`` and friends);
- ``pos`` selects sequence positions: ``None`` (all), an int, a list of ints, ``"last"``, a
  ``{"slice": [start, stop, step]}`` dict, or an int tensor ``(batch,)`` with one position per sequence
  (use it for right padding: see :func:`last_token_positions`);
- tensors held in params are moved to the activation's device and dtype once and cached;
- every op returns a new tensor and never edits the activation in place.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ..errors import ShapeError
from .registry import HookFn, register_op
from .sites import site_shape, unit_count

PosSpec = Any  # None | int | list[int] | "last" | {"slice": [...]} | Int[Tensor, "batch"]
UnitSpec = Any  # None | list[int] | Int[Tensor, "k"] | Bool[Tensor, "n_units"]


def last_token_positions(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch"]:
    """Index of each sequence's last real token, for right-padded batches (left padding: use ``"last"``)."""
    mask = attention_mask.to(torch.long)
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (idx * mask).argmax(dim=1)


class _Cached:
    """A parameter tensor converted to an activation's device and dtype once per (device, dtype)."""

    def __init__(self, value: Tensor | float | None):
        self.value = value
        self._cache: dict[tuple[Any, Any], Tensor] = {}

    def like(self, act: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        key = (act.device, dtype or act.dtype)
        hit = self._cache.get(key)
        if hit is None:
            v = self.value if isinstance(self.value, Tensor) else torch.tensor(self.value)
            hit = v.detach().to(device=act.device, dtype=dtype or act.dtype)
            self._cache[key] = hit
        return hit


def _unit_index(units: UnitSpec) -> Tensor | None:
    if units is None:
        return None
    t = units if isinstance(units, Tensor) else torch.as_tensor(list(units), dtype=torch.long)
    if t.dtype == torch.bool:
        t = t.nonzero().flatten()
    return t.to(torch.long).flatten()


def _unit_mask(units: UnitSpec, act: Tensor) -> Tensor | None:
    """Boolean mask broadcastable to ``act`` that is True on the selected units, or None for all."""
    idx = _unit_index(units)
    if idx is None:
        return None
    unit_dim = 2 if act.ndim == 4 else act.ndim - 1
    n = act.shape[unit_dim]
    mask = torch.zeros(n, dtype=torch.bool, device=act.device)
    mask[idx.to(act.device)] = True
    shape = [1] * act.ndim
    shape[unit_dim] = n
    return mask.view(shape)


def _pos_mask(pos: PosSpec, act: Tensor) -> Bool[Tensor, "batch pos 1"] | None:
    """Boolean mask ``(batch or 1, pos, 1, ...)`` selecting positions, or None for all positions."""
    if pos is None:
        return None
    n_pos = act.shape[1]
    if isinstance(pos, Tensor) and pos.ndim == 1 and pos.dtype != torch.bool and pos.shape[0] == act.shape[0]:
        mask = torch.zeros(act.shape[0], n_pos, dtype=torch.bool, device=act.device)
        mask[torch.arange(act.shape[0], device=act.device), pos.to(act.device)] = True
    else:
        mask = torch.zeros(1, n_pos, dtype=torch.bool, device=act.device)
        if isinstance(pos, str):
            if pos != "last":
                raise ShapeError(f"pos should be 'last', an int, a list, a slice or a tensor; got {pos!r}")
            mask[0, -1] = True
        elif isinstance(pos, Mapping):
            start, stop, step = (list(pos["slice"]) + [None, None, None])[:3]
            mask[0, slice(start, stop, step)] = True
        elif isinstance(pos, int):
            mask[0, pos] = True
        else:
            mask[0, torch.as_tensor(list(pos) if not isinstance(pos, Tensor) else pos, dtype=torch.long)] = True
    return mask.view(*mask.shape, *([1] * (act.ndim - 2)))


def where_pos(pos: PosSpec, edited: Tensor, act: Tensor) -> Tensor:
    mask = _pos_mask(pos, act)
    return edited if mask is None else torch.where(mask, edited, act)


# --------------------------------------------------------------------------- validation helpers


def _check_units(model: Any, site: str, units: UnitSpec, what: str = "units") -> None:
    n = unit_count(model, site)
    idx = _unit_index(units)
    if idx is None or n is None:
        return
    if isinstance(units, Tensor) and units.dtype == torch.bool and units.numel() != n:
        raise ShapeError(f"{what} mask for {site!r} has {units.numel()} entries, but the site has {n} units")
    if idx.numel() and (int(idx.max()) >= n or int(idx.min()) < -n):
        raise ShapeError(
            f"{what} index {int(idx.max()) if int(idx.max()) >= n else int(idx.min())} is out of range for "
            f"{site!r}, which has {n} units (valid: 0..{n - 1})"
        )


def _check_vector(model: Any, site: str, vec: Any, name: str, *, allow_scalar: bool = True) -> None:
    shape = site_shape(model, site)
    if shape is None or vec is None or not isinstance(vec, Tensor):
        return
    if allow_scalar and vec.ndim == 0:
        return
    trailing = tuple(vec.shape[-len(shape):]) if vec.ndim >= len(shape) else tuple(vec.shape)
    if trailing != shape and not (len(shape) == 2 and vec.ndim >= 1 and vec.shape[-1] == shape[-1]):
        raise ShapeError(
            f"{name} has shape {tuple(vec.shape)}, but site {site!r} has trailing shape {shape} "
            f"(e.g. a vector of length {shape[-1]} for a {shape} activation)"
        )


def check_pos(pos: PosSpec) -> None:
    ok = (
        pos is None
        or pos == "last"
        or isinstance(pos, (int, Tensor))
        or (isinstance(pos, Mapping) and "slice" in pos)
        or (isinstance(pos, (list, tuple)) and all(isinstance(p, int) for p in pos))
    )
    if not ok or isinstance(pos, bool):
        raise ShapeError(
            f"pos should be None (all), an int, a list of ints, 'last', {{'slice': [start, stop, step]}} "
            f"or an int tensor of shape (batch,); got {pos!r}"
        )


def _validate_common(model: Any, site: str, p: Mapping[str, Any]) -> None:
    check_pos(p.get("pos"))
    _check_units(model, site, p.get("units"))


# --------------------------------------------------------------------------- ops


def _v_add(model: Any, site: str, p: Mapping[str, Any]) -> None:
    _validate_common(model, site, p)
    _check_vector(model, site, p.get("vector"), "vector")


@register_op("add", validate=_v_add)
def add_op(vector: Tensor | float, scale: float = 1.0, units: UnitSpec = None, pos: PosSpec = None) -> HookFn:
    """``act + scale * vector`` (vector broadcast over batch and pos), optionally on selected units only."""
    vec = _Cached(vector)

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        delta = vec.like(act) * scale
        mask = _unit_mask(units, act)
        if mask is not None:
            delta = torch.where(mask, delta, torch.zeros((), dtype=act.dtype, device=act.device))
        return where_pos(pos, act + delta, act)

    return hook_fn


def _v_scale(model: Any, site: str, p: Mapping[str, Any]) -> None:
    _validate_common(model, site, p)
    _check_vector(model, site, p.get("factor"), "factor")


@register_op("scale", validate=_v_scale)
def scale_op(factor: Tensor | float, units: UnitSpec = None, pos: PosSpec = None) -> HookFn:
    """``act * factor`` on the selected units and positions (factor is a scalar or per-unit tensor)."""
    fac = _Cached(factor)

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        f = fac.like(act)
        mask = _unit_mask(units, act)
        if mask is not None:
            f = torch.where(mask, f, torch.ones((), dtype=act.dtype, device=act.device))
        return where_pos(pos, act * f, act)

    return hook_fn


def _v_ablate(model: Any, site: str, p: Mapping[str, Any]) -> None:
    _validate_common(model, site, p)
    mode = p.get("mode", "zero")
    if mode not in ("zero", "mean", "constant"):
        raise ShapeError(f"ablation mode should be 'zero', 'mean' or 'constant', got {mode!r}")
    if mode != "zero" and p.get("values") is None:
        raise ShapeError(f"mode={mode!r} needs values (e.g. the mean activation at {site!r}); got None")
    _check_vector(model, site, p.get("values"), "values")


def _ablation(units: UnitSpec, mode: str, values: Tensor | float | None, pos: PosSpec, invert: bool) -> HookFn:
    vals = _Cached(0.0 if values is None else values)

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        mask = _unit_mask(units, act)
        if mask is None:
            mask = torch.ones((1,) * act.ndim, dtype=torch.bool, device=act.device)
        if invert:
            mask = ~mask
        fill = vals.like(act) if mode != "zero" else torch.zeros((), dtype=act.dtype, device=act.device)
        return where_pos(pos, torch.where(mask, fill, act), act)

    return hook_fn


@register_op("ablate", validate=_v_ablate)
def ablate_op(units: UnitSpec = None, mode: str = "zero", values: Tensor | float | None = None,
              pos: PosSpec = None) -> HookFn:
    """Replace the selected units by zero, a stored mean, or a constant (all units if ``units`` is None)."""
    return _ablation(units, mode, values, pos, invert=False)


@register_op("keep_only", validate=_v_ablate)
def keep_only_op(units: UnitSpec = None, mode: str = "zero", values: Tensor | float | None = None,
                 pos: PosSpec = None) -> HookFn:
    """Ablate every unit except the selected ones."""
    return _ablation(units, mode, values, pos, invert=True)


def _v_replace(model: Any, site: str, p: Mapping[str, Any]) -> None:
    _validate_common(model, site, p)
    act = p.get("activation")
    shape = site_shape(model, site)
    if not isinstance(act, Tensor):
        raise ShapeError(f"patch at {site!r} needs an activation tensor, got {type(act).__name__}")
    if shape is not None and (act.ndim < 1 + len(shape) or tuple(act.shape[-len(shape):]) != shape):
        raise ShapeError(
            f"patch activation has shape {tuple(act.shape)}, but site {site!r} expects (pos, *{shape}) "
            f"or (batch, pos, *{shape})"
        )


@register_op("replace", validate=_v_replace)
def replace_op(activation: Tensor, units: UnitSpec = None, pos: PosSpec = None) -> HookFn:
    """Overwrite the activation with a stored one (``(pos, ...)`` or ``(batch, pos, ...)``), e.g. from a clean run."""
    src = _Cached(activation)

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        s = src.like(act)
        if s.ndim == act.ndim - 1:
            s = s.unsqueeze(0)
        if s.shape[1] != act.shape[1]:
            raise ShapeError(
                f"patch at {getattr(hook, 'name', '?')!r}: stored activation has {s.shape[1]} positions, "
                f"the current run has {act.shape[1]}; patch prompts of the same length"
            )
        s = s.expand_as(act)
        mask = _unit_mask(units, act)
        out = s if mask is None else torch.where(mask, s, act)
        return where_pos(pos, out, act)

    return hook_fn


def _v_project(model: Any, site: str, p: Mapping[str, Any]) -> None:
    check_pos(p.get("pos"))
    d = p.get("directions")
    shape = site_shape(model, site)
    if not isinstance(d, Tensor) or d.ndim not in (1, 2):
        raise ShapeError(f"directions should be a tensor (d,) or (k, d); got {getattr(d, 'shape', d)!r}")
    if shape is not None and d.shape[-1] != shape[-1]:
        raise ShapeError(
            f"directions have width {d.shape[-1]}, but site {site!r} has trailing width {shape[-1]}"
        )


def _orthonormal(directions: Tensor) -> Tensor:
    d = directions.detach().to(torch.float64)
    d = d.unsqueeze(0) if d.ndim == 1 else d
    q, _ = torch.linalg.qr(d.T)
    return q.T.contiguous()  # (k, d)


@register_op("project_out", validate=_v_project)
def project_out_op(directions: Tensor, pos: PosSpec = None) -> HookFn:
    """Remove the component of the activation in the span of ``directions`` (rows, orthonormalized)."""
    basis = _Cached(_orthonormal(directions))

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        q = basis.like(act)
        return where_pos(pos, act - (act @ q.T) @ q, act)

    return hook_fn


@register_op("project_onto", validate=_v_project)
def project_onto_op(directions: Tensor, pos: PosSpec = None) -> HookFn:
    """Keep only the component of the activation in the span of ``directions``."""
    basis = _Cached(_orthonormal(directions))

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        q = basis.like(act)
        return where_pos(pos, (act @ q.T) @ q, act)

    return hook_fn


def _v_clamp(model: Any, site: str, p: Mapping[str, Any]) -> None:
    _validate_common(model, site, p)
    if p.get("min") is None and p.get("max") is None:
        raise ShapeError(f"clamp at {site!r} needs min, max or both; got neither")
    for key in ("min", "max"):
        _check_vector(model, site, p.get(key), key)


@register_op("clamp", validate=_v_clamp)
def clamp_op(min: Tensor | float | None = None, max: Tensor | float | None = None,  # noqa: A002
             units: UnitSpec = None, pos: PosSpec = None) -> HookFn:
    """Clamp the selected units into ``[min, max]`` (scalars or per-unit tensors)."""
    lo = _Cached(min) if min is not None else None
    hi = _Cached(max) if max is not None else None

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        out = act
        if lo is not None:
            out = torch.maximum(out, lo.like(act))
        if hi is not None:
            out = torch.minimum(out, hi.like(act))
        mask = _unit_mask(units, act)
        if mask is not None:
            out = torch.where(mask, out, act)
        return where_pos(pos, out, act)

    return hook_fn


def _capture_factory(store: dict, key: str | None = None, detach: bool = True, append: bool = False) -> HookFn:
    def hook_fn(act: Tensor, hook: Any = None) -> None:
        k = key or getattr(hook, "name", "activation")
        value = act.detach().clone() if detach else act
        if append:
            store.setdefault(k, []).append(value)
        else:
            store[k] = value
        return None

    return hook_fn


def _v_capture(model: Any, site: str, p: Mapping[str, Any]) -> None:
    if not hasattr(p.get("store"), "__setitem__"):
        raise ShapeError(f"capture at {site!r} needs a dict-like store the caller owns; got {p.get('store')!r}")


register_op("capture", validate=_v_capture, writes=False, serializable=False)(_capture_factory)
register_op("capture_grad", validate=_v_capture, writes=False, serializable=False,
            direction="bwd")(_capture_factory)


@register_op("custom", writes=True, serializable=False)
def custom_op(fn: HookFn) -> HookFn:
    """An arbitrary TransformerLens hook function (the escape hatch; cannot be saved)."""
    return fn


@register_op("custom_bwd", writes=True, serializable=False, direction="bwd")
def custom_bwd_op(fn: HookFn) -> HookFn:
    """An arbitrary backward hook function (cannot be saved)."""
    return fn


__all__ = ["last_token_positions", "where_pos", "check_pos", "PosSpec", "UnitSpec"]
