"""Judging circuits: the model's metric with everything outside a circuit ablated, faithfulness across sizes,
and the summaries circuit benchmarks report.

Faithfulness of a circuit ``C`` is ``f(C) = (m(C) - m(empty)) / (m(model) - m(empty))``: ``m`` is the mean metric
on the clean prompts, ``m(model)`` with nothing ablated, ``m(empty)`` with every edge ablated (with patching
ablation, the corrupted run). ``f`` is not clipped. Over circuit sizes (fractions of all edges, by default the
ten of the Mechanistic Interpretability Benchmark's circuit track: 0.1% ... 100%) it gives a curve:

- **CPR**, the circuit performance ratio: the area under ``f`` (trapezoids on the nominal fractions; higher is
  better, 0.999 for ``f = 1`` everywhere);
- **CMD**, the circuit-model distance: the area under ``|1 - f|`` (lower is better, 0 is ideal);
- the number of edges needed to reach a target faithfulness (80% by default).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import FuncnetError
from ..executors.fanout import Chunk, check_executor, fan_out, model_ref, spans
from ..models.ref import ModelRef, as_model
from ..patching.metrics import Metric, check_metric
from .circuit import ABLATIONS, AblatedValues, Circuit, circuits_intervention
from .graph import Graph
from .run import ablated_values, check_tokens, edge_hooks

#: circuit sizes of the MIB circuit track, as fractions of all edges
FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@torch.no_grad()
def circuit_metrics(model: Any, circuits: Sequence[Circuit], clean: Tensor, metric: Metric, ablated: AblatedValues, *,
                    max_rows: int = 32) -> list[float]:
    """The mean ``metric`` on ``clean`` for each circuit, every edge outside it ablated (several circuits per
    forward, at most ``max_rows`` rows)."""
    if not circuits:
        raise FuncnetError("give at least one circuit")
    clean = _checked(model, circuits[0].graph, clean, ablated).to(model.cfg.device)
    n = clean.shape[0]
    per = max(1, max_rows // n)
    out: list[float] = []
    for start in range(0, len(circuits), per):
        group = list(circuits[start:start + per])
        iv = circuits_intervention(group, ablated)
        with edge_hooks(model), iv.applied(model):
            logits = model(clean.repeat(len(group), 1))
        for k in range(len(group)):
            out.append(float(check_metric(metric, n, metric(logits[k * n:(k + 1) * n])).double().mean()))
    return out


@dataclass(frozen=True)
class FaithfulnessCurve:
    """Faithfulness of circuits of growing size (see the module docstring)."""

    fractions: tuple[float, ...]
    n_edges: tuple[int, ...]
    metric: tuple[float, ...]
    faithfulness: tuple[float, ...]
    model_metric: float
    empty_metric: float
    method: str = ""
    ablation: str = "patching"
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def cpr(self) -> float:
        """Area under the faithfulness curve (trapezoids on the fractions)."""
        x, f = self.fractions, self.faithfulness
        return float(sum((x[i + 1] - x[i]) * (f[i] + f[i + 1]) / 2 for i in range(len(x) - 1)))

    @property
    def cmd(self) -> float:
        """Area under ``|1 - faithfulness|``."""
        x, f = self.fractions, self.faithfulness
        return float(sum((x[i + 1] - x[i]) * (abs(1 - f[i]) + abs(1 - f[i + 1])) / 2 for i in range(len(x) - 1)))

    def edges_for(self, target: float = 0.8) -> int | None:
        """The smallest evaluated circuit size whose faithfulness reaches ``target`` (None if none does)."""
        for n, f in zip(self.n_edges, self.faithfulness):
            if f >= target:
                return n
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "ablation": self.ablation, "fractions": list(self.fractions),
                "n_edges": list(self.n_edges), "metric": list(self.metric), "faithfulness": list(self.faithfulness),
                "model_metric": self.model_metric, "empty_metric": self.empty_metric, "cpr": self.cpr,
                "cmd": self.cmd, "edges_for_80": self.edges_for(0.8), "seconds": self.seconds, **self.info}

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame({"fraction": self.fractions, "n_edges": self.n_edges, "metric": self.metric,
                             "faithfulness": self.faithfulness})

    def plot(self, *, title: str | None = None, log_x: bool = True) -> Any:
        """Faithfulness against circuit size, as a matplotlib Figure (several curves in one Figure:
        :func:`~tl_funcnet.circuits.plot_faithfulness`)."""
        from .plots import plot_faithfulness

        return plot_faithfulness(self, title=title, log_x=log_x)


def _checked(model: Any, graph: Graph, clean: Any, ablated: AblatedValues) -> Tensor:
    """The clean tokens, checked against the model, the graph and the ablated values (before any forward)."""
    graph.check_model(model)
    clean = check_tokens(model, clean, "clean")
    if not isinstance(ablated, AblatedValues):
        raise FuncnetError(f"ablated should be AblatedValues (see ablated_values), got {type(ablated).__name__}")
    values = ablated.values
    if values is not None and ablated.ablation == "patching" and tuple(values.shape[:2]) != tuple(clean.shape):
        raise FuncnetError(f"the corrupted prompts have shape {tuple(values.shape[:2])}, the clean ones "
                           f"{tuple(clean.shape)}: patching needs one corrupted prompt of the same token length per "
                           f"clean prompt")
    if values is not None and values.shape[1] not in (1, clean.shape[1]):
        raise FuncnetError(f"the ablated values cover {values.shape[1]} positions, the prompts have "
                           f"{clean.shape[1]}; take positional means over prompts of the same length")
    return clean


def _edge_scores(scores: Any) -> Any:
    from .scores import EdgeScores

    if not isinstance(scores, EdgeScores):
        raise FuncnetError(f"scores should be EdgeScores (from exact_edge_scores or edge_scores), got "
                           f"{type(scores).__name__}; wrap a tensor as EdgeScores(graph, tensor, method)")
    return scores


def _baselines(model: Any, graph: Graph, clean: Tensor, metric: Metric, ablated: AblatedValues,
               max_rows: int) -> tuple[float, float]:
    clean = _checked(model, graph, clean, ablated)
    with torch.no_grad():
        full = float(check_metric(metric, clean.shape[0], metric(model(clean.to(model.cfg.device)))).double().mean())
    empty = circuit_metrics(model, [Circuit(graph, torch.zeros(graph.n_edges, dtype=torch.bool))], clean, metric,
                            ablated, max_rows=max_rows)[0]
    if not math.isfinite(full - empty) or abs(full - empty) <= 1e-5 * max(1.0, abs(full), abs(empty)):  # float noise
        raise FuncnetError(f"the metric is the same with every edge ablated ({empty:.4g}) as on the model ({full:.4g}); "
                           f"faithfulness is undefined: choose prompts on which the ablation matters")
    return full, empty


def faithfulness(model: Any, circuits: Circuit | Sequence[Circuit], clean: Tensor, metric: Metric, *,
                 corrupted: Tensor | None = None, ablation: str = "patching", ablated: AblatedValues | None = None,
                 max_rows: int = 32) -> float | list[float]:
    """Faithfulness of one circuit (a number) or several (a list); see the module docstring."""
    many = not isinstance(circuits, Circuit)
    group = list(circuits) if many else [circuits]
    if not group:
        raise FuncnetError("give at least one circuit")
    graph = group[0].graph
    ablated = ablated or ablated_values(model, graph, ablation, corrupted=corrupted, texts=corrupted)
    full, empty = _baselines(model, graph, clean, metric, ablated, max_rows)
    f = [(m - empty) / (full - empty) for m in circuit_metrics(model, group, clean, metric, ablated, max_rows=max_rows)]
    return f if many else f[0]


def faithfulness_curve(model: Any, scores: Any, clean: Tensor, metric: Metric, *, corrupted: Tensor | None = None,
                       fractions: Sequence[float] = FRACTIONS, ablation: str = "patching",
                       ablated: AblatedValues | None = None, absolute: bool = True, greedy: bool = False,
                       max_rows: int = 32, executor: Executor | None = None) -> FaithfulnessCurve:
    """Faithfulness of the circuits of the best ``fractions`` of edges by ``scores`` (an :class:`EdgeScores`).

    ``executor`` (any ``concurrent.futures.Executor``) evaluates the sizes in chunks of one forward each, every
    worker loading ``model`` by reference; the curve equals the in-process one."""
    t0 = time.perf_counter()
    graph = _edge_scores(scores).graph
    fr = tuple(float(x) for x in fractions)
    if not fr or any(not 0 <= x <= 1 for x in fr) or list(fr) != sorted(fr):
        raise FuncnetError(f"fractions should be increasing numbers in [0, 1], got {list(fractions)}")
    circuits = [scores.circuit(int(x * graph.n_edges), absolute=absolute, greedy=greedy) for x in fr]
    if executor is not None:
        ms, (full, empty), kind = _fanned_metrics(model, circuits, clean, metric, corrupted=corrupted,
                                                  ablation=ablation, ablated=ablated, max_rows=max_rows,
                                                  executor=executor)
    else:
        model = as_model(model)
        ablated = ablated or ablated_values(model, graph, ablation, corrupted=corrupted, texts=corrupted)
        full, empty = _baselines(model, graph, clean, metric, ablated, max_rows)
        ms, kind = circuit_metrics(model, circuits, clean, metric, ablated, max_rows=max_rows), ablated.ablation
    return FaithfulnessCurve(fr, tuple(int(x * graph.n_edges) for x in fr), tuple(ms),
                             tuple((m - empty) / (full - empty) for m in ms), full, empty, scores.method,
                             kind, time.perf_counter() - t0,
                             {"n_edges_after_pruning": [c.n_edges for c in circuits], "absolute": absolute,
                              "greedy": greedy})


def _metrics_task(model: Any, *, circuits: list[Circuit], clean: Tensor, metric: Metric, corrupted: Tensor | None,
                  ablation: str, ablated: AblatedValues | None, max_rows: int, baselines: bool
                  ) -> tuple[list[float], tuple[float, float] | None, str]:
    """One chunk of a fanned-out evaluation: its circuits' metrics (and the baselines, for the first chunk)."""
    graph = circuits[0].graph
    ablated = ablated or ablated_values(model, graph, ablation, corrupted=corrupted, texts=corrupted)
    base = _baselines(model, graph, clean, metric, ablated, max_rows) if baselines else None
    return circuit_metrics(model, circuits, clean, metric, ablated, max_rows=max_rows), base, ablated.ablation


def _fanned_metrics(model: Any, circuits: list[Circuit], clean: Tensor, metric: Metric, *, corrupted: Tensor | None,
                    ablation: str, ablated: AblatedValues | None, max_rows: int, executor: Executor
                    ) -> tuple[list[float], tuple[float, float], str]:
    """:func:`circuit_metrics` and the baselines on ``executor``, one forward's circuits per chunk."""
    check_executor(executor)
    if ablated is None and ablation not in ABLATIONS:
        raise FuncnetError(f"ablation should be one of {ABLATIONS}, got {ablation!r}")
    clean_ids = check_tokens(None, clean, "clean")
    if not isinstance(model, ModelRef) and ablated is not None:  # a loaded model: every check before any work
        _checked(model, circuits[0].graph, clean, ablated)
    elif not isinstance(model, ModelRef):
        circuits[0].graph.check_model(model)
        check_tokens(model, clean, "clean")
    ref = model_ref(model)
    per = max(1, max_rows // clean_ids.shape[0])
    common = {"clean": clean_ids, "metric": metric, "corrupted": corrupted,
              "ablation": ablation, "ablated": ablated, "max_rows": max_rows}
    chunks = [Chunk(f"circuits {s.start}..{s.stop - 1}", {**common, "circuits": circuits[s.start:s.stop],
                                                          "baselines": s.start == 0})
              for s in spans(len(circuits), per)]
    results = fan_out(executor, _metrics_task, chunks, ref=ref, what="faithfulness_curve")
    return [m for ms, _, _ in results for m in ms], results[0][1], results[0][2]


def edges_for_faithfulness(model: Any, scores: Any, clean: Tensor, metric: Metric, *, target: float = 0.8,
                           corrupted: Tensor | None = None, ablation: str = "patching",
                           ablated: AblatedValues | None = None, absolute: bool = True,
                           max_rows: int = 32) -> int | None:
    """The smallest number of top edges whose circuit reaches ``target`` faithfulness (bisection over sizes;
    None if even all edges do not)."""
    graph = _edge_scores(scores).graph
    ablated = ablated or ablated_values(model, graph, ablation, corrupted=corrupted, texts=corrupted)
    full, empty = _baselines(model, graph, clean, metric, ablated, max_rows)

    def f(n: int) -> float:
        m = circuit_metrics(model, [scores.circuit(n, absolute=absolute)], clean, metric, ablated,
                            max_rows=max_rows)[0]
        return (m - empty) / (full - empty)

    hi = 1
    while hi < graph.n_edges and f(hi) < target:
        hi = min(graph.n_edges, hi * 2)
    if f(hi) < target:
        return None
    lo = hi // 2
    while hi - lo > max(1, hi // 100):  # 1% resolution
        mid = (lo + hi) // 2
        if f(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi


__all__ = ["FRACTIONS", "circuit_metrics", "faithfulness", "faithfulness_curve", "edges_for_faithfulness",
           "FaithfulnessCurve"]
