"""Exact activation patching, many nodes per forward pass.

Each batch row patches one node for one prompt: rows are node-major (``row = node * n_prompts + prompt``)
and a chunk holds as many whole nodes as fit under ``max_rows``. Two exact shortcuts make it fast:
nodes are sorted by layer and a chunk starts at its first patched layer from the cached unpatched residual
stream (everything before is identical to the unpatched run), and built-in metrics only unembed the last
position. A node whose source activations equal the target's bit for bit (e.g. positions before the first token
where clean and corrupted prompts differ, in a causal model) leaves the run unchanged, so its effect is exactly 0
and it is not run. Results equal ``transformer_lens.patching`` on the same grid.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from concurrent.futures import Executor
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..errors import FuncnetError
from ..executors.fanout import Chunk, check_executor, fan_out, forward_spans, model_ref, reuse
from ..hooks import Intervention, patch
from ..models.ref import ModelRef, as_model
from ..models.surface import starts_at_layer
from ._common import as_tokens, forward_logits, last_position_only, prepare, run_capture
from .metrics import Metric, check_metric
from .nodes import Node, NodeSet
from .result import PatchResult


def _mask(chunk: list[Node], parts: list[tuple[int, Any]], act_shape: tuple[int, ...]) -> Bool[Tensor, "k pos units"]:
    """Per node of ``chunk``: True on the (pos, unit) cells it patches at one site; ``parts`` = (node, units).

    Units are the last dim of 3-D sites and the head dim of 4-D (per-head) sites.
    """
    m = torch.zeros(len(chunk), act_shape[1], act_shape[2], dtype=torch.bool)
    for j, units in parts:
        p = slice(None) if chunk[j].pos is None else chunk[j].pos
        u = slice(None) if units is None else torch.as_tensor(units, dtype=torch.long)
        m[j, p, u] = True
    return m


def _changes_nothing(node: Node, src: dict[str, Tensor], tgt: dict[str, Tensor]) -> bool:
    """Whether patching ``node`` writes, for every prompt, exactly the values the target run already holds."""
    for site, units in node.parts:
        cells = _mask([node], [(0, units)], src[site].shape)[0]  # (pos, units or heads)
        if not torch.equal(src[site][:, cells], tgt[site][:, cells]):
            return False
    return True


def _caches(model: Any, target: Tensor, source: Tensor, nodes: NodeSet, reuse_prefix: bool
            ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The source run's activations at the nodes' sites; the target run's there and at each patched layer's
    residual input (the prefix a chunk starts from)."""
    src_cache = run_capture(model, source, nodes.sites)
    layers = sorted({nd.layer for nd in nodes.nodes if nd.layer is not None})
    # (no block layers: every node lies outside the blocks, e.g. ln_final, so there is no prefix to reuse)
    prefix_sites = [f"blocks.{L}.hook_resid_pre" for L in layers] if reuse_prefix else []
    return src_cache, run_capture(model, target, sorted(set(nodes.sites) | set(prefix_sites)))


def _run_order(nodes: NodeSet, src_cache: dict[str, Tensor], tgt_cache: dict[str, Tensor]) -> list[int]:
    """The nodes that change something, by layer: the order in which they are patched."""
    live = [i for i, nd in enumerate(nodes.nodes) if not _changes_nothing(nd, src_cache, tgt_cache)]
    return sorted(live, key=lambda i: (-1 if nodes.nodes[i].layer is None else nodes.nodes[i].layer, i))


@torch.no_grad()
def _patched_metrics(model: Any, target: Tensor, nodes: NodeSet, order: list[int], metric: Metric, max_rows: int,
                     reuse_prefix: bool, last_only: bool, src_cache: dict[str, Tensor], tgt_cache: dict[str, Tensor]
                     ) -> Float[Tensor, "n_run n_prompts"]:
    """The metric per prompt with each node of ``order`` patched alone, ``max_rows // n`` nodes per forward."""
    n = target.shape[0]
    per_prompt = torch.zeros(len(order), n)
    k_max = max(1, max_rows // n)
    for start in range(0, len(order), k_max):
        chunk = [nodes.nodes[i] for i in order[start:start + k_max]]
        by_site: dict[str, list[tuple[int, Any]]] = defaultdict(list)
        for j, nd in enumerate(chunk):
            for site, units in nd.parts:
                by_site[site].append((j, units))
        iv = Intervention()
        for site, js in by_site.items():
            # rows are node-major, so row r patches prompt r % n from the source run: one node per row
            where = _mask(chunk, js, src_cache[site].shape).repeat_interleave(n, dim=0)
            iv = iv + patch(site, src_cache[site], where=where)
        layer0 = chunk[0].layer  # smallest layer in the chunk (None: a site outside the blocks)
        rows_tokens = target.repeat(len(chunk), 1)
        with iv.applied(model):
            if reuse_prefix and layer0 is not None:
                resid = tgt_cache[f"blocks.{layer0}.hook_resid_pre"].repeat(len(chunk), 1, 1)
                logits = forward_logits(model, rows_tokens, last_only=last_only, resid=resid, start_layer=layer0)
            else:
                logits = forward_logits(model, rows_tokens, last_only=last_only)
        vals = [check_metric(metric, n, metric(logits[j * n:(j + 1) * n])) for j in range(len(chunk))]
        per_prompt[start:start + len(chunk)] = torch.stack(vals).detach().float().cpu()
    return per_prompt


def _check_max_rows(max_rows: Any, n: int) -> None:
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < n:
        raise FuncnetError(f"max_rows={max_rows!r} is below the number of prompts ({n}); each node needs one row "
                           f"per prompt, so use max_rows >= {n} (or fewer prompts)")


def _setup(model: Any, clean: Tensor, corrupted: Tensor, nodes: NodeSet, metric: Metric, direction: str,
           max_rows: int, reuse_prefix: bool) -> tuple[Tensor, bool, bool, dict[str, Tensor], dict[str, Tensor]]:
    """Checks, then ``(target tokens, reuse_prefix, last_only, source cache, target cache)``."""
    target, source = prepare(model, clean, corrupted, nodes, direction)
    _check_max_rows(max_rows, target.shape[0])
    reuse_prefix = reuse_prefix and starts_at_layer(model)  # a TransformerBridge runs only from tokens
    return (target, reuse_prefix, last_position_only(metric, nodes.sites),
            *_caches(model, target, source, nodes, reuse_prefix))


def exact_patch(model: Any, clean: Tensor, corrupted: Tensor, nodes: NodeSet, metric: Metric, *,
                direction: str = "denoise", max_rows: int = 256, reuse_prefix: bool = True,
                executor: Executor | None = None, chunk_size: int | None = None) -> PatchResult:
    """Patch every node of ``nodes`` in turn and measure ``metric`` (mean over prompts).

    ``direction="denoise"`` runs the corrupted prompts with clean activations patched in (TL's
    ``get_act_patch_*(model, corrupted_tokens, clean_cache, metric)``); ``"noise"`` the reverse.
    ``max_rows`` caps the rows (nodes x prompts) of one forward pass, so memory stays bounded.
    ``reuse_prefix=False`` runs every forward from the tokens (slower, same numbers).
    ``executor`` (any ``concurrent.futures.Executor``) fans the nodes out in chunks of ``chunk_size`` nodes
    (rounded up to whole forwards; default 8 forwards), each loading ``model`` by reference (a
    :class:`~tl_funcnet.models.ref.ModelRef` or a model loaded by :func:`tl_funcnet.models.load`); the effects
    equal the in-process run's (bit for bit at the same torch thread count per worker).
    """
    t0 = time.perf_counter()
    if executor is not None:
        per_prompt, base, order = _fanned(model, clean, corrupted, nodes, metric, direction=direction,
                                          max_rows=max_rows, reuse_prefix=reuse_prefix, executor=executor,
                                          chunk_size=chunk_size)
        info = {"executor": type(executor).__name__}
    else:
        model = as_model(model)
        target, reuse, last_only, src_cache, tgt_cache = _setup(model, clean, corrupted, nodes, metric, direction,
                                                               max_rows, reuse_prefix)
        with torch.no_grad():
            base = check_metric(metric, target.shape[0], metric(forward_logits(model, target, last_only=last_only)))
        base = base.detach().float().cpu()
        order = _run_order(nodes, src_cache, tgt_cache)
        per_prompt = _patched_metrics(model, target, nodes, order, metric, max_rows, reuse, last_only, src_cache,
                                      tgt_cache)
        info = {}
    n = base.shape[0]
    effects = torch.zeros(len(nodes), n)  # exactly 0 for the nodes not run: their patches change nothing
    effects[order] = per_prompt - base[None]
    return PatchResult(effects=effects.mean(1), nodes=nodes, method="exact", direction=direction,
                       baseline=float(base.mean()), per_prompt=effects, seconds=time.perf_counter() - t0,
                       info={"max_rows": max_rows, "n_prompts": n, "n_run": len(order), **info})


def _shared_setup(model: Any, sweep: str, **params: Any) -> tuple:
    """:func:`_setup`, made once per worker for all the chunks of one sweep it runs (``sweep`` names it)."""
    return reuse((sweep, id(model)), lambda: _setup(model, **params))


def _plan_task(model: Any, *, sweep: str, clean: Tensor, corrupted: Tensor, nodes: NodeSet, metric: Metric,
               direction: str, max_rows: int, reuse_prefix: bool) -> tuple[list[int], Tensor]:
    """A worker's plan of a fanned-out sweep: the run order and the unpatched metric per prompt."""
    target, _, last_only, src_cache, tgt_cache = _shared_setup(
        model, sweep, clean=clean, corrupted=corrupted, nodes=nodes, metric=metric, direction=direction,
        max_rows=max_rows, reuse_prefix=reuse_prefix)
    with torch.no_grad():
        base = check_metric(metric, target.shape[0], metric(forward_logits(model, target, last_only=last_only)))
    return _run_order(nodes, src_cache, tgt_cache), base.detach().float().cpu()


def _nodes_task(model: Any, *, sweep: str, clean: Tensor, corrupted: Tensor, nodes: NodeSet, metric: Metric,
                direction: str, max_rows: int, reuse_prefix: bool, run: list[int]) -> Tensor:
    """One chunk of a fanned-out sweep: the metric per prompt with each node of ``run`` patched."""
    target, from_prefix, last_only, src_cache, tgt_cache = _shared_setup(
        model, sweep, clean=clean, corrupted=corrupted, nodes=nodes, metric=metric, direction=direction,
        max_rows=max_rows, reuse_prefix=reuse_prefix)
    return _patched_metrics(model, target, nodes, run, metric, max_rows, from_prefix, last_only, src_cache,
                            tgt_cache)


def _fanned(model: Any, clean: Tensor, corrupted: Tensor, nodes: NodeSet, metric: Metric, *, direction: str,
            max_rows: int, reuse_prefix: bool, executor: Executor, chunk_size: int | None
            ) -> tuple[Tensor, Tensor, list[int]]:
    """Plan on one worker (which nodes change anything, in which order), then run spans of that order cut at
    whole forwards, so each forward holds the nodes it holds in process."""
    check_executor(executor)
    if not isinstance(nodes, NodeSet):
        raise FuncnetError(f"nodes should be a NodeSet (from node_grid or units_nodes), got {type(nodes).__name__}")
    clean_ids, corrupted_ids = as_tokens(clean, "clean"), as_tokens(corrupted, "corrupted")
    n = clean_ids.shape[0]
    _check_max_rows(max_rows, n)
    if not isinstance(model, ModelRef):
        prepare(model, clean, corrupted, nodes, direction)  # every check, here, before any work is sent
    ref = model_ref(model)
    common = {"sweep": uuid.uuid4().hex, "clean": clean_ids, "corrupted": corrupted_ids, "nodes": nodes,
              "metric": metric, "direction": direction, "max_rows": max_rows, "reuse_prefix": reuse_prefix}
    [(order, base)] = fan_out(executor, _plan_task, [Chunk("plan: the nodes that change the run", common)], ref=ref,
                              what="exact_patch")
    chunks = [Chunk(f"nodes {s.start}..{s.stop - 1} of the run order", {**common, "run": order[s.start:s.stop]})
              for s in forward_spans(len(order), max(1, max_rows // n), chunk_size)]
    parts = fan_out(executor, _nodes_task, chunks, ref=ref, what="exact_patch")
    return (torch.cat(parts) if parts else torch.zeros(0, n)), base, order


__all__ = ["exact_patch"]
