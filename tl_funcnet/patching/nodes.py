"""Patching nodes: a node is a group of units at one or more hook sites, at one position or at all positions.

Every node type reduces to :class:`Node` ``(site, units, pos)``: ``units`` index the last dim of
``(batch, pos, d)`` sites and the head dim of per-head sites (``attn.hook_z``); ``None`` means all units.
A node may span sites (``also``): a functional network is patched as all its units in every layer at once.
SAE features are units of an attached SAE's ``hook_sae_acts_post`` site.
A :class:`NodeSet` is an ordered list of nodes plus the grid they fill (e.g. ``("layer", "pos")``), so
results can be reshaped like ``transformer_lens.patching``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import FuncnetError, ShapeError
from ..hooks.sites import check_sites, site_layer, site_shape
from ..hooks.values import index_list

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
    also: tuple[tuple[str, tuple[int, ...]], ...] = ()  # more (site, units) patched together with the first

    @property
    def parts(self) -> tuple[tuple[str, tuple[int, ...] | None], ...]:
        """Every ``(site, units)`` this node patches."""
        return ((self.site, self.units), *self.also)

    @property
    def layer(self) -> int | None:
        """The first block the node touches (``None`` if a part lies outside the blocks, e.g. the embedding)."""
        layers = [site_layer(s) for s, _ in self.parts]
        return None if any(l is None for l in layers) else min(layers)  # type: ignore[type-var]

    def label(self) -> str:
        if self.name:
            return self.name
        u = "" if self.units is None else f"[{','.join(map(str, self.units[:4]))}{'…' if len(self.units) > 4 else ''}]"
        p = "" if self.pos is None else f"@{self.pos}"
        return f"{self.site}{u}{p}"


@dataclass(frozen=True)
class NodeSet:
    """Nodes and the grid they fill: each node's ``coords`` index ``shape`` (axes named by ``axes``)."""

    nodes: tuple[Node, ...]
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    kind: str = "units"
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def sites(self) -> list[str]:
        return sorted({site for n in self.nodes for site, _ in n.parts})

    def validate(self, model: Any, n_pos: int) -> None:
        """Raise before any forward pass if a site, unit or position does not fit ``model``/the prompts."""
        if not self.nodes:
            raise FuncnetError("the node set is empty; build one with node_grid(model, kind, n_pos) or units_nodes(...)")
        check_sites(model, self.sites)
        for n in self.nodes:
            for site, units in n.parts:
                shape = site_shape(model, site)
                if shape is None:
                    raise ShapeError(
                        f"node {n.label()!r}: site {site!r} has no known unit layout; patch residual, MLP "
                        f"(hook_mlp_out, mlp.hook_post/hook_pre), per-head (attn.hook_z/hook_q/hook_v) or "
                        f"attached-SAE feature (<site>.hook_sae_acts_post) sites")
                if units is not None and units and (max(units) >= shape[0] or min(units) < 0):
                    raise ShapeError(f"node {n.label()!r}: unit index out of range; site {site!r} has "
                                     f"{shape[0]} units (valid 0..{shape[0] - 1})")
            if n.pos is not None and not 0 <= n.pos < n_pos:
                raise ShapeError(f"node {n.label()!r}: position {n.pos} is out of range for prompts of "
                                 f"{n_pos} tokens (valid 0..{n_pos - 1})")


def _layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    n = int(model.cfg.n_layers)
    out = list(range(n)) if layers is None else list(index_list(layers, "layers"))
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
      (layer, pos, neuron) with ``by_pos=True``; ``neurons`` restricts the neurons (default: every neuron of
      each layer; the layers of a hard-pruned model may differ in width, and missing cells stay empty).
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
    widths = {L: site_shape(model, f"blocks.{L}.mlp.hook_post")[0] for L in ls}  # type: ignore[index]
    if neurons is None:
        per_layer = {L: list(range(widths[L])) for L in ls}  # a pruned model's layers may differ in width
        ns = list(range(max(widths.values())))
    else:
        ns = list(index_list(neurons, "neurons"))
        too_wide = [(L, widths[L]) for L in ls if ns and max(ns) >= widths[L]]
        if too_wide:
            raise ShapeError(f"neuron {max(ns)} does not exist in layers {[L for L, _ in too_wide]} (widths "
                             f"{[w for _, w in too_wide]}); choose neurons below every chosen layer's width")
        per_layer = {L: ns for L in ls}
    column = {j: a for a, j in enumerate(ns)}
    if by_pos:
        nodes = [Node(f"blocks.{L}.mlp.hook_post", (j,), p, (i, p, column[j]))
                 for i, L in enumerate(ls) for p in range(n_pos) for j in per_layer[L]]
        return NodeSet(tuple(nodes), (len(ls), n_pos, len(ns)), ("layer", "pos", "neuron"), kind,
                       {"layers": ls, "neurons": ns})
    nodes = [Node(f"blocks.{L}.mlp.hook_post", (j,), None, (i, column[j])) for i, L in enumerate(ls) for j in per_layer[L]]
    return NodeSet(tuple(nodes), (len(ls), len(ns)), ("layer", "neuron"), kind, {"layers": ls, "neurons": ns})


def units_nodes(site: str, groups: Sequence[Sequence[int]] | dict[str, Sequence[int]], *,
                pos: int | None = None) -> NodeSet:
    """One node per unit group at ``site`` (e.g. functional networks or SAE features), all positions by default."""
    items = list(groups.items()) if isinstance(groups, dict) else [(f"{site}#{i}", g) for i, g in enumerate(groups)]
    nodes = []
    for i, (name, g) in enumerate(items):
        units = index_list(g, f"unit group {name!r}")
        if not units:
            raise FuncnetError(f"unit group {name!r} at {site!r} is empty; every node needs at least one unit")
        nodes.append(Node(site, units, pos, (i,), str(name)))
    return NodeSet(tuple(nodes), (len(nodes),), ("node",), "units", {"names": [n.name for n in nodes]})


def concat(*sets: NodeSet) -> NodeSet:
    """Join node sets into one flat set (grid ``("node",)``), e.g. to patch heads and MLPs in one sweep."""
    nodes = [Node(n.site, n.units, n.pos, (i,), n.label(), n.also)
             for i, n in enumerate(x for s in sets for x in s.nodes)]
    return NodeSet(tuple(nodes), (len(nodes),), ("node",), "units", {"names": [n.name for n in nodes]})


def network_nodes(networks: Any, ids: Sequence[int] | None = None, *, pos: int | None = None) -> NodeSet:
    """One node per functional network (a fitted ``FunctionalNetworks``): all its key units, every layer at once."""
    ids = list(range(networks.n_networks_total)) if ids is None else [int(i) for i in ids]
    nodes = []
    for j, (i, parts) in enumerate(zip(ids, networks.networks(ids))):
        items = [(site, tuple(int(u) for u in units)) for site, units in parts.items() if len(units)]
        if not items:
            raise FuncnetError(f"network {i} has no units at its threshold; lower the threshold or leave it out")
        (site, units), *rest = items
        nodes.append(Node(site, units, pos, (j,), f"network {i}", tuple(rest)))
    return NodeSet(tuple(nodes), (len(nodes),), ("node",), "units", {"names": [n.name for n in nodes]})


def sae_feature_nodes(sae_site: str, features: Sequence[int], *, pos: int | None = None) -> NodeSet:
    """One node per SAE feature of the SAE attached at ``sae_site`` (``model.add_sae(sae, use_error_term=True)``).

    The node patches the feature's activation at ``f"{sae_site}.hook_sae_acts_post"``; with the error term
    on, the rest of the site's activation is untouched, so patching a feature changes the site by its decoder
    direction times the activation difference.
    """
    return units_nodes(f"{sae_site}.hook_sae_acts_post", {f"feature {f}": [f] for f in index_list(features, "features")},
                       pos=pos)


__all__ = ["Node", "NodeSet", "NODE_KINDS", "node_grid", "units_nodes", "concat", "network_nodes",
           "sae_feature_nodes"]
