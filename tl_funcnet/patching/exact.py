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
from collections import defaultdict
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from ..errors import FuncnetError
from ..hooks import Intervention, patch
from ..models.surface import starts_at_layer
from ._common import forward_logits, last_position_only, prepare, run_capture
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


def exact_patch(model: Any, clean: Tensor, corrupted: Tensor, nodes: NodeSet, metric: Metric, *,
                direction: str = "denoise", max_rows: int = 256, reuse_prefix: bool = True) -> PatchResult:
    """Patch every node of ``nodes`` in turn and measure ``metric`` (mean over prompts).

    ``direction="denoise"`` runs the corrupted prompts with clean activations patched in (TL's
    ``get_act_patch_*(model, corrupted_tokens, clean_cache, metric)``); ``"noise"`` the reverse.
    ``max_rows`` caps the rows (nodes x prompts) of one forward pass, so memory stays bounded.
    ``reuse_prefix=False`` runs every forward from the tokens (slower, same numbers).
    """
    target, source = prepare(model, clean, corrupted, nodes, direction)
    n = target.shape[0]
    if not isinstance(max_rows, int) or max_rows < n:
        raise FuncnetError(f"max_rows={max_rows!r} is below the number of prompts ({n}); each node needs one row "
                           f"per prompt, so use max_rows >= {n} (or fewer prompts)")
    last_only = last_position_only(metric, nodes.sites)
    reuse_prefix = reuse_prefix and starts_at_layer(model)  # a TransformerBridge runs only from tokens
    t0 = time.perf_counter()
    src_cache = run_capture(model, source, nodes.sites)
    layers = sorted({nd.layer for nd in nodes.nodes if nd.layer is not None})
    # (no block layers: every node lies outside the blocks, e.g. ln_final, so there is no prefix to reuse)
    prefix_sites = [f"blocks.{L}.hook_resid_pre" for L in layers] if reuse_prefix else []
    tgt_cache = run_capture(model, target, sorted(set(nodes.sites) | set(prefix_sites)))
    with torch.no_grad():
        base = check_metric(metric, n, metric(forward_logits(model, target, last_only=last_only)))
    per_prompt = torch.zeros(len(nodes), n)
    live = [i for i, nd in enumerate(nodes.nodes) if not _changes_nothing(nd, src_cache, tgt_cache)]
    order = sorted(live, key=lambda i: (-1 if nodes.nodes[i].layer is None else nodes.nodes[i].layer, i))
    k_max = max(1, max_rows // n)
    with torch.no_grad():
        for start in range(0, len(order), k_max):
            idx = order[start:start + k_max]
            chunk = [nodes.nodes[i] for i in idx]
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
            per_prompt[idx] = torch.stack(vals).detach().float().cpu()
    effects = per_prompt - base.detach().float().cpu()[None]
    skipped = torch.ones(len(nodes), dtype=torch.bool)
    skipped[live] = False
    effects[skipped] = 0.0  # exactly: these patches change nothing
    return PatchResult(effects=effects.mean(1), nodes=nodes, method="exact", direction=direction,
                       baseline=float(base.mean()), per_prompt=effects, seconds=time.perf_counter() - t0,
                       info={"max_rows": max_rows, "n_prompts": n, "n_run": len(live)})


__all__ = ["exact_patch"]
