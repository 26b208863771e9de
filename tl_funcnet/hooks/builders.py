"""Builders: small functions named for their effect that return one-hook :class:`Intervention` values.

Builders never touch a model; only :meth:`Intervention.applied` and TransformerLens's ``run_with_hooks``
do. Sites are TransformerLens hook names, verbatim. Parameters are checked here (finite real numbers,
integer indices, valid positions); their fit to a model's widths is checked when the intervention is applied.
"""

from __future__ import annotations

from typing import Any, Callable, MutableMapping, Sequence

from jaxtyping import Bool, Float
from torch import Tensor

from ..errors import FuncnetError
from .intervention import Hook, Intervention
from .registry import get_op
from .select import PosSpec, UnitSpec


def _one(site: str, op: str, **params: Any) -> Intervention:
    """One hook; a None stands for "not given" only where the op's own default is None (else it is refused)."""
    import inspect

    defaults = {n: p.default for n, p in inspect.signature(get_op(op).factory).parameters.items()}
    return Intervention((Hook(site, op, {k: v for k, v in params.items()
                                         if not (v is None and defaults.get(k, 0) is None)}),))


def _names(sites: str | Sequence[str]) -> list[str]:
    names = [sites] if isinstance(sites, str) else list(sites) if isinstance(sites, (list, tuple)) else None
    if not names:
        raise FuncnetError(f"sites should be a hook name or a non-empty list of hook names, got {sites!r:.60}")
    return names


def steer(site: str, vector: Float[Tensor, "*trailing"], *, scale: float = 1.0, pos: PosSpec = None) -> Intervention:
    """Add ``scale * vector`` to the activation at ``site`` (all positions by default)."""
    return _one(site, "add", vector=vector, scale=scale, pos=pos)


def add(site: str, value: float | Tensor, *, units: UnitSpec = None, pos: PosSpec = None) -> Intervention:
    """Add a number (or a per-unit tensor) to the selected units."""
    return _one(site, "add", vector=value, units=units, pos=pos)


def scale(site: str, factor: float | Tensor, *, units: UnitSpec = None, pos: PosSpec = None) -> Intervention:
    """Multiply the selected units by ``factor``."""
    return _one(site, "scale", factor=factor, units=units, pos=pos)


def ablate(site: str, units: UnitSpec = None, *, mode: str = "zero", values: Tensor | float | None = None,
           pos: PosSpec = None) -> Intervention:
    """Zero-, mean- (``values`` = the mean activation) or constant-ablate the selected units or heads.

    ``units`` index neurons on ``(batch, pos, d)`` sites and heads on per-head sites like ``attn.hook_z``;
    ``units=None`` ablates the whole activation.
    """
    return _one(site, "ablate", units=units, mode=mode, values=values, pos=pos)


def keep_only(site: str, units: UnitSpec, *, mode: str = "zero", values: Tensor | float | None = None,
              pos: PosSpec = None) -> Intervention:
    """Ablate every unit (or head) except ``units``."""
    return _one(site, "keep_only", units=units, mode=mode, values=values, pos=pos)


def patch(site: str, activation: Float[Tensor, "*batch pos ..."], *, units: UnitSpec = None, pos: PosSpec = None,
          where: Bool[Tensor, "batch pos n_units"] | None = None) -> Intervention:
    """Replace the activation (optionally some units, positions or cells) with a stored one."""
    return _one(site, "replace", activation=activation, units=units, pos=pos, where=where)


def project_out(site: str, directions: Float[Tensor, "*k d"], *, pos: PosSpec = None) -> Intervention:
    """Remove the activation's component in the span of ``directions`` (linearly independent)."""
    return _one(site, "project_out", directions=directions, pos=pos)


def project_onto(site: str, directions: Float[Tensor, "*k d"], *, pos: PosSpec = None) -> Intervention:
    """Keep only the activation's component in the span of ``directions`` (linearly independent)."""
    return _one(site, "project_onto", directions=directions, pos=pos)


def patch_subspace(site: str, directions: Float[Tensor, "*k d"], activation: Float[Tensor, "*batch pos d"], *,
                   pos: PosSpec = None) -> Intervention:
    """Patch only the activation's component in the span of ``directions`` from a stored ``activation``:
    ``a <- a + Q Qᵀ (activation - a)`` (subspace activation patching; see
    :func:`tl_funcnet.patching.subspace_illusion` for the check that such a patch is not an illusion)."""
    return _one(site, "patch_subspace", directions=directions, activation=activation, pos=pos)


def clamp(site: str, *, min: float | Tensor | None = None, max: float | Tensor | None = None,  # noqa: A002
          units: UnitSpec = None, pos: PosSpec = None) -> Intervention:
    """Clamp the selected units into ``[min, max]``."""
    return _one(site, "clamp", min=min, max=max, units=units, pos=pos)


def sparsify(site: str, threshold: Float[Tensor, "units"], *, weight: Float[Tensor, "units"] | None = None,
             activation: str | None = None, pos: PosSpec = None) -> Intervention:
    """Activation sparsity: per token, zero each unit whose score ``|activation(a)| * weight`` is below its
    ``threshold`` (``activation``: None or the name of the MLP's activation function, for a site before it;
    threshold 0 never zeroes). :mod:`tl_funcnet.sparsity` calibrates the thresholds."""
    return _one(site, "sparsify", threshold=threshold, weight=weight, activation=activation, pos=pos)


def detach(sites: str | Sequence[str]) -> Intervention:
    """Stop the gradient at each site (forward values unchanged): the building block of LRP-style rules."""
    return Intervention(tuple(Hook(s, "detach") for s in _names(sites)))


def capture(sites: str | Sequence[str], store: MutableMapping[str, Any], *, append: bool = False,
            detach: bool = True) -> Intervention:
    """Copy activations at ``sites`` into ``store`` (a dict the caller owns), keyed by site.

    ``append=True`` keeps a list per site across forward passes. Capture only reads, so it joins any
    intervention with ``|``. It holds the caller's dict and so cannot be saved.
    """
    return Intervention(tuple(Hook(s, "capture", {"store": store, "key": s, "append": append, "detach": detach})
                              for s in _names(sites)))


def capture_grad(sites: str | Sequence[str], store: MutableMapping[str, Any]) -> Intervention:
    """Copy the gradient reaching each site during ``backward()`` into ``store`` (a backward hook)."""
    return Intervention(tuple(Hook(s, "capture_grad", {"store": store, "key": s}) for s in _names(sites)))


def record(sites: str | Sequence[str], sink: Callable[[str, Tensor], None]) -> Intervention:
    """Call ``sink(site, activation)`` at each site on every forward (for streaming consumers; not saveable)."""
    return Intervention(tuple(Hook(s, "record", {"sink": sink, "key": s}) for s in _names(sites)))


def custom(site: str, fn: Callable[..., Any]) -> Intervention:
    """Wrap an arbitrary TransformerLens hook function ``fn(activation, hook)`` (not serializable)."""
    return Intervention((Hook.custom(site, fn),))


__all__ = ["steer", "add", "scale", "ablate", "keep_only", "patch", "patch_subspace", "project_out", "project_onto",
           "clamp", "sparsify", "detach", "capture", "capture_grad", "record", "custom"]
