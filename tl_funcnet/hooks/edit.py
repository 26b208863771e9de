"""The built-in ops that change an activation: add, scale, ablate, keep_only, replace, projections, subspace
patching, clamp, sparsify, detach.

Every op returns a new tensor and never edits the activation in place. Tensors held in params move to the
activation's device and dtype once per application. ``units`` and ``pos`` follow :mod:`.select`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from ..errors import FuncnetError, ShapeError
from .registry import HookFn, register_op
from .select import PosSpec, UnitSpec, prepare_pos, prepare_units, unit_mask, where_pos
from .sites import site_shape, unit_count
from .values import finite_number, real_tensor, scalar_or_tensor


class _Cached:
    """A parameter (number or tensor) as a tensor on an activation's device and dtype, converted once."""

    def __init__(self, value: Tensor | float):
        self.value = value
        self._cache: dict[tuple[Any, Any], Tensor] = {}

    def like(self, act: Tensor) -> Tensor:
        key = (act.device, act.dtype)
        hit = self._cache.get(key)
        if hit is None:
            v = self.value if isinstance(self.value, Tensor) else torch.tensor(self.value)
            hit = self._cache[key] = v.detach().to(device=act.device, dtype=act.dtype)
        return hit


# --------------------------------------------------------------------------- parameter checks


def _common(p: dict[str, Any]) -> dict[str, Any]:
    if "units" in p:
        p["units"] = prepare_units(p["units"])
    if "pos" in p:
        p["pos"] = prepare_pos(p["pos"])
    return p


def _check_units(model: Any, site: str, units: UnitSpec) -> None:
    n = unit_count(model, site)
    if units is None or n is None:
        return
    if isinstance(units, Tensor):
        if units.numel() != n:
            raise ShapeError(f"units mask has {units.numel()} entries, but {site!r} has {n} units")
        return
    if units and max(units) >= n:
        raise ShapeError(f"unit index {max(units)} is out of range for {site!r}, which has {n} units "
                         f"(valid: 0..{n - 1})")


def _check_width(model: Any, site: str, value: Any, name: str) -> None:
    """A tensor param must be a scalar, the site's trailing shape, or (per-head sites) one head's width."""
    shape = site_shape(model, site)
    if shape is None or not isinstance(value, Tensor) or value.ndim == 0:
        return
    got = tuple(value.shape)
    if got == shape or (len(shape) == 2 and got == shape[1:]):
        return
    head = f" or ({shape[1]},) for every head" if len(shape) == 2 else ""
    raise ShapeError(f"{name} has shape {got}, but site {site!r} has trailing shape {shape}: pass a number, a "
                     f"tensor of shape {shape}{head}")


def _v_common(model: Any, site: str, p: Mapping[str, Any], *tensors: str) -> None:
    _check_units(model, site, p.get("units"))
    for name in tensors:
        _check_width(model, site, p.get(name), name)


# --------------------------------------------------------------------------- add / scale


def _p_add(p: dict[str, Any]) -> dict[str, Any]:
    p["vector"] = scalar_or_tensor(p.get("vector"), "vector")
    if "scale" in p:
        p["scale"] = finite_number(p["scale"], "scale")
    return _common(p)


@register_op("add", prepare=_p_add, validate=lambda m, s, p: _v_common(m, s, p, "vector"))
def add_op(vector: Tensor | float, scale: float = 1.0, units: UnitSpec = None, pos: PosSpec = None) -> HookFn:
    """``act + scale * vector`` (broadcast over batch and positions), optionally on selected units only."""
    vec = _Cached(vector)

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        site = getattr(hook, "name", "?")
        delta = vec.like(act) * scale
        mask = unit_mask(units, act, site)
        if mask is not None:
            delta = torch.where(mask, delta, torch.zeros((), dtype=act.dtype, device=act.device))
        return where_pos(pos, act + delta, act, site)

    return hook_fn


def _p_scale(p: dict[str, Any]) -> dict[str, Any]:
    p["factor"] = scalar_or_tensor(p.get("factor"), "factor")
    return _common(p)


@register_op("scale", prepare=_p_scale, validate=lambda m, s, p: _v_common(m, s, p, "factor"))
def scale_op(factor: Tensor | float, units: UnitSpec = None, pos: PosSpec = None) -> HookFn:
    """``act * factor`` on the selected units and positions (a number or a per-unit tensor)."""
    fac = _Cached(factor)

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        site = getattr(hook, "name", "?")
        f = fac.like(act)
        mask = unit_mask(units, act, site)
        if mask is not None:
            f = torch.where(mask, f, torch.ones((), dtype=act.dtype, device=act.device))
        return where_pos(pos, act * f, act, site)

    return hook_fn


# --------------------------------------------------------------------------- ablate / keep_only

ABLATION_MODES = ("zero", "mean", "constant")


def _p_ablate(p: dict[str, Any]) -> dict[str, Any]:
    mode = p.setdefault("mode", "zero")
    if mode not in ABLATION_MODES:
        raise FuncnetError(f"mode should be one of {ABLATION_MODES}, got {mode!r}")
    if p.get("values") is not None:
        p["values"] = scalar_or_tensor(p["values"], "values")
    if mode != "zero" and p.get("values") is None:
        raise FuncnetError(f"mode={mode!r} needs values (e.g. the mean activation at the site); got none")
    if mode == "zero" and p.get("values") is not None:
        raise FuncnetError("mode='zero' takes no values; pass mode='mean' or 'constant' to use them")
    return _common(p)


def _ablation(units: UnitSpec, mode: str, values: Tensor | float | None, pos: PosSpec, invert: bool) -> HookFn:
    vals = _Cached(0.0 if values is None else values)

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        site = getattr(hook, "name", "?")
        mask = unit_mask(units, act, site)
        if mask is None:
            mask = torch.ones((1,) * act.ndim, dtype=torch.bool, device=act.device)
        if invert:
            mask = ~mask
        fill = vals.like(act) if mode != "zero" else torch.zeros((), dtype=act.dtype, device=act.device)
        return where_pos(pos, torch.where(mask, fill, act), act, site)

    return hook_fn


@register_op("ablate", prepare=_p_ablate, validate=lambda m, s, p: _v_common(m, s, p, "values"))
def ablate_op(units: UnitSpec = None, mode: str = "zero", values: Tensor | float | None = None,
              pos: PosSpec = None) -> HookFn:
    """Replace the selected units by zero, stored means or a constant (all units if ``units`` is None)."""
    return _ablation(units, mode, values, pos, invert=False)


@register_op("keep_only", prepare=_p_ablate, validate=lambda m, s, p: _v_common(m, s, p, "values"))
def keep_only_op(units: UnitSpec = None, mode: str = "zero", values: Tensor | float | None = None,
                 pos: PosSpec = None) -> HookFn:
    """Ablate every unit except the selected ones."""
    return _ablation(units, mode, values, pos, invert=True)


# --------------------------------------------------------------------------- replace (patch)


def _p_replace(p: dict[str, Any]) -> dict[str, Any]:
    act = real_tensor(p.get("activation"), "activation")
    if act.ndim < 2:
        raise ShapeError(f"a patched activation is (pos, *units) or (batch, pos, *units), got shape {tuple(act.shape)}")
    p["activation"] = act
    where = p.get("where")
    if where is not None:
        w = torch.as_tensor(where).detach()
        if w.dtype != torch.bool or w.ndim != 3:
            raise FuncnetError(f"where should be a bool tensor (batch, pos, n_units) marking the cells to patch, got "
                               f"{w.dtype} of shape {tuple(w.shape)}")
        p["where"] = w.clone()
    return _common(p)


def _v_replace(model: Any, site: str, p: Mapping[str, Any]) -> None:
    _check_units(model, site, p.get("units"))
    shape = site_shape(model, site)
    act = p["activation"]
    if shape is not None and tuple(act.shape[-len(shape):]) != shape:
        raise ShapeError(f"the patched activation has shape {tuple(act.shape)}, but site {site!r} expects "
                         f"(pos, *{shape}) or (batch, pos, *{shape})")


def _rows_like(stored: Tensor, act: Tensor, site: str) -> Tensor:
    """A stored ``(b, pos, ...)`` or ``(pos, ...)`` activation expanded to the run's batch (tiled by rows)."""
    s = stored.unsqueeze(0) if stored.ndim == act.ndim - 1 else stored
    if s.shape[1:] != act.shape[1:]:
        raise ShapeError(f"patch at {site!r}: the stored activation has shape {tuple(s.shape[1:])} per row, this "
                         f"forward has {tuple(act.shape[1:])}; patch prompts of the same length")
    b, batch = s.shape[0], act.shape[0]
    if b == batch or b == 1:
        return s.expand_as(act)
    if batch % b:
        raise ShapeError(f"patch at {site!r}: {b} stored rows do not tile a batch of {batch}")
    return s.repeat(batch // b, *([1] * (s.ndim - 1)))


@register_op("replace", prepare=_p_replace, validate=_v_replace)
def replace_op(activation: Tensor, units: UnitSpec = None, pos: PosSpec = None, where: Tensor | None = None) -> HookFn:
    """Overwrite the activation with a stored one, e.g. from a clean run.

    ``activation`` is ``(pos, ...)`` or ``(b, pos, ...)``; a batch that is a multiple of ``b`` reuses the rows
    in turn (row ``r`` takes stored row ``r % b``). ``where`` (bool ``(batch, pos, n_units)``) patches only
    the marked cells, one pattern per row (how batched exact patching patches one node per row).
    """
    src = _Cached(activation)

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        site = getattr(hook, "name", "?")
        s = _rows_like(src.like(act), act, site)
        mask = unit_mask(units, act, site)
        if where is not None:
            w = where.to(act.device)
            if w.shape != act.shape[:3]:
                raise ShapeError(f"patch at {site!r}: where has shape {tuple(w.shape)}, the activation "
                                 f"{tuple(act.shape[:3])}")
            w = w[..., None] if act.ndim == 4 else w
            mask = w if mask is None else (w & mask)
        out = s if mask is None else torch.where(mask, s, act)
        return where_pos(pos, out, act, site)

    return hook_fn


# --------------------------------------------------------------------------- projections


def _p_project(p: dict[str, Any]) -> dict[str, Any]:
    d = real_tensor(p.get("directions"), "directions")
    if d.ndim not in (1, 2):
        raise ShapeError(f"directions should be one vector (d,) or k vectors (k, d), got shape {tuple(d.shape)}")
    rows = d.reshape(-1, d.shape[-1]).double()
    norms = rows.norm(dim=1)
    if bool((norms == 0).any()):
        raise FuncnetError(f"direction {int((norms == 0).nonzero()[0])} is the zero vector; it spans nothing")
    s = torch.linalg.svdvals(rows / norms[:, None])
    rank = int((s > s[0] * 1e-6 * max(rows.shape)).sum())
    if rank < rows.shape[0]:
        raise FuncnetError(f"the {rows.shape[0]} directions span only {rank} dimension(s) (some are repeated or "
                           f"linear combinations of others); pass linearly independent directions")
    p["directions"] = d
    return _common(p)


def _v_project(model: Any, site: str, p: Mapping[str, Any]) -> None:
    shape = site_shape(model, site)
    d = p["directions"]
    if shape is not None and d.shape[-1] != shape[-1]:
        raise ShapeError(f"directions have width {d.shape[-1]}, but site {site!r} has trailing width {shape[-1]}")


def _orthonormal(directions: Tensor) -> Tensor:
    d = directions.detach().to(torch.float64).reshape(-1, directions.shape[-1])
    q, _ = torch.linalg.qr(d.T)
    return q.T.contiguous()  # (k, d)


@register_op("project_out", prepare=_p_project, validate=_v_project)
def project_out_op(directions: Tensor, pos: PosSpec = None) -> HookFn:
    """Remove the activation's component in the span of ``directions``."""
    basis = _Cached(_orthonormal(directions))

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        q = basis.like(act)
        return where_pos(pos, act - (act @ q.T) @ q, act, getattr(hook, "name", "?"))

    return hook_fn


@register_op("project_onto", prepare=_p_project, validate=_v_project)
def project_onto_op(directions: Tensor, pos: PosSpec = None) -> HookFn:
    """Keep only the activation's component in the span of ``directions``."""
    basis = _Cached(_orthonormal(directions))

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        q = basis.like(act)
        return where_pos(pos, (act @ q.T) @ q, act, getattr(hook, "name", "?"))

    return hook_fn


def _p_patch_subspace(p: dict[str, Any]) -> dict[str, Any]:
    _p_project({k: v for k, v in p.items() if k == "directions"})  # the same checks as the projections
    p["directions"] = real_tensor(p.get("directions"), "directions")
    act = real_tensor(p.get("activation"), "activation")
    if act.ndim < 2:
        raise ShapeError(f"a source activation is (pos, d) or (batch, pos, d), got shape {tuple(act.shape)}")
    if act.shape[-1] != p["directions"].shape[-1]:
        raise ShapeError(f"directions have width {p['directions'].shape[-1]} but the source activation has width "
                         f"{act.shape[-1]}")
    p["activation"] = act
    return _common(p)


def _v_patch_subspace(model: Any, site: str, p: Mapping[str, Any]) -> None:
    _v_project(model, site, p)
    _v_replace(model, site, {"activation": p["activation"], "units": None})


@register_op("patch_subspace", prepare=_p_patch_subspace, validate=_v_patch_subspace)
def patch_subspace_op(directions: Tensor, activation: Tensor, pos: PosSpec = None) -> HookFn:
    """Patch only the component in the span of ``directions``: ``a <- a + Q Qᵀ (source - a)`` (``Q`` an
    orthonormal basis of the span); the rest of the activation keeps its own value."""
    basis = _Cached(_orthonormal(directions))
    src = _Cached(activation)

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        site = getattr(hook, "name", "?")
        q = basis.like(act)
        diff = _rows_like(src.like(act), act, site) - act
        return where_pos(pos, act + (diff @ q.T) @ q, act, site)

    return hook_fn


# --------------------------------------------------------------------------- clamp


def _p_clamp(p: dict[str, Any]) -> dict[str, Any]:
    lo, hi = p.get("min"), p.get("max")
    if lo is None and hi is None:
        raise FuncnetError("clamp needs min, max or both; got neither")
    for key in ("min", "max"):
        if p.get(key) is not None:
            p[key] = scalar_or_tensor(p[key], key)
    lo, hi = p.get("min"), p.get("max")
    if lo is not None and hi is not None:
        try:
            ok = bool((torch.as_tensor(lo) <= torch.as_tensor(hi)).all())
        except RuntimeError as err:
            raise ShapeError(f"clamp min and max have shapes that do not broadcast ({err})") from None
        if not ok:
            raise FuncnetError(f"clamp needs min <= max, got min={lo!r:.40} and max={hi!r:.40}")
    return _common(p)


@register_op("clamp", prepare=_p_clamp, validate=lambda m, s, p: _v_common(m, s, p, "min", "max"))
def clamp_op(min: Tensor | float | None = None, max: Tensor | float | None = None,  # noqa: A002
             units: UnitSpec = None, pos: PosSpec = None) -> HookFn:
    """Clamp the selected units into ``[min, max]`` (numbers or per-unit tensors)."""
    lo = _Cached(min) if min is not None else None
    hi = _Cached(max) if max is not None else None

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        site = getattr(hook, "name", "?")
        out = act
        if lo is not None:
            out = torch.maximum(out, lo.like(act))
        if hi is not None:
            out = torch.minimum(out, hi.like(act))
        mask = unit_mask(units, act, site)
        if mask is not None:
            out = torch.where(mask, out, act)
        return where_pos(pos, out, act, site)

    return hook_fn


# --------------------------------------------------------------------------- sparsify

#: Activation functions ``sparsify`` can score through (all map 0 to 0, so zeroing the input zeroes the output).
SPARSIFY_ACTIVATIONS = {
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
    "gelu": lambda x: torch.nn.functional.gelu(x),
    "gelu_new": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
}


def _p_sparsify(p: dict[str, Any]) -> dict[str, Any]:
    threshold = real_tensor(p.get("threshold"), "threshold")
    if threshold.ndim != 1 or bool((threshold < 0).any()):
        raise FuncnetError(f"threshold should be one non-negative number per unit (a 1-d tensor), got shape "
                           f"{tuple(threshold.shape)}" + (" with negative entries" if threshold.ndim == 1 else ""))
    p["threshold"] = threshold
    if p.get("weight") is not None:
        weight = real_tensor(p["weight"], "weight")
        if weight.shape != threshold.shape or bool((weight < 0).any()):
            raise FuncnetError(f"weight should be one non-negative number per unit, shape {tuple(threshold.shape)}; "
                               f"got shape {tuple(weight.shape)}")
        p["weight"] = weight
    act = p.get("activation")
    if act is not None and act not in SPARSIFY_ACTIVATIONS:
        raise FuncnetError(f"activation should be None or one of {sorted(SPARSIFY_ACTIVATIONS)}, got {act!r:.40}")
    return _common(p)


def _v_sparsify(model: Any, site: str, p: Mapping[str, Any]) -> None:
    n = unit_count(model, site)
    if n is not None and p["threshold"].numel() != n:
        raise ShapeError(f"threshold has {p['threshold'].numel()} entries, but {site!r} has {n} units; calibrate "
                         f"the thresholds on this model")


@register_op("sparsify", prepare=_p_sparsify, validate=_v_sparsify)
def sparsify_op(threshold: Tensor, weight: Tensor | None = None, activation: str | None = None,
                pos: PosSpec = None) -> HookFn:
    """Per token, zero the units whose score ``|activation(a)| * weight`` falls below their ``threshold``
    (activation sparsity; a unit with threshold 0 is never zeroed)."""
    thr = _Cached(threshold)
    w = _Cached(weight) if weight is not None else None
    fn = SPARSIFY_ACTIVATIONS[activation] if activation is not None else None

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        score = (fn(act) if fn is not None else act).abs()
        if w is not None:
            score = score * w.like(act)
        kept = act * (score >= thr.like(act)).to(act.dtype)
        return where_pos(pos, kept, act, getattr(hook, "name", "?"))

    return hook_fn


# --------------------------------------------------------------------------- detach


@register_op("detach")
def detach_op() -> HookFn:
    """Stop the gradient at this site: the forward value is unchanged, nothing flows back through it."""

    def hook_fn(act: Tensor, hook: Any = None) -> Tensor:
        return act.detach()

    return hook_fn


__all__ = ["ABLATION_MODES", "add_op", "scale_op", "ablate_op", "keep_only_op", "replace_op", "project_out_op",
           "project_onto_op", "clamp_op", "detach_op"]
