"""Exact edge patching, the oracle: ablate one edge at a time and measure the metric.

Ablating ``u->v`` changes only receiver ``v``'s input, by ``a_u - z_u``; every sender upstream of ``v`` computes
what it computes in the unpatched target run, so the patched input is the target run's ``x_v`` plus that
difference. Many edges run in one forward (one edge per batch row, ``row = edge * n_prompts + prompt``), each
chunk starting at its first patched layer from the target run's cached residual stream, as in node patching.
Cost: one row-forward (from the receiver's layer on) per edge and prompt; pass ``edges=`` to score a sample.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import FuncnetError
from ..executors.fanout import Chunk, check_executor, fan_out, forward_spans, model_ref, reuse
from ..hooks import Intervention, capture, patch
from ..hooks.intervention import flags_on
from ..hooks.values import index_list
from ..models.ref import ModelRef, as_model
from ..models.surface import starts_at_layer
from ..patching._common import forward_logits, last_position_only
from ..patching.metrics import Metric, check_metric
from .circuit import AblatedValues
from .graph import Graph
from .run import EDGE_FLAGS, check_tokens, edge_hooks, sender_outputs
from .scores import EdgeScores

DIRECTIONS = ("noise", "denoise")


def _targets(model: Any, graph: Graph, clean: Tensor, corrupted: Tensor, direction: str,
             ablated: AblatedValues | None) -> tuple[Tensor, Tensor]:
    """``(target tokens, ablated sender values)`` for ``direction`` (or the given ablation); the tokens' shapes
    and the direction were checked by :func:`_check_sweep`, the vocabulary is checked here."""
    c, k = check_tokens(model, clean, "clean"), check_tokens(model, corrupted, "corrupted")
    target, source = (c, k) if direction == "noise" else (k, c)
    if ablated is None:
        return target, sender_outputs(model, graph, source).float()
    if ablated.graph.to_dict() != graph.to_dict():
        raise FuncnetError("the ablated values belong to another graph")
    if ablated.values is None:
        return target, torch.zeros(1, 1, graph.n_senders, model.cfg.d_model)
    rows, pos = ablated.values.shape[:2]
    if rows not in (1, target.shape[0]) or pos not in (1, target.shape[1]):
        raise FuncnetError(f"the ablated values cover {rows} prompts x {pos} positions; these prompts are "
                           f"{target.shape[0]} x {target.shape[1]}. Make them with ablated_values(...) on prompts of "
                           f"this shape, or pool the mean over positions (positional=False)")
    return target, ablated.values


def _check_sweep(graph: Graph, clean: Any, corrupted: Any, direction: str, max_rows: Any, position: Any,
                 edges: Any) -> tuple[int, list[int]]:
    """The checks that need no model: ``(number of prompts, chosen edges)``."""
    if direction not in DIRECTIONS:
        raise FuncnetError(f"direction should be 'noise' (ablate edges of the clean run with corrupted values) or "
                           f"'denoise' (restore edges of the corrupted run with clean values), got {direction!r}")
    c, k = check_tokens(None, clean, "clean"), check_tokens(None, corrupted, "corrupted")
    if c.shape != k.shape:
        raise FuncnetError(f"clean tokens {tuple(c.shape)} and corrupted tokens {tuple(k.shape)} must have the same "
                           f"shape: one corrupted prompt of the same token length per clean prompt")
    n, n_pos = c.shape
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < n:
        raise FuncnetError(f"max_rows={max_rows!r} is below the number of prompts ({n}); each edge needs one row per "
                           f"prompt")
    if position is not None and (isinstance(position, bool) or not isinstance(position, int) or
                                 not -n_pos <= position < n_pos):
        raise FuncnetError(f"position should be a position of the prompts (0..{n_pos - 1}, or negative "
                           f"from the end) or None for all, got {position!r}")
    chosen = list(range(graph.n_edges)) if edges is None else list(index_list(edges, "edges"))
    if chosen and max(chosen) >= graph.n_edges:
        raise FuncnetError(f"edge {max(chosen)} does not exist; the graph has {graph.n_edges} edges")
    return n, chosen


@dataclass(frozen=True)
class _TargetRun:
    """What every forward of a sweep reads from the unpatched target run."""

    target: Tensor  # token ids (n, pos)
    z: Tensor  # sender outputs of the target run (n, pos, n_senders, d)
    a: Tensor  # their ablated values, same shape
    recv_store: dict[str, Tensor]  # receiver inputs and the residual inputs of the patched layers
    base: Tensor  # unpatched metric per prompt
    last_only: bool
    at: slice  # positions ablated


@torch.no_grad()
def _target_run(model: Any, graph: Graph, clean: Tensor, corrupted: Tensor, metric: Metric, direction: str,
                ablated: AblatedValues | None, position: int | None, layers: Sequence[int]) -> _TargetRun:
    """One pass over the target prompts (``layers``: where forwards may start)."""
    target, a_vals = _targets(model, graph, clean, corrupted, direction, ablated)
    n = target.shape[0]
    at = slice(None) if position is None else slice(position % target.shape[1], position % target.shape[1] + 1)
    dev = model.cfg.device
    target = target.to(dev)
    z = sender_outputs(model, graph, target)  # (n, pos, n_senders, d), the target run's
    a = a_vals.to(dev, z.dtype).expand(n, z.shape[1], -1, -1) if a_vals.shape[0] == 1 else a_vals.to(dev, z.dtype)
    recv_store: dict[str, Tensor] = {}
    resid_sites = [f"blocks.{L}.hook_resid_pre" for L in layers]
    with edge_hooks(model), capture(graph.receiver_sites() + resid_sites, recv_store).applied(model):
        model(target, return_type=None)
    last_only = last_position_only(metric, ["blocks.0.hook_resid_pre"])
    with edge_hooks(model):
        base = check_metric(metric, n, metric(forward_logits(model, target, last_only=last_only)))
    return _TargetRun(target, z, a, recv_store, base, last_only, at)


@torch.no_grad()
def _ablate_each(model: Any, graph: Graph, run: _TargetRun, order: list[int], metric: Metric, max_rows: int
                 ) -> list[float]:
    """Each edge of ``order`` ablated alone: the mean change of ``metric``, ``max_rows // n`` edges per forward."""
    target, z, a, recv_store, at = run.target, run.z, run.a, run.recv_store, run.at
    n = target.shape[0]
    per_chunk = max(1, max_rows // n)
    out: list[float] = []
    with flags_on(model, EDGE_FLAGS):
        for start in range(0, len(order), per_chunk):
            chunk = order[start:start + per_chunk]
            rows = len(chunk) * n
            by_site: dict[str, list[tuple[int, int | None, int]]] = defaultdict(list)  # site -> (row block, slot, edge)
            for j, i in enumerate(chunk):
                u, v = (int(x) for x in graph.edges[i])
                for site, slot in graph.receiver_sites_of(v):
                    by_site[site].append((j, slot, i))
            iv = Intervention()
            for site, items in by_site.items():
                x = recv_store[site]  # (n, pos, [slots,] d)
                value = x.repeat(len(chunk), *([1] * (x.ndim - 1)))
                where = torch.zeros(rows, x.shape[1], x.shape[2] if x.ndim == 4 else x.shape[-1], dtype=torch.bool)
                for j, slot, i in items:
                    u = int(graph.edges[i, 0])
                    block = slice(j * n, (j + 1) * n)
                    delta = a[:, at, u] - z[:, at, u]  # (n, pos or 1, d)
                    if slot is None:
                        value[block, at] = value[block, at] + delta
                        where[block, at] = True
                    else:
                        value[block, at, slot] = value[block, at, slot] + delta
                        where[block, at, slot] = True
                iv = iv + patch(site, value, where=where)
            layer0 = min(graph.receiver_layer(int(graph.edges[i, 1])) for i in chunk)
            layer0 = min(layer0, graph.n_layers - 1)
            tokens = target.repeat(len(chunk), 1)
            with iv.applied(model):
                if starts_at_layer(model):
                    resid = recv_store[f"blocks.{layer0}.hook_resid_pre"].repeat(len(chunk), 1, 1)
                    logits = forward_logits(model, tokens, last_only=run.last_only, resid=resid, start_layer=layer0)
                else:  # a TransformerBridge runs only from tokens
                    logits = forward_logits(model, tokens, last_only=run.last_only)
            for j in range(len(chunk)):
                vals = check_metric(metric, n, metric(logits[j * n:(j + 1) * n]))
                out.append(float((vals.double() - run.base.double()).mean()))
    return out


def _in_order(graph: Graph, edges: Sequence[int]) -> list[int]:
    """Edges by receiver layer: forwards start as late as they can."""
    return sorted(edges, key=lambda i: (graph.receiver_layer(int(graph.edges[i, 1])), i))


def exact_edge_scores(model: Any, graph: Graph, clean: Tensor, corrupted: Tensor, metric: Metric, *,
                      edges: Sequence[int] | Tensor | None = None, direction: str = "noise",
                      ablated: AblatedValues | None = None, max_rows: int = 256,
                      position: int | None = None, executor: Executor | None = None,
                      chunk_size: int | None = None) -> EdgeScores:
    """Ablate each edge of ``edges`` (default: all) alone and measure ``metric`` (mean over prompts).

    ``direction="noise"``: on the clean prompts, edge ``u->v`` gets ``u``'s corrupted output; ``"denoise"``:
    the reverse. ``ablated`` (from :func:`~tl_funcnet.circuits.ablated_values`) replaces the corrupted values
    by mean or zero ablation. ``position`` ablates each edge at that position of the prompt only (the oracle
    for ``edge_scores(..., per_position=True)``). Unscored edges are NaN.

    ``executor`` (any ``concurrent.futures.Executor``) fans the edges out in chunks of ``chunk_size`` edges
    (rounded up to whole forwards; default 8 forwards) that each load ``model`` by reference (a
    :class:`~tl_funcnet.models.ref.ModelRef`, or a model loaded by :func:`tl_funcnet.models.load`); the scores
    equal the in-process run's (bit for bit at the same torch thread count per worker).
    """
    if executor is not None:
        return _fanned(model, graph, clean, corrupted, metric, edges=edges, direction=direction, ablated=ablated,
                       max_rows=max_rows, position=position, executor=executor, chunk_size=chunk_size)
    model = as_model(model)
    graph.check_model(model)
    n, chosen = _check_sweep(graph, clean, corrupted, direction, max_rows, position, edges)
    t0 = time.perf_counter()
    layers = sorted({min(graph.receiver_layer(int(graph.edges[i, 1])), graph.n_layers - 1) for i in chosen})
    run = _target_run(model, graph, clean, corrupted, metric, direction, ablated, position, layers)
    out = torch.full((graph.n_edges,), float("nan"), dtype=torch.float64)
    order = _in_order(graph, chosen)
    if order:
        out[torch.as_tensor(order)] = torch.tensor(_ablate_each(model, graph, run, order, metric, max_rows),
                                                   dtype=torch.float64)
    return EdgeScores(graph, out, "exact", direction, float(run.base.double().mean()), time.perf_counter() - t0,
                      {"n_prompts": n, "max_rows": max_rows, "n_scored": len(chosen), "position": position,
                       "ablation": "patching" if ablated is None else ablated.ablation})


def _edges_task(model: Any, *, sweep: str, graph: Graph, clean: Tensor, corrupted: Tensor, metric: Metric,
                direction: str, ablated: AblatedValues | None, position: int | None, max_rows: int,
                edges: list[int]) -> tuple[list[float], float]:
    """One chunk of a fanned-out sweep: its edges' scores and the baseline. A worker makes the target run once
    per sweep (``sweep`` names it) and reuses it for every chunk of that sweep it runs."""
    graph.check_model(model)
    run = reuse((sweep, id(model)), lambda: _target_run(model, graph, clean, corrupted, metric, direction, ablated,
                                                        position, range(graph.n_layers)))
    return _ablate_each(model, graph, run, edges, metric, max_rows), float(run.base.double().mean())



def _fanned(model: Any, graph: Graph, clean: Tensor, corrupted: Tensor, metric: Metric, *, edges: Any,
            direction: str, ablated: AblatedValues | None, max_rows: int, position: int | None,
            executor: Executor, chunk_size: int | None) -> EdgeScores:
    """:func:`exact_edge_scores` in chunks on ``executor``: spans of the in-process order, cut at whole
    forwards, so every forward holds the same edges as in process."""
    check_executor(executor)
    n, chosen = _check_sweep(graph, clean, corrupted, direction, max_rows, position, edges)
    if not isinstance(model, ModelRef):
        graph.check_model(model)
        check_tokens(model, clean, "clean")
        check_tokens(model, corrupted, "corrupted")
    ref = model_ref(model)
    order = _in_order(graph, chosen)
    common = {"sweep": uuid.uuid4().hex, "graph": graph, "clean": torch.as_tensor(clean),
              "corrupted": torch.as_tensor(corrupted), "metric": metric, "direction": direction, "ablated": ablated,
              "max_rows": max_rows, "position": position}
    chunks = [Chunk(f"edges {order[s.start]}..{order[s.stop - 1]} ({len(s)})",
                    {**common, "edges": order[s.start:s.stop]})
              for s in forward_spans(len(order), max(1, max_rows // n), chunk_size)]
    t0 = time.perf_counter()
    results = fan_out(executor, _edges_task, chunks, ref=ref, what="exact_edge_scores")
    out = torch.full((graph.n_edges,), float("nan"), dtype=torch.float64)
    for chunk, (values, _) in zip(chunks, results):
        out[torch.as_tensor(chunk.params["edges"])] = torch.tensor(values, dtype=torch.float64)
    baseline = results[0][1] if results else float("nan")
    return EdgeScores(graph, out, "exact", direction, baseline, time.perf_counter() - t0,
                      {"n_prompts": n, "max_rows": max_rows, "n_scored": len(chosen), "position": position,
                       "ablation": "patching" if ablated is None else ablated.ablation, "chunks": len(chunks),
                       "executor": type(executor).__name__})


__all__ = ["exact_edge_scores", "DIRECTIONS"]
