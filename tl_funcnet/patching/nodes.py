"""Patching nodes: a node is a group of units at one hook site, at one position or at all positions.

Every node type reduces to :class:`Node` ``(site, units, pos)``: ``units`` index the last dim of
``(batch, pos, d)`` sites and the head dim of per-head sites (``attn.hook_z``); ``None`` means all units.
A :class:`NodeSet` is an ordered list of nodes plus the grid they fill (e.g. ``("layer", "pos")``), so
results can be reshaped like ``transformer_lens.patching``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import FuncnetError, ShapeError
from ..hooks.sites import check_sites, site_layer, site_shape

#: Node kinds with a built-in grid.
NODE_KINDS = ("resid", "head", "head_pos", "mlp", "neuron", "units")


@dataclass(frozen=True)
class Node:
    """One patchable group of units: ``units`` at ``site`` (``None``: all), at ``pos`` (``None``: every position)."""

    site: str
    units: tuple[int, ...] | None = None
    pos: int | None = None
    coords: tuple[int, ...] = ()
    name: str = ""

    @property
    def layer(self) -> int | None:
        return site_layer(self.site)

    def label(self) -> str:
        if self.name:
            return self.name
        u = "" if self.units is None else f"[{','.join(map(str, self.units[:4]))}{'…' if len(self.units) > 4 else ''}]"
        p = "" if self.pos is None else f"@{self.pos}"
        return f"{self.site}{u}{p}"


@dataclass(frozen=True)
class NodeSet:
    """Nodes in grid order: ``shape`` and ``axes`` describe how ``values`` reshape (row-major)."""

    nodes: tuple[Node, ...]
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    kind: str = "units"
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def sites(self) -> list[str]:
        return sorted({n.site for n in self.nodes})

    def validate(self, model: Any, n_pos: int) -> None:
        """Raise before any forward pass if a site, unit or position does not fit ``model``/the prompts."""
        if not self.nodes:
            raise FuncnetError("the node set is empty; build one with node_grid(model, kind, n_pos) or units_nodes(...)")
        check_sites(model, self.sites)
        for n in self.nodes:
            shape = site_shape(model, n.site)
            if shape is None:
                raise ShapeError(
                    f"node {n.label()!r}: site {n.site!r} has no known unit layout; patch residual, MLP "
                    f"(hook_mlp_out, mlp.hook_post/hook_pre) or per-head (attn.hook_z/hook_q/hook_v) sites")
            if n.units is not None and n.units and (max(n.units) >= shape[0] or min(n.units) < 0):
                raise ShapeError(f"node {n.label()!r}: unit index out of range; site {n.site!r} has "
                                 f"{shape[0]} units (valid 0..{shape[0] - 1})")
            if n.pos is not None and not 0 <= n.pos < n_pos:
                raise ShapeError(f"node {n.label()!r}: position {n.pos} is out of range for prompts of "
                                 f"{n_pos} tokens (valid 0..{n_pos - 1})")


def _layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    n = int(model.cfg.n_layers)
    out = list(range(n)) if layers is None else [int(x) for x in layers]
    bad = [x for x in out if not 0 <= x < n]
    if bad:
        raise ShapeError(f"layers {bad} are out of range; the model has {n} layers (valid 0..{n - 1})")
    return out


def node_grid(model: Any, kind: str, n_pos: int, *, layers: Sequence[int] | None = None,
              neurons: Sequence[int] | None = None, by_pos: bool = True) -> NodeSet:
    """The standard grid for a node kind.

    - ``"resid"``: ``blocks.L.hook_resid_pre`` per (layer, pos);
    - ``"mlp"``: ``blocks.L.hook_mlp_out`` per (layer, pos);
    - ``"head"``: ``blocks.L.attn.hook_z`` per (layer, head) over all positions, or per (layer, pos, head)
      with ``by_pos=True`` (``"head_pos"`` forces it); grouped-query attention works since hook_z has n_heads;
    - ``"neuron"``: ``blocks.L.mlp.hook_post`` per (layer, neuron) over all positions, or per
      (layer, pos, neuron) with ``by_pos=True``; ``neurons`` restricts the neurons (default: all).
    """
    if kind not in NODE_KINDS or kind == "units":
        raise FuncnetError(f"unknown node kind {kind!r}; expected one of {list(NODE_KINDS[:-1])} "
                           "(for arbitrary unit groups use units_nodes(site, groups))")
    if not isinstance(n_pos, int) or n_pos < 1:
        raise FuncnetError(f"n_pos should be the prompt length in tokens (a positive int), got {n_pos!r}")
    ls = _layers(model, layers)
    nodes: list[Node] = []
    if kind in ("resid", "mlp"):
        tmpl = "blocks.{}.hook_resid_pre" if kind == "resid" else "blocks.{}.hook_mlp_out"
        nodes = [Node(tmpl.format(L), None, p, (i, p)) for i, L in enumerate(ls) for p in range(n_pos)]
        return NodeSet(tuple(nodes), (len(ls), n_pos), ("layer", "pos"), kind, {"layers": ls})
    if kind in ("head", "head_pos"):
        h = int(model.cfg.n_heads)
        if kind == "head_pos" or by_pos:
            nodes = [Node(f"blocks.{L}.attn.hook_z", (k,), p, (i, p, k))
                     for i, L in enumerate(ls) for p in range(n_pos) for k in range(h)]
            return NodeSet(tuple(nodes), (len(ls), n_pos, h), ("layer", "pos", "head"), "head_pos", {"layers": ls})
        nodes = [Node(f"blocks.{L}.attn.hook_z", (k,), None, (i, k)) for i, L in enumerate(ls) for k in range(h)]
        return NodeSet(tuple(nodes), (len(ls), h), ("layer", "head"), "head", {"layers": ls})
    width = int(model.cfg.d_mlp)
    ns = list(range(width)) if neurons is None else [int(x) for x in neurons]
    if by_pos:
        nodes = [Node(f"blocks.{L}.mlp.hook_post", (j,), p, (i, p, a))
                 for i, L in enumerate(ls) for p in range(n_pos) for a, j in enumerate(ns)]
        return NodeSet(tuple(nodes), (len(ls), n_pos, len(ns)), ("layer", "pos", "neuron"), kind,
                       {"layers": ls, "neurons": ns})
    nodes = [Node(f"blocks.{L}.mlp.hook_post", (j,), None, (i, a)) for i, L in enumerate(ls) for a, j in enumerate(ns)]
    return NodeSet(tuple(nodes), (len(ls), len(ns)), ("layer", "neuron"), kind, {"layers": ls, "neurons": ns})


def units_nodes(site: str, groups: Sequence[Sequence[int]] | dict[str, Sequence[int]], *,
                pos: int | None = None) -> NodeSet:
    """One node per unit group at ``site`` (e.g. functional networks or SAE features), all positions by default."""
    items = list(groups.items()) if isinstance(groups, dict) else [(f"{site}#{i}", g) for i, g in enumerate(groups)]
    nodes = []
    for i, (name, g) in enumerate(items):
        units = tuple(int(u) for u in g)
        if not units:
            raise FuncnetError(f"unit group {name!r} at {site!r} is empty; every node needs at least one unit")
        nodes.append(Node(site, units, pos, (i,), str(name)))
    return NodeSet(tuple(nodes), (len(nodes),), ("node",), "units", {"names": [n.name for n in nodes]})


def concat(*sets: NodeSet) -> NodeSet:
    """Join node sets into one flat set (grid ``("node",)``), e.g. to patch heads and MLPs in one sweep."""
    nodes = [Node(n.site, n.units, n.pos, (i,), n.label()) for i, n in enumerate(x for s in sets for x in s.nodes)]
    return NodeSet(tuple(nodes), (len(nodes),), ("node",), "units", {"names": [n.name for n in nodes]})


__all__ = ["Node", "NodeSet", "NODE_KINDS", "node_grid", "units_nodes", "concat"]
