"""Edge scores: one number per edge of a graph, with the method that made it and how to read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..errors import FuncnetError
from .graph import Graph


@dataclass(frozen=True, eq=False)
class EdgeScores:
    """The effect of ablating each edge on a metric: ``scores[i]`` estimates (or, for ``"exact"``, measures)
    ``mean metric with edge i ablated - mean metric of the target run`` (``direction="noise"``: the target run is
    the clean one and the edge gets its corrupted value; ``"denoise"``: the reverse).

    ``evaluated`` marks the edges that were scored (exact patching of a sample leaves the rest NaN).
    ``per_position`` (attribution with ``per_position=True``) splits each score over the prompt's positions
    (``(n_edges, pos)``, summing to ``scores``): where along the prompt an edge carries its effect.
    """

    graph: Graph
    scores: Float[Tensor, "n_edges"]
    method: str
    direction: str = "noise"
    baseline: float = float("nan")
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    per_position: Float[Tensor, "n_edges pos"] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        s = torch.as_tensor(self.scores, dtype=torch.float64).detach().cpu()
        if s.shape != (self.graph.n_edges,):
            raise FuncnetError(f"scores should have shape ({self.graph.n_edges},), got {tuple(s.shape)}")
        object.__setattr__(self, "scores", s)
        if self.per_position is not None:
            pp = torch.as_tensor(self.per_position, dtype=torch.float64).detach().cpu()
            if pp.ndim != 2 or pp.shape[0] != self.graph.n_edges:
                raise FuncnetError(f"per_position should have shape ({self.graph.n_edges}, pos), got "
                                   f"{tuple(pp.shape)}")
            object.__setattr__(self, "per_position", pp)

    @property
    def evaluated(self) -> Bool[Tensor, "n_edges"]:
        return ~torch.isnan(self.scores)

    def __repr__(self) -> str:
        return (f"EdgeScores({self.method}, {int(self.evaluated.sum())} of {self.graph.n_edges} edges, "
                f"{self.seconds:.1f} s)")

    def top(self, k: int = 10, *, absolute: bool = True) -> list[tuple[str, float]]:
        """The ``k`` edges with the largest |score| (or signed score), as ``(name, score)``."""
        s = self.scores.nan_to_num(nan=float("-inf") if not absolute else 0.0)
        order = torch.argsort(s.abs() if absolute else s, descending=True)[:k].tolist()
        return [(self.graph.edge_name(i), float(self.scores[i])) for i in order]

    def to_frame(self) -> Any:
        """A pandas DataFrame, one row per scored edge: sender, receiver, score."""
        import pandas as pd

        rows = [{"edge": self.graph.edge_name(i), "sender": self.graph.senders[u], "receiver": self.graph.receivers[v],
                 "score": float(self.scores[i])} for i, u, v in self.graph.iter_edges() if bool(self.evaluated[i])]
        return pd.DataFrame(rows)

    def to_dict(self, top: int = 20) -> dict[str, Any]:
        return {"method": self.method, "direction": self.direction, "baseline": self.baseline,
                "n_edges": self.graph.n_edges, "n_scored": int(self.evaluated.sum()), "seconds": self.seconds,
                "top": [{"edge": e, "score": s} for e, s in self.top(top)], **self.info}

    def by_group(self, circuit: Any = None) -> dict[str, dict[str, Any]]:
        """The graph's unit groups (functional networks) read as nodes: per group, its layers, the summed score
        and |score| of its scored outgoing edges over all its layers, and with ``circuit`` how many of the
        circuit's edges leave it."""
        g = self.graph
        out: dict[str, dict[str, Any]] = {name: {"layers": [], "edges": 0, "score": 0.0, "abs_score": 0.0}
                                          for name in g.group_names}
        if circuit is not None:
            if circuit.graph.to_dict() != g.to_dict():
                raise FuncnetError("the circuit belongs to another graph than these scores")
            for row in out.values():
                row["circuit_edges"] = 0
        for name, layer, _ in g.groups:
            out[name]["layers"].append(layer)
        for i, u, _ in g.iter_edges():
            part = g.group_of(u)
            if part is None:
                continue
            row = out[part[0]]
            if bool(self.evaluated[i]):
                row["edges"] += 1
                row["score"] += float(self.scores[i])
                row["abs_score"] += abs(float(self.scores[i]))
            if circuit is not None and bool(circuit.edges[i]):
                row["circuit_edges"] += 1
        return out

    def circuit(self, n: int, *, absolute: bool = True, greedy: bool = False) -> Any:
        """The circuit of the ``n`` best edges (see :class:`~tl_funcnet.circuits.Circuit`)."""
        from .circuit import Circuit

        if not bool(self.evaluated.all()):
            raise FuncnetError("these scores cover only some edges; score every edge to choose a circuit")
        make = Circuit.greedy if greedy else Circuit.top_n
        return make(self.graph, self.scores, n, absolute=absolute)


def edge_correlation(a: EdgeScores | Tensor, b: EdgeScores | Tensor) -> dict[str, float]:
    """Pearson and Spearman correlation over the edges both score (NaN where either is constant)."""
    from ..patching.result import correlation

    x = a.scores if isinstance(a, EdgeScores) else torch.as_tensor(a, dtype=torch.float64)
    y = b.scores if isinstance(b, EdgeScores) else torch.as_tensor(b, dtype=torch.float64)
    both = ~(torch.isnan(x) | torch.isnan(y))
    if int(both.sum()) < 2:
        raise FuncnetError("the two score sets share fewer than 2 scored edges")
    out = correlation(x[both], y[both])
    out["n_edges"] = int(both.sum())
    return out


def auroc(scores: EdgeScores | Tensor, truth: Bool[Tensor, "n_edges"]) -> float:
    """Area under the ROC curve of |score| for telling the true edges from the others (ties count half)."""
    s = (scores.scores if isinstance(scores, EdgeScores) else torch.as_tensor(scores, dtype=torch.float64)).abs()
    t = torch.as_tensor(truth, dtype=torch.bool)
    if s.shape != t.shape or not bool(t.any()) or bool(t.all()):
        raise FuncnetError("auroc needs one truth flag per edge, with both true and false edges")
    if bool(torch.isnan(s).any()):
        raise FuncnetError(f"{int(torch.isnan(s).sum())} edges have no score (NaN); score every edge, or pass "
                           f"scores[evaluated] and truth[evaluated]")
    pos, neg = s[t], s[~t]
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


__all__ = ["EdgeScores", "edge_correlation", "auroc"]
