"""Is a subspace patch an illusion? The check of Makelov, Lange, Geiger and Nanda (ICLR 2024).

Patching only the component of an activation along directions ``V`` (``a <- a + Q Qᵀ (a_src - a)``) can change
the output through a *dormant* pathway: ``V`` may mix a part that varies between the two runs but that nothing
downstream reads (the null space of the next read-out) with a part that is read but does not vary. The patch
then moves the read part by an amount set by the unread part. The check splits ``V`` into the read-out's row
space (what the next weights read) and its null space, patches each part and the whole site separately, and
reports where the patched coefficient comes from.

>>> check = subspace_illusion(model, task, "blocks.9.mlp.hook_post", v)   # read-out: that MLP's W_out
>>> check.illusion, check.effects, check.coefficient_shares
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import FuncnetError, ShapeError
from ..hooks import Intervention, patch, patch_subspace, project_out
from ..hooks.select import where_pos
from ..hooks.sites import check_sites, site_shape
from ..hooks.values import real_tensor
from ._common import DIRECTIONS, as_tokens, run_capture

_MLP_POST = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")


@dataclass(frozen=True)
class IllusionCheck:
    """The outcome of :func:`subspace_illusion`.

    - ``effects``: change of the mean metric when patching the subspace of ``V`` (``"subspace"``), only its
      row-space part (``"row_space"``), only its null-space part (``"null_space"``), or the whole site
      (``"full"``);
    - ``null_fraction``: share of ``V``'s squared norm in the read-out's null space;
    - ``coefficient_shares``: how much of the patched coefficients ``Qᵀ (a_src - a)`` comes from each part
      (mean absolute values over the patched cells, normalised to sum to 1);
    - ``illusion``: the patch has an effect (at least ``min_effect``), most of its coefficient comes from the
      null space, and patching the row-space part alone gives less than half of it; ``reason`` says why.
    """

    site: str
    direction: str
    baseline: float
    gap: float
    effects: dict[str, float]
    null_fraction: float
    coefficient_shares: dict[str, float]
    min_effect: float
    illusion: bool
    full_patch_does_little: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_out(model: Any, site: str, read_out: Any, width: int) -> Float[Tensor, "d d_out"]:
    if read_out is None:
        m = _MLP_POST.match(site)
        if not m or not hasattr(model, "blocks"):
            raise FuncnetError(f"no default read-out for {site!r}; pass read_out=, the (d, d_out) matrix that reads "
                               f"the site (e.g. W_O of a head for attn.hook_z, W_out for mlp.hook_post)")
        read_out = model.blocks[int(m.group(1))].mlp.W_out
    w = real_tensor(read_out, "read_out").detach().double().cpu()
    if w.ndim != 2 or w.shape[0] != width:
        raise ShapeError(f"read_out should be a ({width}, d_out) matrix reading site {site!r}, got shape "
                         f"{tuple(w.shape)}")
    return w


def _basis(rows: Tensor, rel_tol: float = 1e-6) -> Tensor | None:
    """An orthonormal basis ``(r, d)`` of the span of ``rows``; None when they span nothing."""
    if rows.abs().max() == 0:
        return None
    _, s, vh = torch.linalg.svd(rows, full_matrices=False)
    keep = s > s[0] * rel_tol * max(rows.shape)
    return vh[keep] if bool(keep.any()) else None


def subspace_illusion(model: Any, task: Any, site: str, directions: Float[Tensor, "*k d"], *, read_out: Any = None,
                      pos: Any = None, direction: str = "noise", min_effect: float | None = None) -> IllusionCheck:
    """Patch ``site`` along ``directions`` (one ``(d,)`` or ``k`` rows ``(k, d)``), along their row-space and
    null-space parts with respect to ``read_out`` (default: the layer's ``W_out`` for ``mlp.hook_post``), and
    whole; report the effects and whether the subspace patch works through a dormant pathway.

    ``task`` is a :class:`~tl_funcnet.patching.Task` (its metric is the mean logit difference); ``direction``
    ``"noise"`` patches corrupted values into the clean run, ``"denoise"`` the reverse; ``pos`` restricts the
    patch to some positions (default all). ``min_effect`` (default: a tenth of the metric gap between the two
    runs) is the smallest effect the verdict treats as an effect.
    """
    if direction not in DIRECTIONS:
        raise FuncnetError(f"direction should be 'noise' or 'denoise', got {direction!r}")
    check_sites(model, [site])
    shape = site_shape(model, site)
    if shape is None or len(shape) != 1:
        raise FuncnetError(f"subspace patching needs a (batch, pos, d) site; {site!r} has per-position shape {shape}")
    width = int(shape[0])
    v = real_tensor(directions, "directions").detach().double().cpu()
    v = v.reshape(1, -1) if v.ndim == 1 else v
    if v.ndim != 2 or v.shape[1] != width:
        raise ShapeError(f"directions should be ({width},) or (k, {width}) for site {site!r}, got shape "
                         f"{tuple(torch.as_tensor(directions).shape)}")
    project_out(site, v)  # the directions' own checks: no zero vector, linearly independent
    w = _read_out(model, site, read_out, width)
    clean, corrupted = as_tokens(task.clean, "task.clean"), as_tokens(task.corrupted, "task.corrupted")
    if clean.shape != corrupted.shape:
        raise ShapeError(f"clean {tuple(clean.shape)} and corrupted {tuple(corrupted.shape)} tokens differ in shape")
    metric = task.metric()
    target, source = (clean, corrupted) if direction == "noise" else (corrupted, clean)
    dev = model.cfg.device
    target, source = target.to(dev), source.to(dev)

    u = _basis(w.T)  # (r, d): the directions the read-out reads
    q = _basis(v)  # never None: project_out refused zero and dependent directions
    row = q @ u.T @ u if u is not None else torch.zeros_like(q)
    null = q - row
    acts = {name: run_capture(model, toks, [site])[site] for name, toks in (("target", target), ("source", source))}
    src = acts["source"]

    def mean_metric(iv: Intervention | None) -> float:
        with torch.no_grad(), (iv or Intervention()).applied(model):
            return float(metric(model(target)).mean())

    baseline = mean_metric(None)
    with torch.no_grad():
        gap = float(metric(model(source)).mean()) - baseline
    effects = {}
    for name, rows in (("subspace", q), ("row_space", row), ("null_space", null)):
        basis = _basis(rows)  # None: that part is empty, so patching it changes nothing
        effects[name] = 0.0 if basis is None else mean_metric(
            patch_subspace(site, basis.to(src.dtype), src.detach().cpu(), pos=pos)) - baseline
    effects["full"] = mean_metric(patch(site, src.detach().cpu(), pos=pos)) - baseline

    delta = (src - acts["target"]).detach().double().cpu()
    cells = where_pos(pos, torch.ones_like(delta[..., :1]), torch.zeros_like(delta[..., :1]), site).bool()[..., 0]
    d = delta[cells]  # (n_cells, d)
    c_row, c_null = (d @ row.T).abs().mean().item(), (d @ null.T).abs().mean().item()
    total = c_row + c_null
    shares = {"row_space": c_row / total if total else 0.0, "null_space": c_null / total if total else 0.0}
    null_fraction = float((null ** 2).sum() / (q ** 2).sum())
    threshold = float(min_effect) if min_effect is not None else 0.1 * abs(gap)
    e_sub, e_row, e_full = abs(effects["subspace"]), abs(effects["row_space"]), abs(effects["full"])
    has_effect = e_sub >= threshold and e_sub > 0
    illusion = has_effect and shares["null_space"] > 0.5 and e_row < 0.5 * e_sub
    full_small = has_effect and e_full < 0.5 * e_sub
    if not has_effect:
        reason = (f"the subspace patch changes the metric by {effects['subspace']:+.4g}, below min_effect "
                  f"{threshold:.4g}: no effect to explain")
    elif illusion:
        reason = (f"{shares['null_space']:.0%} of the patched coefficient comes from the read-out's null space (a "
                  f"part nothing downstream reads), and the row-space part alone changes the metric by only "
                  f"{effects['row_space']:+.4g} of the subspace patch's {effects['subspace']:+.4g}: the effect goes "
                  f"through a dormant pathway")
    else:
        reason = (f"the row-space part alone carries the effect ({effects['row_space']:+.4g} of "
                  f"{effects['subspace']:+.4g}; {shares['row_space']:.0%} of the coefficient from the row space): "
                  f"no sign of an illusion")
    return IllusionCheck(site, direction, baseline, gap, effects, null_fraction, shares, threshold, illusion,
                         full_small, reason)


__all__ = ["IllusionCheck", "subspace_illusion"]
