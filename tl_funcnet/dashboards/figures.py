"""Interactive plotly figures: token-labelled patching heatmaps, network sizes per layer, pruning curves.

Each function returns a ``plotly.graph_objects.Figure``; show it in a notebook, add it to a
:class:`~tl_funcnet.dashboards.Report`, or ``fig.write_html(path, include_plotlyjs=True)`` for an offline file.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from jaxtyping import Int
from torch import Tensor

from ..errors import FuncnetError, ShapeError
from .contexts import token_strings


def position_labels(model: Any, tokens: Int[Tensor, "batch pos"]) -> tuple[list[str], list[str]]:
    """Axis labels ``"3 ' Mary'"`` from the first prompt's tokens, and for each position every distinct token the
    prompts hold there (shown on hover, since prompts of one task may differ in names or numbers)."""
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ShapeError(f"tokens should be (batch, pos) token ids, got shape {tuple(tokens.shape)}")
    first = token_strings(model, tokens[0])
    labels = [f"{p} {t!r}" for p, t in enumerate(first)]
    hover = []
    for p in range(tokens.shape[1]):
        distinct = list(dict.fromkeys(tokens[:, p].tolist()))
        shown = token_strings(model, distinct[:6])
        more = f" (+{len(distinct) - 6} more)" if len(distinct) > 6 else ""
        hover.append(", ".join(repr(t) for t in shown) + more)
    return labels, hover


def patching_heatmap(result: Any, *, model: Any = None, tokens: Int[Tensor, "batch pos"] | None = None,
                     title: str | None = None) -> Any:
    """A :class:`~tl_funcnet.patching.PatchResult` as an interactive heatmap (diverging, centred on 0).

    ``(layer, pos)`` grids put the prompt's tokens on the position axis when ``model`` and ``tokens`` (the
    task's ``clean`` ids) are given; hovering shows the value and every token the prompts hold there. Grids
    with a third axis are summed over it (as :meth:`PatchResult.plot` does); one-axis results become bars.
    """
    import plotly.graph_objects as go

    g = result.grid().detach().float()
    axes = list(result.nodes.axes)
    name = title or f"{result.method} patching ({result.direction}): {result.nodes.kind}"
    if g.ndim == 1:
        names = result.nodes.meta.get("names") or [n.label() for n in result.nodes.nodes]
        fig = go.Figure(go.Bar(x=list(names), y=g.tolist(), hovertemplate="%{x}: %{y:.4g}<extra></extra>"))
        fig.update_layout(title=name, yaxis_title="effect on metric", height=360)
        return fig
    summed = ""
    if g.ndim == 3:
        g, summed = g.nansum(-1), f" (summed over {axes[2]})"
        axes = axes[:2]
    layers = result.nodes.meta.get("layers")
    y = [f"L{L}" for L in layers] if axes[0] == "layer" and layers and len(layers) == g.shape[0] \
        else [str(i) for i in range(g.shape[0])]
    x = [str(i) for i in range(g.shape[1])]
    custom = None
    if axes[1] == "pos" and tokens is not None:
        if model is None:
            raise FuncnetError("pass model= with tokens= so the positions can be labelled with token text")
        if tokens.shape[1] != g.shape[1]:
            raise ShapeError(f"tokens have {tokens.shape[1]} positions but the result has {g.shape[1]}; pass the "
                             f"task's clean ids (task.clean)")
        x, hover = position_labels(model, tokens)
        custom = [hover for _ in range(g.shape[0])]
    lim = float(g.nan_to_num().abs().max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=g.tolist(), x=x, y=y, zmin=-lim, zmax=lim, colorscale="RdBu", reversescale=True,
        customdata=custom, colorbar={"title": "effect"},
        hovertemplate=(f"{axes[0]} %{{y}}<br>{axes[1]} %{{x}}" + ("<br>tokens: %{customdata}" if custom else "")
                       + "<br>effect %{z:.4g}<extra></extra>")))
    fig.update_layout(title=name + summed, xaxis_title=axes[1] + (" (first prompt's tokens)" if custom else ""),
                      yaxis_title=axes[0], height=max(320, 16 * g.shape[0] + 140),
                      yaxis={"autorange": "reversed"} if axes[0] == "layer" else {})
    return fig


def network_sizes(networks: Any, ids: Sequence[int] | None = None) -> Any:
    """Key units of each network per layer, as stacked bars (hover: network, layer, units)."""
    import plotly.graph_objects as go

    from ..hooks.sites import site_layer

    ids = networks.network_ids(ids)
    labels = [f"L{site_layer(s)}" if site_layer(s) is not None else s for s in networks.sites_]
    fig = go.Figure()
    for i in ids:
        counts = networks.per_site_counts([i])
        fig.add_trace(go.Bar(name=f"network {i}", x=labels, y=[counts[s] for s in networks.sites_],
                             hovertemplate=f"network {i}<br>%{{x}}: %{{y}} units<extra></extra>"))
    fig.update_layout(barmode="stack", title="Key units per layer and network", xaxis_title="layer",
                      yaxis_title="key units", height=380)
    return fig


def curves(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str, x_title: str, y_title: str,
           log_y: bool = False) -> Any:
    """Lines with markers, one per name (e.g. a pruning method's perplexity against the pruned fraction)."""
    import plotly.graph_objects as go

    if not series:
        raise FuncnetError("curves needs at least one named series of (x, y) points")
    fig = go.Figure()
    for name, pts in series.items():
        xs, ys = zip(*pts) if pts else ((), ())
        fig.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines+markers", name=str(name),
                                 hovertemplate=f"{name}<br>{x_title} %{{x}}<br>{y_title} %{{y:.4g}}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=380,
                      yaxis_type="log" if log_y else "linear")
    return fig


def bars(values: Mapping[str, float], *, title: str, x_title: str, reference: float | None = None,
         reference_name: str = "baseline") -> Any:
    """Horizontal bars, one per name (e.g. the loss under each mask), with an optional reference line."""
    import plotly.graph_objects as go

    names = list(values)
    fig = go.Figure(go.Bar(x=[values[n] for n in names], y=names, orientation="h",
                           hovertemplate="%{y}: %{x:.4g}<extra></extra>"))
    if reference is not None:
        fig.add_vline(x=reference, line_dash="dash", annotation_text=reference_name)
    fig.update_layout(title=title, xaxis_title=x_title, height=max(260, 34 * len(names) + 120),
                      yaxis={"autorange": "reversed"}, margin={"l": 260})
    return fig


__all__ = ["bars", "curves", "network_sizes", "patching_heatmap", "position_labels"]
