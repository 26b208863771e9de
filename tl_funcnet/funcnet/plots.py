"""Plots of functional networks (matplotlib, PNG)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .networks import FunctionalNetworks


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG (creating folders), close it, return the path."""
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_network_map(fn: FunctionalNetworks, path: str | os.PathLike[str], ids: Sequence[int] | None = None,
                     *, title: str | None = None) -> Path:
    """Layer (site) x unit image: each key unit coloured by how many selected networks include it."""
    plt = _plt()
    ids = fn._ids(ids)
    counts = fn.masks_[ids].sum(0).numpy()
    width = max(fn.widths_)
    img = np.full((len(fn.sites_), width), np.nan)
    start = 0
    for r, w in enumerate(fn.widths_):
        row = counts[start:start + w].astype(float)
        row[row == 0] = np.nan
        img[r, :w] = row
        start += w
    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.18 * len(fn.sites_) + 1)))
    im = ax.imshow(img, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xlabel("unit")
    ax.set_ylabel("site")
    ax.set_yticks(range(len(fn.sites_)))
    ax.set_yticklabels([s.replace("blocks.", "") for s in fn.sites_], fontsize=6)
    fig.colorbar(im, ax=ax, label="networks containing the unit")
    ax.set_title(title or f"{len(ids)} functional networks, {int((counts > 0).sum())} key units")
    return _save(plt, fig, path)


def plot_layer_counts(fn: FunctionalNetworks, path: str | os.PathLike[str], ids: Sequence[int] | None = None) -> Path:
    """Bar chart of key units per site."""
    plt = _plt()
    counts = fn.per_layer_counts(ids)
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.bar(range(len(counts)), list(counts.values()), color="tab:blue")
    ax.set_xticks(range(len(counts)))
    ax.set_xticklabels([s.split(".")[1] if s.startswith("blocks.") else s for s in counts], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("key units")
    ax.set_title("key units per layer")
    return _save(plt, fig, path)


__all__ = ["plot_network_map", "plot_layer_counts"]
