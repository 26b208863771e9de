"""Patching results: the effect of patching each node, its grid, a table and a heatmap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .nodes import NodeSet


@dataclass(frozen=True, eq=False)
class PatchResult:
    """The effect of patching each node of ``nodes`` on a metric, for every method alike.

    - ``effects``: change of the mean metric when the node is patched (measured by ``exact``, estimated to
      first order by ``atp`` / ``relp``);
    - ``baseline``: mean metric of the unpatched target run; ``patched`` = ``baseline + effects``;
    - ``per_prompt``: ``(n_nodes, n_prompts)`` effects per prompt;
    - ``method``: ``"exact"``, ``"atp"`` or ``"relp"``; ``direction``: ``"denoise"`` or ``"noise"``.
    """

    effects: Float[Tensor, "n_nodes"]
    nodes: NodeSet
    method: str
    direction: str
    baseline: float
    per_prompt: Float[Tensor, "n_nodes n_prompts"] | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def patched(self) -> Float[Tensor, "n_nodes"]:
        """The mean metric with each node patched (``baseline + effects``)."""
        return self.baseline + self.effects

    def grid(self) -> Float[Tensor, "..."]:
        """``effects`` on the node grid (e.g. ``(layer, pos)`` like ``transformer_lens.patching``); cells no node
        fills (narrower layers of a pruned model) are NaN."""
        out = torch.full(self.nodes.shape, float("nan"))
        for value, node in zip(self.effects.tolist(), self.nodes.nodes):
            out[node.coords] = value
        return out

    def to_frame(self) -> Any:
        """A pandas DataFrame, one row per node: grid coordinates, site, units, pos, label, effect."""
        import pandas as pd

        rows = []
        for n, eff in zip(self.nodes.nodes, self.effects.tolist()):
            row: dict[str, Any] = dict(zip(self.nodes.axes, n.coords))
            row.update(site=n.site, units=None if n.units is None else list(n.units), pos=n.pos, label=n.label(),
                       effect=eff, method=self.method)
            rows.append(row)
        return pd.DataFrame(rows)

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` nodes with the largest absolute effect."""
        idx = self.effects.abs().argsort(descending=True)[:k].tolist()
        return [(self.nodes.nodes[i].label(), float(self.effects[i])) for i in idx]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: the effect grid (empty cells as null), baseline, timing and settings."""
        return {"method": self.method, "direction": self.direction, "baseline": self.baseline,
                "kind": self.nodes.kind, "axes": list(self.nodes.axes), "shape": list(self.nodes.shape),
                "effects": _nan_to_none(self.grid().tolist()), "seconds": self.seconds, **self.info}

    def plot(self, *, title: str | None = None) -> Any:
        """A heatmap of the effects (2-D grids as is; 3-D grids summed over the last axis) as a matplotlib
        Figure; save it with ``fig.savefig(path)``."""
        from matplotlib.figure import Figure

        g = self.grid().detach().float()
        axes = list(self.nodes.axes)
        if g.ndim == 3:
            g, axes = g.nansum(-1), axes[:2]
        if g.ndim == 1:
            g, axes = g[None], ["", axes[0]]
        lim = float(g.nan_to_num().abs().max()) or 1.0
        fig = Figure(figsize=(max(4, 0.35 * g.shape[1] + 2), max(3, 0.25 * g.shape[0] + 1.5)), layout="tight")
        ax = fig.subplots()
        im = ax.imshow(g.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_ylabel(axes[0])
        ax.set_xlabel(axes[1])
        ax.set_title(title or f"{self.method} patching ({self.direction}): {self.nodes.kind}")
        fig.colorbar(im, ax=ax, label="effect on metric")
        return fig


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if x != x else x


def correlation(a: PatchResult | Tensor, b: PatchResult | Tensor) -> dict[str, float]:
    """Pearson and Spearman correlation of two results' effects (NaN where either is constant)."""
    x = (a.effects if isinstance(a, PatchResult) else a).double().flatten()
    y = (b.effects if isinstance(b, PatchResult) else b).double().flatten()

    def pearson(u: Tensor, v: Tensor) -> float:
        u, v = u - u.mean(), v - v.mean()
        d = (u.norm() * v.norm()).item()
        return float("nan") if d == 0 else float((u @ v).item() / d)

    def ranks(u: Tensor) -> Tensor:
        order = u.argsort()
        r = torch.empty_like(u)
        r[order] = torch.arange(len(u), dtype=u.dtype)
        for val in u.unique():  # average ties
            m = u == val
            if m.sum() > 1:
                r[m] = r[m].mean()
        return r

    return {"pearson": pearson(x, y), "spearman": pearson(ranks(x), ranks(y))}


__all__ = ["PatchResult", "correlation"]
