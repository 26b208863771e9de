"""Circuits: a set of edges of a :class:`Graph`, chosen from edge scores, pruned to what connects input and logits,
and run on a model as an ordinary :class:`~tl_funcnet.hooks.Intervention` (every edge outside it ablated)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .._io import Kind, atomic_dir, read_json
from ..errors import FormatError, FuncnetError
from ..hooks import Hook, Intervention
from .graph import Graph

FORMAT, VERSION = "tl_funcnet.circuit", 1
#: a saved circuit folder (``tl-funcnet circuit --out`` adds its report and pictures)
KIND = Kind("circuit", "circuit.json", FORMAT, ("circuit.json", "report.json", "*.png"))
ABLATIONS = ("patching", "mean", "zero")


def _as_scores(graph: Graph, scores: Any) -> Tensor:
    s = scores.scores if hasattr(scores, "scores") and not isinstance(scores, Tensor) else scores
    s = torch.as_tensor(s, dtype=torch.float64)
    if s.shape != (graph.n_edges,):
        raise FuncnetError(f"edge scores should have one value per edge, shape ({graph.n_edges},), got {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        raise FuncnetError("edge scores hold NaN or infinite values; check the method that produced them")
    return s


def _node_order(graph: Graph) -> dict[str, int]:
    return {n: i for i, n in enumerate(graph.nodes)}


@dataclass(frozen=True, eq=False)
class Circuit:
    """The edges of ``graph`` in the circuit (``edges[i]`` True for edge ``i``)."""

    graph: Graph
    edges: Bool[Tensor, "n_edges"]

    def __post_init__(self) -> None:
        e = torch.as_tensor(self.edges)
        if e.dtype != torch.bool or e.shape != (self.graph.n_edges,):
            raise FuncnetError(f"a circuit's edges are a bool mask of shape ({self.graph.n_edges},), got "
                               f"{e.dtype} of shape {tuple(e.shape)}")
        object.__setattr__(self, "edges", e.detach().clone())

    # ------------------------------------------------------------------ building

    @classmethod
    def from_edges(cls, graph: Graph, edges: Sequence[str | tuple[str, str] | int]) -> "Circuit":
        """A circuit of the named (``"u->v"``) or numbered edges, pruned; edges that connect nothing to both the
        input and the logits are an error (say which edges you meant)."""
        mask = torch.zeros(graph.n_edges, dtype=torch.bool)
        for e in edges:
            if isinstance(e, int) and not isinstance(e, bool):
                if not 0 <= e < graph.n_edges:
                    raise FuncnetError(f"edge {e} does not exist; the graph has {graph.n_edges} edges")
                mask[e] = True
            else:
                mask[graph.edge_index(e)] = True
        circuit = cls(graph, mask).pruned()
        if bool(mask.any()) and circuit.n_edges == 0:
            raise FuncnetError(f"the {int(mask.sum())} edges given contain no path from 'input' to 'logits', so the "
                               f"circuit would be empty; include the edges that connect them")
        return circuit

    @classmethod
    def top_n(cls, graph: Graph, scores: Any, n: int, *, absolute: bool = True) -> "Circuit":
        """The ``n`` highest-scoring edges (by |score|, or signed with ``absolute=False``), then pruned."""
        s = _as_scores(graph, scores)
        n = _count(n, graph)
        key = s.abs() if absolute else s
        mask = torch.zeros(graph.n_edges, dtype=torch.bool)
        mask[torch.argsort(key, descending=True, stable=True)[:n]] = True
        return cls(graph, mask).pruned()

    @classmethod
    def greedy(cls, graph: Graph, scores: Any, n: int, *, absolute: bool = True) -> "Circuit":
        """Grow from the logits: repeatedly add the best-scoring edge into a node already in the circuit,
        so every edge's receiver is connected to the logits (``n`` edges at most), then prune."""
        s = _as_scores(graph, scores)
        n = _count(n, graph)
        key = (s.abs() if absolute else s).tolist()
        into: dict[str, list[int]] = {}
        for i, u, v in graph.iter_edges():
            into.setdefault(graph.node_of_receiver(v), []).append(i)
        import heapq

        mask = torch.zeros(graph.n_edges, dtype=torch.bool)
        heap = [(-key[i], i) for i in into.get("logits", [])]
        heapq.heapify(heap)
        present = {"logits"}
        taken = 0  # (counting mask.sum() each round made this quadratic in n)
        while heap and taken < n:
            _, i = heapq.heappop(heap)
            mask[i] = True
            taken += 1
            parent = graph.reading_node(int(graph.edges[i, 0]))
            if parent not in present:
                present.add(parent)
                for j in into.get(parent, []):
                    heapq.heappush(heap, (-key[j], j))
        return cls(graph, mask).pruned()

    def pruned(self) -> "Circuit":
        """Only the edges on some path from ``input`` to ``logits`` inside the circuit (idempotent)."""
        g = self.graph
        order = _node_order(g)
        chosen = self.edges.nonzero().flatten().tolist()
        # (the node a sender reads, the node its edge enters, edge): a unit group reads its MLP's input
        arcs = [(g.reading_node(int(g.edges[i, 0])), g.node_of_receiver(int(g.edges[i, 1])), i) for i in chosen]
        reach = {"input"}
        for u, v, _ in sorted(arcs, key=lambda a: order[a[1]]):
            if u in reach:
                reach.add(v)
        live = {"logits"}
        for u, v, _ in sorted(arcs, key=lambda a: -order[a[0]]):
            if v in live:
                live.add(u)
        keep = torch.zeros_like(self.edges)
        for u, v, i in arcs:
            if u in reach and v in live:
                keep[i] = True
        return Circuit(g, keep)

    # ------------------------------------------------------------------ reading

    @property
    def n_edges(self) -> int:
        return int(self.edges.sum())

    @property
    def fraction(self) -> float:
        return self.n_edges / self.graph.n_edges

    def nodes(self) -> list[str]:
        """The nodes the circuit's edges touch, in graph order."""
        g = self.graph
        names = set()
        for i in self.edges.nonzero().flatten().tolist():
            names.add(g.senders[int(g.edges[i, 0])])
            names.add(g.node_of_receiver(int(g.edges[i, 1])))
        return [n for n in g.nodes if n in names]

    def edge_names(self) -> list[str]:
        return [self.graph.edge_name(i) for i in self.edges.nonzero().flatten().tolist()]

    def __repr__(self) -> str:
        return f"Circuit({self.n_edges} of {self.graph.n_edges} edges, {len(self.nodes())} nodes)"

    def __or__(self, other: "Circuit") -> "Circuit":
        self._same_graph(other)
        return Circuit(self.graph, self.edges | other.edges)

    def __and__(self, other: "Circuit") -> "Circuit":
        self._same_graph(other)
        return Circuit(self.graph, self.edges & other.edges)

    def _same_graph(self, other: "Circuit") -> None:
        if not isinstance(other, Circuit) or other.graph.to_dict() != self.graph.to_dict():
            raise FuncnetError("both circuits must belong to the same graph")

    def to_networkx(self, scores: Any = None) -> Any:
        s = None if scores is None else _as_scores(self.graph, scores)
        return self.graph.to_networkx(self.edges.nonzero().flatten(), s)

    # ------------------------------------------------------------------ running

    def to_intervention(self, ablated: "AblatedValues", *, also: Sequence["Circuit"] = ()) -> Intervention:
        """Run this circuit (and the circuits in ``also``, one per block of rows) with every other edge ablated.

        ``ablated`` holds the senders' ablated values (:func:`ablated_values`). The batch is circuit-major: with
        ``c`` circuits and ``n`` prompts, rows ``k*n .. k*n+n-1`` run circuit ``k`` on the prompts in order.
        """
        return circuits_intervention([self, *also], ablated)

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        data = {"format": FORMAT, "version": VERSION, "graph": self.graph.to_dict(), "edges": self.edge_names()}
        text = json.dumps(data, indent=2) + "\n"
        with atomic_dir(path, KIND, overwrite=overwrite) as tmp:
            (tmp / "circuit.json").write_text(text)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, graph: Graph | None = None) -> "Circuit":
        """A saved circuit. A graph with SAE feature senders keeps its SAEs in memory only: pass ``graph``
        (rebuilt with ``Graph.from_model(model, groups=..., saes=...)``) to run the loaded circuit."""
        file = Path(path) / "circuit.json"
        data = read_json(file, "a folder written by Circuit.save")
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise FormatError(f"{file}: not a version-{VERSION} tl_funcnet circuit")
        saved = Graph.from_dict(data.get("graph"), str(file))
        if graph is not None and (not isinstance(graph, Graph) or graph.to_dict() != saved.to_dict()):
            raise FuncnetError(f"{file}: the circuit was saved with another graph than the one given "
                               f"({saved!r} vs {graph!r})")
        graph = graph or saved
        edges = data.get("edges")
        if not isinstance(edges, list) or not all(isinstance(e, str) for e in edges):
            raise FormatError(f"{file}: 'edges' should be a list of 'sender->receiver' names")
        try:
            return cls.from_edges(graph, edges)
        except FuncnetError as err:
            raise FormatError(f"{file}: {err}") from None


def _count(n: Any, graph: Graph) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= graph.n_edges:
        raise FuncnetError(f"a circuit size is a number of edges in 0..{graph.n_edges}, got {n!r}")
    return n


@dataclass(frozen=True, eq=False)
class AblatedValues:
    """What each sender's output becomes when its edge is ablated: ``values`` ``(prompts or 1, pos or 1,
    n_senders, d_model)`` (``None``: zero), made by :func:`ablated_values`; ``weights`` holds, per unit-group
    sender, the ``W_out`` rows that compute its output in a run."""

    graph: Graph
    ablation: str
    values: Float[Tensor, "rows pos n_senders d_model"] | None
    weights: dict[int, Tensor] = field(default_factory=dict)


def circuits_intervention(circuits: Sequence[Circuit], ablated: AblatedValues) -> Intervention:
    """One intervention running ``circuits`` on consecutive blocks of batch rows (see :meth:`Circuit.to_intervention`)."""
    if not circuits:
        raise FuncnetError("give at least one circuit")
    for c in circuits:
        if not isinstance(c, Circuit):
            raise FuncnetError(f"expected Circuit values, got {type(c).__name__}")
        c._same_graph(circuits[0])
    graph = circuits[0].graph
    if not isinstance(ablated, AblatedValues) or ablated.graph.to_dict() != graph.to_dict():
        raise FuncnetError("ablated should be the AblatedValues of this graph (see ablated_values)")
    n_prompts = 1 if ablated.values is None else int(ablated.values.shape[0])
    missing = [graph.senders[u] for u in range(graph.n_senders) if graph.group_of(u) and u not in ablated.weights]
    if missing:
        raise FuncnetError(f"the ablated values lack the output weights of the unit-group senders {missing[:3]}; make "
                           f"them with ablated_values(model, graph, ...)")
    hooks = []
    for site in graph.sender_sites():
        senders = [u for u in range(graph.n_senders) if graph.sender_site(u)[0] == site]
        params: dict[str, Any] = {"senders": senders, "slots": [graph.sender_site(u)[1] for u in senders],
                                  "n_senders": graph.n_senders}
        if ablated.values is not None:
            params["ablated"] = ablated.values[:, :, senders]
        layer = graph.sender_layer(senders[0])
        groups = [u for u in senders if graph.group_of(u) is not None]
        if groups:  # unit groups: their share of the MLP (neurons; or SAE features, then the MLP's rest too)
            params.update(units=[list(graph.group_of(u)[2]) for u in groups],  # type: ignore[index]
                          weights=[ablated.weights[u] for u in groups])
            if layer in graph.saes:
                params.update(sae=graph.saes[layer], rest=True)
            else:
                params["share"] = f"edges.groups.{layer}"
        elif site.endswith("hook_mlp_out") and any(g[1] == layer for g in graph.groups):
            params["minus"] = f"edges.groups.{layer}"
        hooks.append(Hook(site, "edge_source", params))
    # rows: circuit-major, each circuit's rows repeated for every prompt
    ablate_edges = torch.stack([~c.edges for c in circuits]).repeat_interleave(n_prompts, dim=0)  # (rows, n_edges)
    for site in graph.receiver_sites():
        recv = graph.receivers_at(site)
        mask = torch.zeros(ablate_edges.shape[0], len(recv), graph.n_senders, dtype=torch.bool)
        for j, (v, _) in enumerate(recv):
            idx = graph.edges_into(v)
            mask[:, j, graph.edges[idx, 0]] = ablate_edges[:, idx]
        if bool(mask.any()):
            hooks.append(Hook(site, "edge_sink", {"receivers": [v for v, _ in recv], "slots": [s for _, s in recv],
                                                  "ablate": mask}))
    return Intervention(tuple(hooks))


__all__ = ["Circuit", "AblatedValues", "circuits_intervention", "ABLATIONS", "KIND"]
