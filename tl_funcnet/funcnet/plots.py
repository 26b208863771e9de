"""Pictures of functional networks as matplotlib Figures (no global backend is touched; save with
``fig.savefig(path)``)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .networks import FunctionalNetworks


def plot_network_map(fn: FunctionalNetworks, ids: Sequence[int] | None = None, *, title: str | None = None) -> Any:
    """Layer (site) x unit image: each key unit coloured by how many selected networks include it."""
    from matplotlib.figure import Figure

    ids = fn.network_ids(ids)
    counts = fn.masks_[ids].sum(0).numpy()
    width = max(fn.widths_)
    img = np.full((len(fn.sites_), width), np.nan)
    start = 0
    for r, w in enumerate(fn.widths_):
        row = counts[start:start + w].astype(float)
        row[row == 0] = np.nan
        img[r, :w] = row
        start += w
    fig = Figure(figsize=(10, max(2.5, 0.18 * len(fn.sites_) + 1)), layout="tight")
    ax = fig.subplots()
    im = ax.imshow(img, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xlabel("unit")
    ax.set_ylabel("site")
    ax.set_yticks(range(len(fn.sites_)))
    ax.set_yticklabels([s.replace("blocks.", "") for s in fn.sites_], fontsize=6)
    fig.colorbar(im, ax=ax, label="networks containing the unit")
    ax.set_title(title or f"{len(ids)} functional networks, {int((counts > 0).sum())} key units")
    return fig


def plot_layer_counts(fn: FunctionalNetworks, ids: Sequence[int] | None = None) -> Any:
    """Bar chart of key units per site."""
    from matplotlib.figure import Figure

    counts = fn.per_site_counts(ids)
    fig = Figure(figsize=(10, 3), layout="tight")
    ax = fig.subplots()
    ax.bar(range(len(counts)), list(counts.values()), color="tab:blue")
    ax.set_xticks(range(len(counts)))
    ax.set_xticklabels([s.split(".")[1] if s.startswith("blocks.") else s for s in counts], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("key units")
    ax.set_title("key units per layer")
    return fig


__all__ = ["plot_network_map", "plot_layer_counts"]
