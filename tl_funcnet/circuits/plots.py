"""Pictures of circuits and of their faithfulness, as matplotlib Figures (no pyplot, no global backend is
touched; save with ``fig.savefig(path)``).

- :func:`plot_circuit`: a layered drawing of a circuit: ``input`` at the bottom, then each block's heads
  (``L5.H3``) and its MLP (``MLP5``), ``logits`` at the top (only the rows the circuit uses). Edges are coloured by
  the sign of their score and as wide as its magnitude; an edge into a head is solid, dashed or dotted as it
  enters the head's query, key or value. Each arrow's ``gid`` is its edge's name and each node label's ``gid``
  its node's name (both survive into SVG files).
- :func:`plot_faithfulness`: faithfulness against circuit size for one or several
  :class:`~tl_funcnet.circuits.FaithfulnessCurve` (one line each, with its CPR and CMD).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import FuncnetError
from .circuit import Circuit
from .graph import Graph

#: how an edge into a head's query, key or value input is drawn (anything else: solid)
QKV_STYLE = {"q": "-", "k": "--", "v": ":"}
_QKV_NAME = {"q": "query", "k": "key", "v": "value"}
_QKV_RAD = {"q": -0.12, "k": 0.0, "v": 0.12, "": 0.06}
_KIND_COLOR = {"input": "#cfe8cf", "head": "#d6e4f5", "mlp": "#fbe3c8", "group": "#f7d4d4", "logits": "#e6d7f0"}
_POSITIVE, _NEGATIVE, _UNSCORED = "tab:red", "tab:blue", "0.45"
_LABEL_EDGES = 60  # circuits up to this many edges get a q/k/v letter at each arrowhead


def node_label(node: str) -> str:
    """The drawn name of a graph node: ``input``, ``L5.H3`` (layer 5, head 3), ``MLP12``, ``FN4 (L12)`` (unit group
    FN4's neurons in MLP 12), ``logits``."""
    if node in ("input", "logits"):
        return node
    group, _, layer = node.rpartition(".m")
    if group and layer.isdigit():
        return f"{group} (L{layer})"
    if node.startswith("m"):
        return f"MLP{node[1:]}"
    layer, head = node[1:].split(".h")
    return f"L{layer}.H{head}"


def _level(graph: Graph, node: str) -> int:
    """Drawing depth: input 0, layer ``l``'s heads ``2l+1`` and its MLP ``2l+2`` (it reads them), logits last."""
    if node == "input":
        return 0
    if node == "logits":
        return 2 * graph.n_layers + 1
    group, _, tail = node.rpartition(".m")
    if group and tail.isdigit():  # a unit group's part of MLP ``tail``
        return 2 * int(tail) + 2
    layer = int(node[1:].split(".")[0])
    return 2 * layer + (2 if node.startswith("m") else 1)


def _edge_scores(graph: Graph, scores: Any) -> Tensor | None:
    if scores is None:
        return None
    s = scores.scores if hasattr(scores, "scores") and not isinstance(scores, Tensor) else scores
    if hasattr(scores, "graph") and scores.graph.to_dict() != graph.to_dict():
        raise FuncnetError("the scores belong to another graph than the circuit")
    try:
        s = torch.as_tensor(s, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise FuncnetError(f"scores should be EdgeScores or one number per edge, got {type(scores).__name__}") from None
    if s.shape != (graph.n_edges,):
        raise FuncnetError(f"scores should have one value per edge, shape ({graph.n_edges},), got {tuple(s.shape)}")
    return s


def circuit_layout(circuit: Circuit) -> tuple[Any, dict[str, tuple[float, float]]]:
    """The circuit as a ``networkx.MultiDiGraph`` of the nodes it uses (plus ``input`` and ``logits``) and the
    drawing position of each node: ``y`` is its row (input 0, logits highest; rows the circuit does not use
    are left out), ``x`` is centred within the row, heads in head order."""
    g = circuit.graph.to_networkx(circuit.edges.nonzero().flatten())
    g.remove_nodes_from([n for n in list(g.nodes) if g.degree(n) == 0 and n not in ("input", "logits")])
    levels = sorted({_level(circuit.graph, n) for n in g.nodes})
    row = {lev: i for i, lev in enumerate(levels)}
    order = {n: i for i, n in enumerate(circuit.graph.nodes)}
    by_row: dict[int, list[str]] = {}
    for n in sorted(g.nodes, key=order.__getitem__):
        by_row.setdefault(row[_level(circuit.graph, n)], []).append(n)
    pos = {n: (i - (len(names) - 1) / 2, float(r)) for r, names in by_row.items() for i, n in enumerate(names)}
    return g, pos


def plot_circuit(circuit: Circuit, scores: Any = None, *, title: str | None = None) -> Any:
    """A layered drawing of ``circuit`` (see the module docstring), as a matplotlib Figure.

    ``scores`` (an :class:`~tl_funcnet.circuits.EdgeScores` or one number per edge of the graph) colours each
    edge red (score > 0) or blue (< 0) with a width growing with ``|score|``; without scores, or where a score is
    NaN, edges are grey. Small circuits also get a ``q``/``k``/``v`` letter where an edge enters a head.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    if not isinstance(circuit, Circuit):
        raise FuncnetError(f"plot_circuit draws a Circuit, got {type(circuit).__name__}")
    s = _edge_scores(circuit.graph, scores)
    g, pos = circuit_layout(circuit)
    n_rows = 1 + int(max(y for _, y in pos.values()))
    width = max(sum(1 for _, y in pos.values() if y == r) for r in range(n_rows))
    size = (min(18.0, max(5.0, 1.05 * width + 1.5)), min(24.0, max(3.0, 0.6 * n_rows + 1.2)))
    fig = Figure(figsize=size, layout="tight")
    inch_x, inch_y = 0.8 * size[0] / (width + 0.4), 0.8 * size[1] / n_rows  # about, for offsets in points
    ax = fig.subplots()
    chosen = [s[i] for i in circuit.edges.nonzero().flatten().tolist()] if s is not None else []
    finite = [abs(float(x)) for x in chosen if math.isfinite(float(x))]
    top = max(finite, default=0.0) or 1.0
    fontsize = 8 if width <= 8 else 6.5 if width <= 14 else 5
    few = circuit.n_edges <= _LABEL_EDGES
    used_qkv: set[str] = set()
    for u, v, data in g.edges(data=True):
        qkv = data["input"]
        score = None if s is None else float(s[data["index"]])
        if score is None or not math.isfinite(score):
            color, lw, alpha = _UNSCORED, 1.0, 0.7
        else:
            mag = abs(score) / top
            color, lw, alpha = (_POSITIVE if score > 0 else _NEGATIVE), 0.4 + 3.6 * mag, 0.35 + 0.6 * mag
        used_qkv.add(qkv)
        (x0, y0), (x1, y1) = pos[u], pos[v]
        arrow = FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=7 + lw,
                                connectionstyle=f"arc3,rad={_QKV_RAD[qkv]}", linestyle=QKV_STYLE.get(qkv, "-"),
                                lw=lw, color=color, alpha=alpha, shrinkA=9, shrinkB=9, zorder=1)
        arrow.set_gid(circuit.graph.edge_name(data["index"]))  # the edge's name, e.g. in an SVG
        ax.add_patch(arrow)
        if few and qkv:  # the letter just before the arrowhead, a fixed distance (in points) from the head
            dx, dy = (x0 - x1) * inch_x, (y0 - y1) * inch_y
            norm = math.hypot(dx, dy) or 1.0
            ax.annotate(qkv, (x1, y1), xytext=(17 * dx / norm, 13 * dy / norm), textcoords="offset points",
                        fontsize=fontsize - 1, color=color, ha="center", va="center", zorder=3,
                        bbox={"boxstyle": "circle,pad=0.1", "facecolor": "white", "edgecolor": "none",
                              "alpha": 0.8})
    for n, (x, y) in pos.items():
        kind = g.nodes[n]["kind"]
        ax.text(x, y, node_label(n), ha="center", va="center", fontsize=fontsize, zorder=2, gid=n,
                bbox={"boxstyle": "round,pad=0.3", "facecolor": _KIND_COLOR[kind], "edgecolor": "0.3", "lw": 0.6})
    ax.set_xlim(-width / 2 - 0.2, width / 2 + 0.2)
    ax.set_ylim(-0.6, n_rows - 0.4)
    ax.set_axis_off()
    handles = []
    if s is not None:
        handles += [Line2D([], [], color=_POSITIVE, lw=2, label="score > 0"),
                    Line2D([], [], color=_NEGATIVE, lw=2, label="score < 0")]
        if any(not math.isfinite(float(x)) for x in chosen):
            handles.append(Line2D([], [], color=_UNSCORED, lw=1, label="not scored"))
    for c in ("q", "k", "v"):
        if c in used_qkv:
            handles.append(Line2D([], [], color="0.2", lw=1.2, ls=QKV_STYLE[c], label=f"{c} ({_QKV_NAME[c]})"))
    if handles:
        ax.legend(handles=handles, loc="upper left", fontsize=7, frameon=False, bbox_to_anchor=(1.0, 1.0))
    n_nodes = sum(1 for n in g.nodes if g.degree(n) > 0)
    ax.set_title(title or (f"circuit: {circuit.n_edges} of {circuit.graph.n_edges} edges, {n_nodes} nodes"
                           if circuit.n_edges else "empty circuit (no edge from input to logits)"))
    return fig


def _is_curve(c: Any) -> bool:
    """A FaithfulnessCurve, recognized by what it holds (this module draws curves; it does not make them)."""
    return all(hasattr(c, a) for a in ("fractions", "n_edges", "faithfulness", "cpr", "cmd", "ablation", "method"))


def _curves(curves: Any) -> list[tuple[str, Any]]:
    if _is_curve(curves):
        items: list[tuple[str | None, Any]] = [(None, curves)]
    elif isinstance(curves, Mapping):
        items = [(str(k), c) for k, c in curves.items()]
    elif isinstance(curves, Sequence) and not isinstance(curves, str):
        items = [(None, c) for c in curves]
    else:
        raise FuncnetError(f"plot_faithfulness takes a FaithfulnessCurve, a list of them or a dict "
                           f"{{label: curve}}, got {type(curves).__name__}")
    if not items:
        raise FuncnetError("give at least one faithfulness curve")
    for _, c in items:
        if not _is_curve(c):
            raise FuncnetError(f"expected FaithfulnessCurve values (from faithfulness_curve), got {type(c).__name__}")
    several_ablations = len({c.ablation for _, c in items}) > 1
    out = []
    for i, (label, c) in enumerate(items):
        if label is None:
            label = c.method or f"curve {i + 1}"
            if several_ablations:
                label += f" ({c.ablation})"
        out.append((label, c))
    return out


def plot_faithfulness(curves: Any, *, title: str | None = None, log_x: bool = True, target: float = 0.8) -> Any:
    """Faithfulness against circuit size (% of edges) for one curve, a list, or a dict ``{label: curve}``, as a
    matplotlib Figure. Each line is labelled with its CPR and CMD; a star marks the smallest size that reaches
    ``target`` faithfulness. With ``log_x``, a size of 0 is drawn on a linear stretch near 0 (symlog)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    items = _curves(curves)
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not math.isfinite(target):
        raise FuncnetError(f"target should be a number, e.g. 0.8, got {target!r}")
    fig = Figure(figsize=(6.5, 4.2), layout="tight")
    ax = fig.subplots()
    starred = False
    for label, c in items:
        x = [100 * f for f in c.fractions]
        (line,) = ax.plot(x, c.faithfulness, marker="o", ms=4, label=f"{label}: CPR {c.cpr:.3f}, CMD {c.cmd:.3f}")
        n = c.edges_for(target)
        if n is not None:
            i = c.n_edges.index(n)
            ax.plot([x[i]], [c.faithfulness[i]], marker="*", ms=12, color=line.get_color(), ls="none", zorder=3)
            starred = True
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axhline(target, color="grey", lw=0.8, ls=":")
    if log_x:
        xs = [100 * f for _, c in items for f in c.fractions]
        positive = [v for v in xs if v > 0]
        if positive and min(xs) > 0:
            ax.set_xscale("log")
        elif positive:
            ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlabel("circuit size (% of edges)")
    ax.set_ylabel("faithfulness")
    handles, _ = ax.get_legend_handles_labels()
    if starred:
        handles.append(Line2D([], [], marker="*", ms=10, color="0.3", ls="none",
                              label=f"first size with faithfulness >= {target:g}"))
    ax.legend(handles=handles, fontsize=8)
    if title is None and len(items) == 1:
        label, c = items[0]
        title = f"{label} circuits: CPR {c.cpr:.3f}, CMD {c.cmd:.3f}"
    ax.set_title(title or "faithfulness of circuits by size")
    return fig


__all__ = ["plot_circuit", "plot_faithfulness", "circuit_layout", "node_label", "QKV_STYLE"]
