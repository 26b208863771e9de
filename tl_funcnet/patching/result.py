"""Patching results: values per node, their grid, and conversion to pandas and heatmaps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .nodes import NodeSet


@dataclass
class PatchResult:
    """Values per node in ``nodes`` order.

    - ``values``: the mean metric of the patched runs (exact) or the estimated *change* of the metric
      (AtP/RelP); ``effects`` is always the change relative to ``baseline``;
    - ``per_prompt``: ``(n_nodes, n_prompts)``; ``baseline``: mean metric of the unpatched target run;
    - ``method``: ``"exact"``, ``"atp"`` or ``"relp"``; ``direction``: ``"denoise"`` or ``"noise"``.
    """

    values: Float[Tensor, "n_nodes"]
    nodes: NodeSet
    method: str
    direction: str
    baseline: float
    per_prompt: Float[Tensor, "n_nodes n_prompts"] | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def effects(self) -> Float[Tensor, "n_nodes"]:
        """Change of the metric caused by patching each node."""
        return self.values - self.baseline if self.method == "exact" else self.values

    @property
    def grid(self) -> Float[Tensor, "..."]:
        """``values`` reshaped to the node grid (e.g. ``(layer, pos)``), like ``transformer_lens.patching``."""
        return self.values.reshape(self.nodes.shape)

    @property
    def effect_grid(self) -> Float[Tensor, "..."]:
        return self.effects.reshape(self.nodes.shape)

    def to_dataframe(self) -> Any:
        """One row per node: grid coordinates, site, units, pos, value and effect."""
        import pandas as pd

        rows = []
        vals, eff = self.values.tolist(), self.effects.tolist()
        for i, n in enumerate(self.nodes.nodes):
            row: dict[str, Any] = dict(zip(self.nodes.axes, n.coords))
            row.update(site=n.site, units=None if n.units is None else list(n.units), pos=n.pos, label=n.label(),
                       value=vals[i], effect=eff[i], method=self.method)
            rows.append(row)
        return pd.DataFrame(rows)

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` nodes with the largest absolute effect."""
        eff = self.effects
        idx = eff.abs().argsort(descending=True)[:k].tolist()
        return [(self.nodes.nodes[i].label(), float(eff[i])) for i in idx]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "direction": self.direction, "baseline": self.baseline,
                "kind": self.nodes.kind, "axes": list(self.nodes.axes), "shape": list(self.nodes.shape),
                "effects": self.effect_grid.tolist(), "seconds": self.seconds, **self.info}


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


def plot_heatmap(result: PatchResult, path: str | None = None, *, title: str | None = None) -> Any:
    """Heatmap of the effects (2-D grids as is; 3-D grids summed over the last axis). Writes a PNG if ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = result.effect_grid.detach().float()
    axes = list(result.nodes.axes)
    if g.ndim == 3:
        g, axes = g.sum(-1), axes[:2]
    if g.ndim == 1:
        g, axes = g[None], ["", axes[0]]
    lim = float(g.abs().max()) or 1.0
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * g.shape[1] + 2), max(3, 0.25 * g.shape[0] + 1.5)))
    im = ax.imshow(g.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_ylabel(axes[0])
    ax.set_xlabel(axes[1])
    ax.set_title(title or f"{result.method} patching ({result.direction}): {result.nodes.kind}")
    fig.colorbar(im, ax=ax, label="effect on metric")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig


__all__ = ["PatchResult", "correlation", "plot_heatmap"]
